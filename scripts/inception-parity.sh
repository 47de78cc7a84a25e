#!/usr/bin/env bash
# Parity of retrain-inception with torchvision's Inception-v3 (docs/inception.md, "Parity").
# Makes (once) target/torch-venv with scripts/requirements-torch.txt from PyPI, regenerates the
# committed references in crates/retrain-inception/tests/fixtures from reproducible weights, checks
# the full-model .pth path and the safetensors that Rust writes against torchvision, then runs the
# Rust parity tests. Needs a few GB of disk for torch; CI does not run it (it runs only the Rust
# side, against the committed references).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=torch-venv.sh
source "$root/scripts/torch-venv.sh"
work="$root/target/inception-parity"
fixtures="$root/crates/retrain-inception/tests/fixtures"
cd "$root"

echo "== generating reproducible weights, inputs and references"
"$py" scripts/inception_parity.py generate "$fixtures" "$work"

echo "== running the Rust binary"
cargo build --quiet --release -p retrain-inception
bin="$root/target/release/retrain-inception"
"$bin" forward --weights "$work/parity1000.pth" --input "$work/input299.safetensors" \
  --output "$work/out_pth299.safetensors"
"$bin" convert --weights "$work/parity1000.pth" --num-classes 10 --seed 1 \
  --output "$work/rust10.safetensors"
"$bin" forward --weights "$work/rust10.safetensors" --input "$work/input75.safetensors" \
  --output "$work/out_rust10_75.safetensors"
"$bin" forward --weights "$work/rust10.safetensors" --input "$work/input299.safetensors" \
  --output "$work/out_rust10_299.safetensors"

echo "== checking the Rust outputs with torchvision"
"$py" scripts/inception_parity.py check "$work"

echo "== Rust parity tests against the references"
cargo test --quiet -p retrain-inception --test parity -- --nocapture
