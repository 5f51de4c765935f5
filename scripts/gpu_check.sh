#!/usr/bin/env bash
# Every GPU path hetcc has, checked in one run on a machine with a GPU (benchmarks/gpu_check.py;
# its --help lists the parts). Installs hetcc into the python that holds the machine's CUDA torch
# ($PYTHON, default python3), and first any wheels in $HETCC_WHEELS (default .whl/, if present:
# for a machine without a package index, e.g. openvino), then runs the check. Arguments go to
# gpu_check.py, e.g.:  bash scripts/gpu_check.sh --out gpu_check.json --budget 450
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${HETCC_WHEELS:-.whl}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: $PY's torch sees no GPU; the GPU parts will be skipped with their reasons" >&2
fi
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/hetcc-wheels-XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# --no-deps: the machine's own torch (a CUDA build) must stay; hetcc's other needs are checked
# by the run itself, which reports a missing one as a skipped part
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^\[notice\]" >&2 || true
# from / : not from this folder, which holds hetcc/ itself (python 3.10 has no -P)
(cd / && "$PY" -c 'import hetcc.backends.registry') || { echo "gpu_check: hetcc did not install into $PY" >&2; exit 2; }
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
