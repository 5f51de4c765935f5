#!/usr/bin/env bash
# Create (or reuse) .venv in the repository and install hetcc with the CPU runtimes, pinned.
# Sourced by scripts/demo.sh and scripts/test.sh; prints the venv's python path on stdout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HETCC_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi
stamp="$venv/.hetcc-installed"
want="$(cat "$root/requirements/constraints.txt" "$root/requirements/cpu.txt" "$root/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip "setuptools>=70" wheel >&2
  "$venv/bin/python" -m pip install -q -c "$root/requirements/constraints.txt" -r "$root/requirements/cpu.txt" >&2
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
