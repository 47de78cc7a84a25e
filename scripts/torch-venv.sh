# Sourced by the PyTorch checks (inception-parity.sh, check-pth.sh): makes (once) the virtualenv
# target/torch-venv with scripts/requirements-torch.txt from PyPI (a few GB of disk) and sets
# `venv` and `py`. Set PYTHON to choose the interpreter (default python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/target/torch-venv"
stamp="$venv/.requirements-torch.txt"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! cmp -s "$root/scripts/requirements-torch.txt" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/requirements-torch.txt"
  cp "$root/scripts/requirements-torch.txt" "$stamp"
fi
py="$venv/bin/python"
