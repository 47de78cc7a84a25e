#!/usr/bin/env bash
# Checks the .pth files retrain-inception writes with PyTorch (docs/inception.md, "Weights out"):
# `convert` writes a seeded full-size Inception-v3 (1000 classes, and 10 classes) as .pth and,
# through our own .pth reader, as safetensors; scripts/check_pth.py loads them with
# torch.load(weights_only=True), strictly into torchvision's inception_v3, compares every tensor
# and compares the archive's records with what torch.save writes for the same dict. Makes (once)
# target/torch-venv with scripts/requirements-torch.txt from PyPI (scripts/torch-venv.sh), as scripts/inception-parity.sh
# does (a few GB of disk). CI does not run it.
# Usage: scripts/check-pth.sh [WORKDIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=torch-venv.sh
source "$root/scripts/torch-venv.sh"
work=${1:-"$root/target/check-pth"}
rm -rf "$work"
mkdir -p "$work"
cd "$root"

cargo build --quiet --release --locked -p retrain-inception
bin="$root/target/release/retrain-inception"
"$bin" convert --output "$work/seeded.pth"
"$bin" convert --num-classes 10 --seed 3 --output "$work/seeded10.pth"
"$bin" convert --weights "$work/seeded.pth" --output "$work/seeded.safetensors"
"$py" scripts/check_pth.py "$work"
