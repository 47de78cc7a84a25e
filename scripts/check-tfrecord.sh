#!/usr/bin/env bash
# Cross-checks retrain-tfrecord with Python's protobuf, the `tfrecord` package, Pillow and
# TensorBoard: writes a small image tree with Pillow (every PNG mode, JPEGs, a broken file),
# builds TFRecords from it, and has scripts/check_tfrecord.py read every record back and compare
# each feature with the images; checks the committed golden Example/Event bytes; writes an event
# file and loads it with TensorBoard. Usage: scripts/check-tfrecord.sh [WORKDIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"
work=${1:-"$root/target/check-tfrecord"}
mkdir -p "$work"
rm -rf "$work/images" "$work/tfrecords" "$work/events"
cargo build --quiet --release --locked -p retrain-tfrecord --bins --example write_events \
  --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
check="$root/scripts/check_tfrecord.py"

python "$check" make-tree "$work/images"
"$bin/retrain-tfrecord" build -q --train-dir "$work/images/train_dir" \
  --validation-dir "$work/images/validation_dir" --labels "$work/images/labels.txt" \
  --out "$work/tfrecords" --train-shards 3 --validation-shards 2 --seed 7
python "$check" check-build "$work/images" "$work/tfrecords"
"$bin/retrain-tfrecord" inspect --examples 1 "$work"/tfrecords/train-* >/dev/null

python "$check" check-golden "$root/crates/retrain-tfrecord/tests/fixtures"

"$bin/examples/write_events" "$work/events" >/dev/null
python "$check" check-events "$work/events"
