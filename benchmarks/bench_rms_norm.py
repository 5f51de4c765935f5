"""What writing RMS norms as ONNX Runtime's fusion expects buys (backends/onnx_norms.py): each
model (examples/hf_models.py) compiled by hetcc for ``onnxruntime:cpu``, ``@int8u`` where offered
and ``@int8`` (``tune="off"``, ``accuracy=0.05`` for the int8 ones), once as hetcc lowers it now
(``Mul(x, Reciprocal(Sqrt(v)))`` rewritten as ``Div(x, Sqrt(v))``, which ONNX Runtime fuses into
SimplifiedLayerNormalization) and once as torch's exporter wrote it; timed interleaved by
``hetcc.measure.bench.measure``; the paired ratio as exported / rewritten per target, and how many
norms were rewritten.

    python benchmarks/bench_rms_norm.py [--models t5,llama_prefill,llama_decode] [--rounds 30]

Not a test: run it by hand; docs/backends.md cites a run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_native as native  # noqa: E402
import bench_skip_layernorm as skip_layernorm  # noqa: E402
import hf_models  # noqa: E402
import hetcc  # noqa: E402
from hetcc.backends import onnxruntime_backend  # noqa: E402
from hetcc.measure.bench import measure  # noqa: E402


def compiled(model, inputs, target: str, rewrite: bool):
    budget = {"accuracy": 0.05} if "@" in target else {}
    if rewrite:
        return hetcc.compile(model, inputs, targets=[target], tune="off", **budget)
    kept = onnxruntime_backend.rsqrt_as_div
    onnxruntime_backend.rsqrt_as_div = lambda path: 0  # as the exporter wrote it
    try:
        return hetcc.compile(model, inputs, targets=[target], tune="off", **budget)
    finally:
        onnxruntime_backend.rsqrt_as_div = kept


def model_times(name: str, rounds: int) -> list[str]:
    model, inputs = hf_models.build(name)
    targets = skip_layernorm.ort_targets()
    fns = {(t, rewrite): compiled(model, inputs, t, rewrite) for t in targets for rewrite in (True, False)}
    got = measure(fns, inputs, runs=rounds)
    lines = []
    for target in targets:
        rewritten = sum(a.meta.get("rsqrt_as_div", 0) for a in fns[(target, True)].artifacts.values())
        new, old = got[(target, True)].turns, got[(target, False)].turns
        ratio = statistics.median(o / n for o, n in zip(old, new))
        lines.append(f"{name} {target}: {rewritten} norms rewritten; as exported {statistics.median(old) * 1e3:.2f} ms, "
                     f"rewritten {statistics.median(new) * 1e3:.2f} ms, as exported / rewritten {ratio:.3f} "
                     "(paired median)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="t5,llama_prefill,llama_decode")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    models = native.chosen(parser, args.models, list(hf_models.MODELS))
    logging.getLogger("hetcc").setLevel(logging.WARNING)
    for name in models:
        for line in model_times(name, args.rounds):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
