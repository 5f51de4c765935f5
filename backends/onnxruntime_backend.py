"""onnxruntime:cpu and onnxruntime:cuda:<index>: segments go through torch's dynamo ONNX exporter
to an .onnx file that ONNX Runtime runs, on its CPU execution provider or on its CUDA provider
(TensorRT's provider first, where asked and present). On a GPU the session is fed through IOBinding:
inputs are bound at their device addresses and outputs come back as device tensors (DLPack), so a
neighbouring GPU segment hands values over without a host copy (hetcc/handover.py).

Capability comes from the exporter's own registry (torchlib translations per ATen overload), plus
the exporter's own decompositions for ops without one (checked by tracing them once per op), so a
"yes" here means the exporter can translate the node; whether ONNX Runtime then agrees numerically
is what hetcc's verify step checks."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from hetcc.backends._common import (
    lowering_error, py_str, python_command, quiet, quiet_logger, to_numpy,
)
from hetcc.backends.base import Artifact, Backend, Support
from hetcc.backends.onnx_export import ONNX_EMBED_LIMIT, ONNX_OPSET, export_onnx, exporter_support
from hetcc.backends.ort_session import BoundExecutable, OrtExecutable
from hetcc.backends.options import Option, check_options, precision_option, threads_option
from hetcc.errors import BundleError, InternalError, TargetError
from hetcc.gpus import cuda_problem, gpu_index
from hetcc.target import Target

OPSET = ONNX_OPSET
"""ONNX opset the exporter targets and the registry is asked about (ONNX Runtime >= 1.17 runs it)."""
_EMBED_LIMIT = ONNX_EMBED_LIMIT
"""Weights above this many bytes go to external data: protobuf caps a single file at 2 GB."""

_COMPLEX = "complex tensors cannot cross into ONNX Runtime (no complex element type on its CPU provider)"
_FLOAT8 = "ONNX Runtime's CPU provider has no float8 arithmetic"


OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
"""hetcc's name -> ONNX Runtime's GraphOptimizationLevel."""
SPINNING = ("auto", "on", "off")
PROVIDERS = {"cuda": ("CUDAExecutionProvider",),
             "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
"""hetcc's name -> the execution providers an onnxruntime:cuda session asks for, in order (the
CPU provider last: ONNX Runtime puts there what the GPU providers do not take)."""


@lru_cache(maxsize=None)
def _available_providers() -> tuple[str, ...]:
    try:
        import onnxruntime

        return tuple(onnxruntime.get_available_providers())
    except Exception:
        return ()


def gpu_problem(target: Target, provider: str = "cuda") -> str | None:
    """Why ONNX Runtime cannot run on the target's GPU here, or None."""

    missing = [p for p in PROVIDERS[provider] if p not in _available_providers()]
    if missing:
        return (f"this onnxruntime has no {' or '.join(missing)} (it offers "
                f"{', '.join(_available_providers()) or 'none'}); install onnxruntime-gpu instead of "
                "onnxruntime, built for the CUDA of this machine's driver"
                + (", with TensorRT's libraries on the library path" if provider == "tensorrt" else ""))
    return cuda_problem(target)  # torch holds the tensors ONNX Runtime binds


class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    on_device: ClassVar[tuple[str, ...]] = ("cuda",)
    packages: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnx", "onnxscript")
    banned_dtypes: ClassVar[dict[str, str]] = {
        "complex64": _COMPLEX, "complex128": _COMPLEX, "complex32": _COMPLEX,
        "bfloat16": "numpy has no bfloat16, and ONNX Runtime's CPU provider has few bfloat16 kernels",
        **dict.fromkeys(("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"), _FLOAT8)}
    untested: ClassVar[dict[str, str]] = {
        "cuda": "never run on a GPU: its IOBinding path runs here on the CPU provider only "
                "(docs/gpu_backends.md)"}
    tunes_for_neighbours: ClassVar[bool] = True
    """load() configures the session by ``meta["runs_alone"]``: whether other runtimes share the
    cores (see hetcc.compiler.configure_for_plan)."""
    options: ClassVar[tuple[Option, ...]] = (
        threads_option("intra-op threads per session (SessionOptions.intra_op_num_threads); 0: ONNX "
                "Runtime's default, one per physical core"),
        Option("optimization", "graph optimisation level (SessionOptions.graph_optimization_level)",
               choices=tuple(OPTIMIZATION_LEVELS), default="all"),
        Option("spinning", "idle threads busy-wait for work; auto: on when the plan is ONNX Runtime "
               "alone, off beside other runtimes (docs/backends.md)", choices=SPINNING, default="auto"),
        replace(precision_option(("fp32", "int8", "int8s"), "fp32; int8: weights of MatMul and Gemm stored "
                                 "in int8 (per output channel), large embedding tables in uint8, and "
                                 "activations quantized on each call "
                                 "(onnxruntime.quantization.quantize_dynamic); int8s: convolutions and "
                                 "matrix products in int8 with activation scales fixed from calibration "
                                 "batches (quantize_static, QDQ); compile(accuracy=...) chooses per "
                                 "segment"), devices=("cpu",),
                elsewhere="on CUDA ONNX Runtime's int8 needs calibrated QDQ models run by its TensorRT or "
                          "CUDA provider, which hetcc does not offer yet"),
        Option("provider", "execution providers of onnxruntime:cuda: cuda (CUDAExecutionProvider), or "
               "tensorrt (TensorrtExecutionProvider first, CUDA for what it does not take)",
               choices=tuple(PROVIDERS), default="cuda", devices=("cuda",),
               elsewhere="onnxruntime:cpu always runs on the CPU provider"),
    )

    def __init__(self, threads: int = 0, optimization: str = "all", spinning: str = "auto",
                 provider: str = "cuda", precision: str = "fp32"):
        """Session settings; recorded in each artifact, so a loaded bundle runs as it was verified."""
        given = check_options(self.name, self.options, {"threads": threads, "optimization": optimization,
                                                        "spinning": spinning, "provider": provider,
                                                        "precision": precision})
        self.threads, self.optimization, self.spinning = given["threads"], given["optimization"], given["spinning"]
        self.provider, self.precision = given["provider"], given["precision"]

    def precisions(self, target: Target) -> tuple[str, ...]:
        return ("int8", "int8s") if target.device == "cpu" else ()

    def target_problem(self, target: Target) -> str | None:
        return gpu_problem(target, self.provider) if target.device == "cuda" else None

    def supports_op(self, node, target: Target) -> Support:
        return exporter_support(node)

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        if self.precision == "int8s" and not segment.calibration:
            # compile offers int8s only with batches (hetcc/precision.py), and hands them to the segment
            raise InternalError(f"segment {segment.name}: static int8 (int8s) reached lowering without "
                                "calibration batches")
        exported = export_onnx(segment, workdir, self.name, OPSET, embed_limit=_EMBED_LIMIT)
        if self.precision == "int8" and target.device == "cpu":
            exported = quantized(exported, segment, workdir)
        elif self.precision == "int8s" and target.device == "cpu":
            exported = quantized_static(exported, segment, workdir)
        return Artifact(
            target=str(target),
            files=dict(exported.files),
            meta={
                "segment": segment.name,
                "opset": OPSET,
                "external_data": exported.external_data,
                "input_names": list(segment.input_names),
                "output_names": list(segment.output_names),
                "onnx_input_names": exported.input_names,
                "onnx_output_names": exported.output_names,
                "threads": self.threads,
                "optimization": self.optimization,
                "spinning": self.spinning,
                **({"precision": self.precision} if self.precision != "fp32" and target.device == "cpu" else {}),
                **({"provider": self.provider} if target.device == "cuda" else {}),
                **self.versions(),
            },
        )

    def load(self, artifact: Artifact, target: Target) -> "OrtExecutable":
        import onnxruntime as ort

        meta = artifact.meta  # a bundle from before these options runs with their defaults
        settings = check_options(self.name, self.options, {k: meta[k] for k in ("threads", "optimization",
                                                                                "spinning") if k in meta})
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[settings.get("optimization", "all")])
        options.intra_op_num_threads = settings.get("threads", 0)
        options.log_severity_level = 3  # errors only: no per-session warnings on the console
        # Idle ORT threads busy-wait by default. Beside other runtimes' thread pools on the same
        # cores that slowed a following torch GEMM by 1.5x, so "auto" turns it off in a mixed plan;
        # in a plan that is ONNX Runtime alone it is on, as ORT runs by hand (off cost 1.7-4x at the
        # median; docs/backends.md). The compiler sets runs_alone once the plan is final.
        spinning = settings.get("spinning", "auto")
        spin = "1" if spinning == "on" or (spinning == "auto" and meta.get("runs_alone")) else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        names = (artifact.meta["onnx_input_names"], artifact.meta["onnx_output_names"],
                 artifact.meta.get("segment", "?"))
        if target.device == "cpu":
            session = ort.InferenceSession(artifact.files["model"], sess_options=options,
                                           providers=["CPUExecutionProvider"])
            return OrtExecutable(session, *names)
        provider = meta.get("provider", "cuda")
        if provider not in PROVIDERS:
            raise BundleError(f"segment {names[2]!r}: onnxruntime provider {provider!r} is not one of "
                              f"{', '.join(PROVIDERS)}; recompile the bundle")
        problem = gpu_problem(target, provider)
        if problem:
            raise TargetError(f"cannot load segment {names[2]!r} on {target}: {problem}")

        index = gpu_index(target)
        providers = [(p, {"device_id": index}) for p in PROVIDERS[provider]] + ["CPUExecutionProvider"]
        session = ort.InferenceSession(artifact.files["model"], sess_options=options, providers=providers)
        started = session.get_providers()
        if not started or started[0] != PROVIDERS[provider][0]:
            # the provider is listed but could not start (its CUDA or cuDNN libraries did not load):
            # ONNX Runtime would run the whole segment on the CPU without a word
            raise TargetError(f"cannot load segment {names[2]!r} on {target}: ONNX Runtime's "
                              f"{PROVIDERS[provider][0]} did not start (the session runs on "
                              f"{', '.join(started) or 'nothing'}); check that onnxruntime-gpu is built for "
                              f"this machine's CUDA (torch has CUDA {_torch_cuda()}) and that its libraries load")
        return BoundExecutable(session, *names, device_type="cuda", device_id=index)

    def load_command(self, artifact: Artifact) -> str:
        """The command that loads the lowered model as ``load`` does, to reproduce a failed load."""
        return python_command(f"import onnxruntime; onnxruntime.InferenceSession({py_str(artifact.files['model'])}, "
                              "providers=[\"CPUExecutionProvider\"])")


QUANTIZED_OPS = ["MatMul", "Gather"]
"""What int8 quantizes: matrix products (quantize_dynamic first rewrites a Gemm as MatMul and Add,
so the exporter's Gemm for a Linear is one too), and embedding tables (2-D, read along rows) of
SMALLEST_TABLE rows or more that nothing but lookups reads, stored uint8 with one scale per table
(a lookup dequantizes the rows it reads: memory and file bytes, not time; t5 0.44x -> 0.28x of the
fp32 bytes, at the same speed). A table tied to an output head stays fp32: quantizing it for the
lookups would add an int8 copy beside the fp32 one the head reads. Not Conv: its dynamic
ConvInteger ran a ResNet-18 3.7x slower than fp32 here (63 against 17 ms,
benchmarks/bench_precision.py's ort-int8, which quantizes everything; docs/benchmarks.md); static
int8 (int8s) is what runs convolutions in int8."""


def quantized(exported, segment, workdir: Path):
    """The exported model with its weights in int8 (ONNX Runtime's own ``quantize_dynamic``: per
    output channel, signed weights, activations quantized per call), in place of the fp32 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = Path(exported.files["model"])
    kept, unnamed = _tables_kept(source)
    ops = QUANTIZED_OPS if not unnamed else [op for op in QUANTIZED_OPS if op != "Gather"]
    kept = [name for name in kept if name]  # "" would exclude every unnamed node, MatMuls too

    def run(source, target):
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=ops, nodes_to_exclude=kept,
                         use_external_data_format=exported.external_data)
    return _replaced(exported, segment, workdir, run, "quantize_dynamic",
                     f"weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize={ops!r}, "
                     f"nodes_to_exclude={kept!r}")


def _tables_kept(path: Path) -> tuple[list[str], bool]:
    """The Gather nodes whose table stays fp32, and whether one of them has no name (then no
    table is quantized: quantize_dynamic excludes by name). Kept: a table of fewer than
    SMALLEST_TABLE rows (positions, token types, relative-position biases: read by every token,
    their bytes do not matter; as in OpenVINO's int8w), one that is not 2-D or not read along its
    rows, and one that something besides lookups reads (an output head tied to the embedding)."""
    import onnx

    from hetcc.cost_model.precision import SMALLEST_TABLE

    model = onnx.load(str(path), load_external_data=False)  # shapes only
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    readers: dict[str, set] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    kept, unnamed = [], False
    for n in model.graph.node:
        if n.op_type != "Gather" or not n.input or n.input[0] not in tables:
            continue
        dims = tables[n.input[0]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if len(dims) != 2 or axis != 0 or dims[0] < SMALLEST_TABLE or readers[n.input[0]] != {"Gather"}:
            kept.append(n.name)
            unnamed = unnamed or not n.name
    return kept, unnamed


STATIC_OPS = ["Conv", "MatMul", "Gemm"]
"""What static int8 quantizes: ONNX Runtime fuses the QDQ pairs around these into int8 kernels
(QLinearConv, QLinearMatMul / MatMulInteger); the elementwise ops between them stay fp32, which keeps
the error at what the products add."""


def quantized_static(exported, segment, workdir: Path, symmetric: bool = False):
    """The exported model with its convolutions and matrix products in int8 and the activation
    scales fixed from ``segment.calibration`` (ONNX Runtime's own ``quantize_static``, QDQ format,
    weights per output channel, min-max ranges), in place of the fp32 file. Activations are uint8
    with a zero point, or with ``symmetric`` int8 centred on zero and biases left in float: what
    TensorRT takes (it quantizes symmetrically only, and dequantizes int8, not int32)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activation = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if symmetric else {}

    def run(source, target):
        reader = calibration_reader(segment.calibration, exported.input_names)
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=activation,
                        op_types_to_quantize=STATIC_OPS, use_external_data_format=exported.external_data,
                        extra_options=extra)
    return _replaced(exported, segment, workdir, run, "quantize_static",
                     f"<the segment's {len(segment.calibration)} calibration batches, not saved>, "
                     "quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8, "
                     f"activation_type=QuantType.{activation.name}, op_types_to_quantize={STATIC_OPS!r}, "
                     f"extra_options={extra!r}")


def calibration_reader(batches, names):
    """ONNX Runtime's CalibrationDataReader over ``batches`` (tuples of tensors, in the order of
    the model's inputs ``names``; a None name, an input the exporter dropped, is skipped)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {n: to_numpy(x) for n, x in zip(names, batch) if n is not None}

    return Batches()


def _replaced(exported, segment, workdir: Path, run, what: str, settings: str):
    """``exported`` with its model file replaced by ``run(source, target)``'s quantized one."""
    source = Path(exported.files["model"])
    target = source.with_name("model_int8.onnx")
    try:
        with quiet(), quiet_logger():  # it logs advice on the root logger for every tensor
            run(source, target)
    except Exception as exc:
        raise lowering_error(segment, "onnxruntime", exc, workdir, step=(
            f"onnxruntime.quantization.{what}({py_str(str(source))}, {py_str(str(target))}, {settings})")) from exc
    for old in [source, *(p for p in Path(workdir).iterdir() if p.name.startswith(source.name + "."))]:
        old.unlink(missing_ok=True)  # the fp32 weights are not part of the artifact
    files = {"model": str(target)}
    data = [p for p in Path(workdir).iterdir() if p.name.startswith(target.name) and p != target]
    if data:
        files["weights"] = str(data[0])
    return replace(exported, files=files, external_data=bool(data))


def _torch_cuda() -> str:
    import torch

    return torch.version.cuda or "none"
