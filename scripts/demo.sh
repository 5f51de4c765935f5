#!/usr/bin/env bash
# The main job: sets up .venv (first run only), compiles the bundled examples for every CPU runtime
# here, prints each plan, and checks the outputs against eager PyTorch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/env.sh")"
cd "$root"
exec "$python" examples/demo.py "$@"
