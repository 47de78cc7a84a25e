#!/usr/bin/env bash
# Cross-checks retrain-sort with Python's pickle, numpy and Pillow: generates small synthetic
# CIFAR-10 and CIFAR-100 archives (with file-name collisions), extracts them with tar, sorts them
# (from the folder and straight from the archive, fine and coarse labels) and has
# scripts/check_sort.py compare every PNG, the labels file and the counts with the batches.
# Usage: scripts/check-sort.sh [WORKDIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"
work=${1:-"$root/target/check-sort"}
rm -rf "$work"
mkdir -p "$work"
cargo build --quiet --release --locked -p retrain-synth -p retrain-sort --manifest-path "$root/Cargo.toml"
synth="$root/target/release/retrain-synth"
sort="$root/target/release/retrain-sort"

"$synth" --quiet --out "$work/synth10" --images-per-batch 300 --collisions 6 --seed 3
mkdir -p "$work/raw10"
tar -xzf "$work/synth10/cifar-10-python.tar.gz" -C "$work/raw10"
"$sort" --quiet --input "$work/raw10/cifar-10-batches-py" --out "$work/cifar10"
python "$root/scripts/check_sort.py" "$work/raw10/cifar-10-batches-py" "$work/cifar10" cifar10 fine
"$sort" --quiet --from-archive "$work/synth10/cifar-10-python.tar.gz" --out "$work/cifar10-archive"
python "$root/scripts/check_sort.py" "$work/raw10/cifar-10-batches-py" "$work/cifar10-archive" cifar10 fine

"$synth" --quiet --out "$work/synth100" --dataset cifar100 --images-per-batch 100 --collisions 5 --seed 4
mkdir -p "$work/raw100"
tar -xzf "$work/synth100/cifar-100-python.tar.gz" -C "$work/raw100"
for labels in fine coarse; do
  "$sort" --quiet --dataset cifar100 --labels "$labels" --input "$work/raw100/cifar-100-python" \
    --out "$work/cifar100-$labels"
  python "$root/scripts/check_sort.py" "$work/raw100/cifar-100-python" "$work/cifar100-$labels" cifar100 "$labels"
done
