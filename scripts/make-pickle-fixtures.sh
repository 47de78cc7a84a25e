#!/usr/bin/env bash
# Regenerates crates/retrain-pickle/tests/fixtures/py3-*.pkl with numpy 2 (the interop virtualenv)
# and numpy 1 (a second virtualenv, target/py-venv-numpy1). Run by hand when the fixtures change;
# the files are committed so the tests need no Python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/crates/retrain-pickle/tests/fixtures"
source "$root/scripts/venv.sh"
python "$root/scripts/make_pickle_fixtures.py" "$out"
venv1="$root/target/py-venv-numpy1"
[ -x "$venv1/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv1"
"$venv1/bin/python" -m pip install --quiet --disable-pip-version-check numpy==1.26.4
"$venv1/bin/python" "$root/scripts/make_pickle_fixtures.py" "$out"
