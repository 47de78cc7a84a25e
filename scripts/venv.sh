# Sourced by the interop scripts: makes (once) and activates the virtualenv target/py-venv with
# scripts/requirements.txt installed. Set PYTHON to choose the interpreter (default python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/target/py-venv"
stamp="$venv/.requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! cmp -s "$root/scripts/requirements.txt" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/requirements.txt"
  cp "$root/scripts/requirements.txt" "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
