"""Whether ONNX Runtime's fused SkipLayerNormalization is still slower than the Add and
LayerNormalization it replaces on this CPU, which is why onnxruntime:cpu's ``skip_layernorm``
option defaults to "split" (backends/onnxruntime_backend.py SPLIT_FUSIONS).

1. One op alone: a 1 x ``--tokens`` x ``--hidden`` SkipLayerNormalization against Add then
   LayerNormalization, each an ONNX model of its own with graph optimisation off, on one thread and
   on the default threads (median microseconds of ``--calls`` calls).
2. Whole models (examples/hf_models.py): each compiled by hetcc for ``onnxruntime:cpu``,
   ``@int8u`` where offered and ``@int8`` (``tune="off"``, ``accuracy=0.05`` for the int8 ones),
   once per ``skip_layernorm`` value, timed interleaved by ``hetcc.measure.bench.measure``; the
   paired ratio fused / split per target.

    python benchmarks/bench_skip_layernorm.py [--models bert,wav2vec2] [--rounds 30]

Should a later ONNX Runtime make the fused kernel fast, part 1 shows it (fused at or below split)
and the default should become "fused". Not a test: run it by hand; docs/backends.md cites a run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_native as native  # noqa: E402
import hf_models  # noqa: E402
import hetcc  # noqa: E402
from hetcc.measure.bench import measure  # noqa: E402


def one_op(fused: bool, tokens: int, hidden: int) -> bytes:
    """An ONNX model of ``x + r`` then LayerNormalization, fused into one SkipLayerNormalization or not."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, tokens, hidden]
    ios = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "r", "y")]
    weights = [numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
               numpy_helper.from_array(np.zeros(hidden, np.float32), "beta")]
    if fused:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "r", "gamma", "beta"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
                 helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    graph = helper.make_graph(nodes, "skip_layernorm", ios[:2], ios[2:], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model.SerializeToString()


def op_times(tokens: int, hidden: int, calls: int) -> list[str]:
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((1, tokens, hidden), dtype=np.float32) for n in ("x", "r")}
    lines = []
    for threads in (1, 0):
        took = {}
        for fused in (True, False):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(one_op(fused, tokens, hidden), options,
                                           providers=["CPUExecutionProvider"])
            for _ in range(20):
                session.run(None, feed)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
            took[fused] = statistics.median(times) * 1e6
        lines.append(f"1x{tokens}x{hidden}, {threads or 'default'} thread(s): SkipLayerNormalization "
                     f"{took[True]:.0f} us, Add + LayerNormalization {took[False]:.0f} us "
                     f"({took[True] / took[False]:.2f}x)")
    return lines


def ort_targets() -> list[str]:
    """onnxruntime:cpu, and its @int8u (where offered: a CPU without VNNI) and @int8."""
    from hetcc.backends.registry import resolve
    from hetcc.target import Target

    offered = resolve(Target("onnxruntime", "cpu")).precisions(Target("onnxruntime", "cpu"))
    return ["onnxruntime:cpu"] + [f"onnxruntime:cpu@{p}" for p in ("int8u", "int8") if p in offered]


def model_times(name: str, rounds: int) -> list[str]:
    model, inputs = hf_models.build(name)
    targets = ort_targets()
    fns = {}
    for target in targets:
        for mode in ("split", "fused"):
            budget = {"accuracy": 0.05} if "@" in target else {}
            fns[(target, mode)] = hetcc.compile(model, inputs, targets=[target], tune="off",
                                                backend_options={"onnxruntime": {"skip_layernorm": mode}},
                                                **budget)
    got = measure(fns, inputs, runs=rounds)
    lines = []
    for target in targets:
        split, fused = got[(target, "split")].turns, got[(target, "fused")].turns
        ratio = statistics.median(f / s for f, s in zip(fused, split))
        lines.append(f"{name} {target}: split {statistics.median(split) * 1e3:.2f} ms, fused "
                     f"{statistics.median(fused) * 1e3:.2f} ms, fused/split {ratio:.3f} (paired median)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="bert,wav2vec2")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    models = native.chosen(parser, args.models, list(hf_models.MODELS))
    logging.getLogger("hetcc").setLevel(logging.WARNING)
    for line in op_times(args.tokens, args.hidden, args.calls):
        print(line, flush=True)
    for name in models:
        for line in model_times(name, args.rounds):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
