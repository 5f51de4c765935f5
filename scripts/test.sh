#!/usr/bin/env bash
# The test command: sets up .venv (first run only), runs the whole suite on 2 workers, then the
# latency regression gate on two examples against benchmarks/baseline.json (docs/benchmarks.md,
# "Regression gate"; about a minute) and the gate against the native paths on two HF models. Exit 3
# from a gate means a variant got slower relative to torch eager than the baseline allows, or hetcc
# slower than the best native path than allowed. Pytest arguments (a partial run, e.g. -k
# placement) skip the gates, and so does HETCC_SKIP_BENCH_GATE=1. Results go to build/bench/ (HETCC_BENCH_OUT).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/env.sh")"
cd "$root"
"$python" -m pytest -n 2 -q -rs "$@" tests
if [ "$#" -gt 0 ] || [ "${HETCC_SKIP_BENCH_GATE:-0}" = 1 ]; then
  exit 0
fi
out="${HETCC_BENCH_OUT:-build/bench}"
mkdir -p "$out"
status=0
for example in mlp cnn; do
  # 1.3: on this shared 2-core machine, quiet runs put each ratio within a few percent of the
  # baseline (docs/benchmarks.md has the measured spread); the gate measures again when a run is
  # disturbed, so 1.3 catches a 30% slowdown without failing on neighbours.
  "$python" -m hetcc bench "examples/$example.py:build" --budget 3 \
    --compare benchmarks/baseline.json --max-regression 1.3 -o "$out/$example.json" || status=$?
done
# Against the vendors' own paths (issue 10): on two Hugging Face models, hetcc's fast end (p10)
# must stay within 1.25x the best of ONNX Runtime on the exporter's whole-model file and OpenVINO's
# converter in f32, so a loss common to all of hetcc's lowering fails CI (the spinning setting that
# cost 1.34x would have). About 45 s.
"$python" benchmarks/bench_native.py --models resnet,bert --paths hetcc,onnxruntime,openvino-f32,eager \
  --budget 8 --max-ratio 1.25 --json "$out/native.json" || status=$?
exit "$status"
