"""ONNX Runtime's static int8 under each of its calibration methods: how far each moves a model's
output from fp32, on the batches it was calibrated on and on a batch it never saw.

hetcc's onnxruntime:cpu@int8s calibrates with min-max ranges (backends/onnx_quantize.py). This asks
whether another of ``quantize_static``'s methods (percentile, entropy, distribution) would keep
more of a model inside a budget. Per model (examples/hf_models.py, random weights): the whole model
exported with ``torch.onnx.export(dynamo=True)``, then ``quantize_static`` (QDQ, per-channel int8
weights, uint8 activations on Conv, MatMul and Gemm, as hetcc's int8s) once per method, calibrated
on the example inputs and --calibration further batches (bench_precision's: float inputs drawn
from a normal distribution, seeded). Reported: relative L2 error of the first output against the fp32 export on
the example inputs and on one held-out batch, and the seconds quantize_static took.

    python benchmarks/bench_calibration.py [--models resnet,convnext,mobilenet_v2] [--calibration 8]

Its errors on the example inputs are in-sample: they are among the batches, as in hetcc's int8s
before 2026-12-03; hetcc now calibrates on the batches alone, so the held-out column is the one
to compare with what a compile measures.

Not a test: run it by hand. The run is in docs/precision.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_precision as precision  # noqa: E402
import hf_models  # noqa: E402
from hetcc.backends.onnx_quantize import STATIC_OPS, calibration_reader  # noqa: E402
from hetcc.error_budget import relative_error  # noqa: E402

METHODS = (("MinMax", {}), ("Percentile", {"CalibPercentile": 99.999}),
           ("Percentile", {"CalibPercentile": 99.99}), ("Entropy", {}), ("Distribution", {}))


def run_model(name: str, calibration: int) -> list[str]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model, inputs = hf_models.build(name)
    inputs = tuple(inputs)
    *drawn, held_out = precision.calibration_batches(inputs, calibration + 1)
    batches = [inputs, *drawn]
    workdir = Path(tempfile.mkdtemp(prefix=f"calibration-{name}-"))
    source = precision._exported(model, inputs, workdir / "model.onnx")
    fp32, names = precision._ort_session(source)

    lines = []
    for method, extra in METHODS:
        target = workdir / f"{method}-{len(lines)}.onnx"
        start = time.perf_counter()
        quantize_static(str(source), str(target), calibration_reader(batches, names), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=STATIC_OPS, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options=extra)
        took = time.perf_counter() - start
        int8 = precision._ort_session(target)[0]
        errors = [relative_error(torch.from_numpy(int8(*b)[0]), torch.from_numpy(fp32(*b)[0]))
                  for b in (inputs, held_out)]
        shown = f"{method} {extra['CalibPercentile']}" if extra else method
        lines.append(f"| {name} | {shown} | {errors[0] * 100:.2f} % | {errors[1] * 100:.2f} % | {took:.1f} s |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet,convnext,mobilenet_v2")
    parser.add_argument("--calibration", type=int, default=8, help="batches besides the example inputs")
    args = parser.parse_args(argv)
    models = precision.native.chosen(parser, args.models, list(hf_models.MODELS))
    rows = ["| model | calibration | error, example inputs | error, held-out batch | quantize_static |",
            "|---|---|---|---|---|"]
    for name in models:
        rows += run_model(name, args.calibration)
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
