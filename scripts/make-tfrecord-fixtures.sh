#!/usr/bin/env bash
# Regenerates crates/retrain-tfrecord/tests/fixtures/ (golden Example and Event bytes, a TFRecord
# written by Python's `tfrecord` package, an event file written by TensorBoard) with the interop
# virtualenv. Run by hand when the fixtures change; the files are committed so the tests need no
# Python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"
python "$root/scripts/make_tfrecord_fixtures.py" "$root/crates/retrain-tfrecord/tests/fixtures"
