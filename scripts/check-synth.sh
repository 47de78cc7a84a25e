#!/usr/bin/env bash
# Cross-checks retrain-synth with Python's own pickle and numpy: generates a CIFAR-10 archive
# (real batch size, 10000 images per batch) and a small CIFAR-100 archive, each with its report, and
# has scripts/check_synth.py read every member back. Usage: scripts/check-synth.sh [WORKDIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"
work=${1:-"$root/target/check-synth"}
mkdir -p "$work"
cargo build --quiet --release --locked -p retrain-synth --manifest-path "$root/Cargo.toml"
synth="$root/target/release/retrain-synth"
"$synth" --quiet --out "$work/cifar10" --report "$work/cifar10/report.json" --seed 1
python "$root/scripts/check_synth.py" "$work/cifar10/cifar-10-python.tar.gz" "$work/cifar10/report.json"
"$synth" --quiet --out "$work/cifar100" --report "$work/cifar100/report.json" --dataset cifar100 \
  --images-per-batch 500 --collisions 3 --seed 2
python "$root/scripts/check_synth.py" "$work/cifar100/cifar-100-python.tar.gz" "$work/cifar100/report.json"
