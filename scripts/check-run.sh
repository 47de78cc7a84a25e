#!/usr/bin/env bash
# Cross-checks a training run's TensorBoard events, metrics and pictures with TensorBoard and
# Pillow (scripts/check_run.py). Usage: scripts/check-run.sh RUN (default: the CI demo's run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"
python "$root/scripts/check_run.py" "${1:-$root/target/ci-demo/runs/demo}"
