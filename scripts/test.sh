#!/usr/bin/env bash
# The test command: sets up .venv (first run only) and runs the whole suite on 2 workers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/env.sh")"
cd "$root"
exec "$python" -m pytest -n 2 -q -rs "$@" tests
