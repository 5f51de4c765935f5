"""ONNX Runtime's dynamic int8 with 8-bit weights, 7-bit weights (``reduce_range``) and unsigned
8-bit weights: how far each moves a model's output from fp32, and how fast each runs, here.

On an x86 CPU without VNNI, ONNX Runtime's int8 matrix products multiply uint8 activations by int8
weights with AVX2's vpmaddubsw, which adds each pair of products into an int16 and saturates where
both are large (2 x 255 x 127 passes 32767). ONNX Runtime advises 7-bit weights there
(``reduce_range``) or unsigned weights (a kernel without the int16 step). hetcc's
onnxruntime:cpu@int8 takes 7-bit weights on such a CPU (backends/onnx_quantize.py reduced_range);
this measures why. Per model: the whole model exported with ``torch.onnx.export(dynamo=True)``,
``quantize_dynamic`` on its MatMuls (per output channel) once per variant, the relative L2 error
of the first output against the fp32 export on the example inputs, and each session's calls
measured interleaved with the fp32 one (hetcc.measure.bench.measure): the median and p10-p90 of
the calls, and of fp32's time over the variant's in each round.

Models: ``table`` (examples/tables.py: an nn.Linear over the sum of two nn.Embedding lookups,
PyTorch's default initialisation), ``mlp`` (examples/mlp.py), and any of
examples/hf_models.py's (random weights).

    python benchmarks/bench_int8_range.py [--models table,mlp,bert,vit] [--rounds 30]

Not a test: run it by hand. The run is in docs/precision.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_precision as precision  # noqa: E402
import hf_models  # noqa: E402
import mlp  # noqa: E402
import tables  # noqa: E402
from hetcc.cost_model.devices import cpu_flags, cpu_model, int8_dot_products  # noqa: E402
from hetcc.error_budget import relative_error  # noqa: E402
from hetcc.measure.bench import measure, paired_ratios, stats  # noqa: E402

VARIANTS = (("int8, 8-bit weights", {"weight_type": "QInt8"}),
            ("int8, 7-bit weights (reduce_range)", {"weight_type": "QInt8", "reduce_range": True}),
            ("uint8 weights", {"weight_type": "QUInt8"}))


def build(name: str):
    torch.manual_seed(0)
    if name == "table":
        return tables.build()
    if name == "mlp":
        return mlp.build(batch=8)
    return hf_models.build(name)


def run_model(name: str, rounds: int) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, inputs = build(name)
    inputs = tuple(inputs)
    workdir = Path(tempfile.mkdtemp(prefix=f"int8-range-{name}-"))
    source = precision._exported(model, inputs, workdir / "model.onnx")
    fns = {"fp32": precision._ort_session(source, spinning=False)[0]}
    for i, (label, options) in enumerate(VARIANTS):
        target = workdir / f"int8-{i}.onnx"
        options = dict(options, weight_type=getattr(QuantType, options["weight_type"]))
        quantize_dynamic(str(source), str(target), per_channel=True, op_types_to_quantize=["MatMul"], **options)
        fns[label] = precision._ort_session(target, spinning=False)[0]
    want = torch.from_numpy(fns["fp32"](*inputs)[0])
    times = measure(fns, inputs, runs=rounds)
    fp32 = stats(times["fp32"].calls)
    lines = [f"| {name} | fp32 | - | {_spread(fp32)} | 1.00x |"]
    for label, _ in VARIANTS:
        error = relative_error(torch.from_numpy(fns[label](*inputs)[0]), want)
        # fp32's turn over this variant's in the same round: machine drift moves both alike
        ratios = stats([1 / r for r in paired_ratios(times[label], times["fp32"])])
        lines.append(f"| {name} | {label} | {error * 100:.2f} % | {_spread(stats(times[label].calls))} | "
                     f"{ratios['median_s']:.2f}x [{ratios['p10_s']:.2f}-{ratios['p90_s']:.2f}] |")
    return lines


def _spread(s: dict) -> str:
    return f"{s['median_s'] * 1e3:.2f} ms [{s['p10_s'] * 1e3:.2f}-{s['p90_s'] * 1e3:.2f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="table,mlp,bert,vit")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    models = precision.native.chosen(parser, args.models, ["table", "mlp", *hf_models.MODELS])
    flags = cpu_flags()
    vnni = "unknown (flags not read here)" if flags is None else ("yes" if int8_dot_products() else "no")
    rows = [f"Machine: {cpu_model()} ({platform.machine()}), VNNI: {vnni}; {args.rounds} rounds, median call.",
            "", "| model | weights | error | call, median [p10-p90] | fp32 over it, per round [p10-p90] |",
            "|---|---|---|---|---|"]
    for name in models:
        rows += run_model(name, args.rounds)
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
