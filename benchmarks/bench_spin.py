"""How long ONNX Runtime's idle threads spin after a call, and what that does to interleaved timing.

ONNX Runtime's intra-op threads busy-wait after a call (session.intra_op.allow_spinning, on by
default). A session called while another session's threads still spin shares the cores with them.
This measures, on one model (examples/hf_models.py; whole-model export, and the same file quantized
by ``quantize_dynamic`` with 7-bit weights per channel, as hetcc's onnxruntime:cpu@int8 does on a
CPU without VNNI):

1. the int8 session's call ``gap`` seconds after the fp32 session's call, against its call after
   itself (median of ``--repeats`` calls each): where the first is slower, the fp32 session's
   threads were still spinning;
2. ``hetcc.measure.bench.measure`` over int8, fp32 and OpenVINO's fp32 (the benchmarks' way), with
   10 ms and with ``hetcc.timing.PAUSE`` of idle before each turn, beside each alone, back to back:
   int8's median over OpenVINO's each way.

    python benchmarks/bench_spin.py [--model bert] [--repeats 12] [--rounds 12]

Not a test: run it by hand. hetcc/timing.py (PAUSE) and docs/precision.md cite a run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_native as native  # noqa: E402
import bench_precision as precision  # noqa: E402
import hf_models  # noqa: E402
from hetcc.cost_model.devices import cpu_model  # noqa: E402
from hetcc.measure.bench import measure  # noqa: E402
from hetcc.timing import PAUSE  # noqa: E402

GAPS = (0.0, 0.01, 0.03, 0.045, 0.06, 0.08, 0.12)


def median_ms(xs) -> float:
    return statistics.median(xs) * 1e3


def after(first, then, inputs, gap: float, repeats: int) -> tuple[float, float]:
    """(``then``'s call ``gap`` s after ``first``'s, ``then``'s call right after its own), median ms."""
    clock, behind, alone = time.perf_counter, [], []
    for _ in range(repeats):
        first(*inputs)
        time.sleep(gap)
        t0 = clock()
        then(*inputs)
        behind.append(clock() - t0)
        time.sleep(0.3)  # every pool idle again
        then(*inputs)
        t0 = clock()
        then(*inputs)
        alone.append(clock() - t0)
    return median_ms(behind), median_ms(alone)


def back_to_back(fn, inputs, calls: int) -> float:
    for _ in range(3):
        fn(*inputs)
    took = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(*inputs)
        took.append(time.perf_counter() - t0)
    return median_ms(took)


def main(argv=None) -> int:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bert")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    (name,) = native.chosen(parser, args.model, list(hf_models.MODELS))
    model, inputs = hf_models.build(name, "bench")
    work = Path(tempfile.mkdtemp(prefix="bench-spin-"))
    source = precision._exported(model, inputs, work / "model.onnx")
    quantize_dynamic(str(source), str(work / "int8.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True)
    fns = {"int8": precision._ort_session(work / "int8.onnx")[0], "fp32": precision._ort_session(source)[0],
           "openvino-f32": native.build_openvino_f32(model, inputs, work)[0]}
    rows = [f"Machine: {cpu_model()}; {name}; medians in ms.", "",
            "| gap after the fp32 session's call | int8 call | int8 call after itself |", "|---|---|---|"]
    for _ in range(3):
        fns["fp32"](*inputs), fns["int8"](*inputs)
    for gap in GAPS:
        behind, alone = after(fns["fp32"], fns["int8"], inputs, gap, args.repeats)
        rows.append(f"| {gap * 1e3:.0f} ms | {behind:.1f} | {alone:.1f} |")
    rows += ["", "| timing | int8 | fp32 | openvino-f32 | int8 over OpenVINO |", "|---|---|---|---|---|"]
    for pause in (0.01, PAUSE):
        label = f"interleaved, {pause * 1e3:.0f} ms idle"
        got = {k: median_ms(s.calls) for k, s in measure(fns, inputs, runs=args.rounds, pause=pause).items()}
        rows.append(f"| {label} | {got['int8']:.1f} | {got['fp32']:.1f} | {got['openvino-f32']:.1f} | "
                    f"{got['openvino-f32'] / got['int8']:.2f}x |")
    alone = {k: back_to_back(f, inputs, 15) for k, f in fns.items()}
    rows.append(f"| each alone, back to back | {alone['int8']:.1f} | {alone['fp32']:.1f} | "
                f"{alone['openvino-f32']:.1f} | {alone['openvino-f32'] / alone['int8']:.2f}x |")
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
