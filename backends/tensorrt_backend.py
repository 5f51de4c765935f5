"""tensorrt:cuda:<index>: segments go through the shared ONNX export (``onnx_export.export_onnx``) to
TensorRT's ONNX parser and builder, and are saved as serialized engines (``model.plan``) that
TensorRT's runtime deserializes at load.

An engine runs only with the TensorRT version and on the GPU architecture it was built for, so
the artifact records both and ``load`` refuses a mismatch with a message that says to rebuild.
None of the code that calls TensorRT has run against a real TensorRT yet (no GPU here); what has
run is listed in docs/gpu_backends.md.

Written against the TensorRT 10 Python API (name-based I/O, ``execute_async_v3``), keeping to the
calls TensorRT 11 still has. TensorRT 11 removed the weak-typing builder flags (FP16/BF16), so
precision "fp16"/"bf16" needs TensorRT 10; under 11 an engine computes in the model's own dtypes.
Device memory and streams come from torch.cuda, so no pycuda or cuda-python is needed."""
from __future__ import annotations

import importlib
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from hetcc.backends._common import (
    check_arity, check_native_code_trusted, data_dependent_shape, dtype_problem, lowering_error,
    remember_built,
)
from hetcc.backends.base import YES, Artifact, Backend, Support, missing_packages, not_installed
from hetcc.backends.onnx_export import ONNX_OPSET, export_onnx, exporter_support
from hetcc.backends.options import Option, check_options, precision_option
from hetcc.errors import BundleError, InputError, InternalError, LoweringError, TargetError
from hetcc.gpus import cuda_description, cuda_problem, gpu_index
from hetcc.target import Target
from hetcc.names import dtype_name, first_line, op_name

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8s")
"""fp32: TensorRT's TF32 math is switched off, so fp32 layers match torch to fp32 tolerances.
tf32: TensorRT's default (TF32 tensor cores for fp32 GEMMs and convolutions; ~1e-3 relative).
fp16 / bf16: TensorRT 10 may pick half-precision kernels per layer (BuilderFlag.FP16 / BF16).
int8s: explicit quantization: the exported file gets QuantizeLinear/DequantizeLinear pairs with
symmetric int8 scales from calibration batches (ONNX Runtime's quantize_static, as
onnxruntime:cpu@int8s, but symmetric), which TensorRT builds as int8 layers."""
DEFAULT_DYNAMIC_MAX = 4096
"""Largest size a dynamic dimension gets in the engine's optimization profile when the model's
own range is wider (an unbounded Dim): TensorRT sizes its memory for the profile's maximum."""

_EXPORTER = ("onnx", "onnxscript")
_NO_INT64 = frozenset({"aten.mm.default", "aten.bmm.default", "aten.addmm.default",
                       "aten.baddbmm.default", "aten.convolution.default"})
"""Ops TensorRT has no int64 kernels for (its matrix multiply and convolution take floats)."""
_CASTS = frozenset({"aten._to_copy.default", "prims.convert_element_type.default"})


_FLOAT8 = "TensorRT takes float8 only through explicit quantize/dequantize"
BANNED_DTYPES = {
    "float64": "TensorRT has no float64 type", "complex64": "TensorRT has no complex type",
    "complex128": "TensorRT has no complex type", "int16": "TensorRT has no int16 type",
    **{name: f"TensorRT has no {name} type" for name in ("uint16", "uint32", "uint64")},
    **dict.fromkeys(("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"), _FLOAT8)}


@lru_cache(maxsize=None)
def _cast_only_dtypes() -> dict:
    import torch

    return {torch.uint8: "TensorRT takes uint8 only as an input cast to another type",
            torch.int8: "TensorRT takes int8 only with quantization scales (explicit Q/DQ)"}


def node_problem(node) -> str | None:
    """Why TensorRT (through the ONNX export) cannot take this node, or None: the dtypes the base
    class refuses, then ``op_problem`` (what ``supports_op`` answers). Pure: needs the ONNX
    exporter (onnxscript) but not TensorRT, so the tests check it without a GPU."""
    return dtype_problem(node, TensorRTBackend.banned()) or op_problem(node)


def op_problem(node) -> str | None:
    """``node_problem`` for a node on dtypes TensorRT has (what the base class has checked)."""
    name = op_name(node.target)
    if name not in _CASTS:
        problem = dtype_problem(node, _cast_only_dtypes())
        if problem:
            return problem
    if name in _NO_INT64 and dtype_problem(node, {_int64(): "x"}):
        return f"{name} on int64 tensors: TensorRT has no int64 matrix multiply or convolution"
    if data_dependent_shape(node):
        return (f"{name} has an output size that depends on the data, which hetcc's TensorRT "
                "executable cannot allocate before running (it would need an output allocator)")
    answer = exporter_support(node)
    return None if answer.ok else answer.reason


def _int64():
    import torch

    return torch.int64


@lru_cache(maxsize=None)
def _tensorrt_or_error():
    """(tensorrt module, None) or (None, why not and what to install)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        return None, (f"Python package tensorrt is not importable ({first_line(exc)}); install it with: "
                      f"{_install_hint()}, on a machine with an NVIDIA GPU and driver")
    if not all(hasattr(trt, a) for a in ("Builder", "OnnxParser", "Runtime")):
        return None, (f"the tensorrt module at {getattr(trt, '__file__', '?')} has no Builder/OnnxParser/"
                      f"Runtime (a placeholder package?); install the real one: {_install_hint()}")
    return trt, None


def _install_hint() -> str:
    import torch

    cuda = torch.version.cuda
    return f"pip install tensorrt-cu{cuda.split('.')[0]}" if cuda else "pip install tensorrt"


class TensorRTBackend(Backend):
    name: ClassVar[str] = "tensorrt"
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    on_device: ClassVar[tuple[str, ...]] = ("cuda",)
    banned_dtypes: ClassVar[dict[str, str]] = BANNED_DTYPES
    untested: ClassVar[dict[str, str]] = {
        "cuda": "never run on a GPU: written against TensorRT 10's documented API (docs/gpu_backends.md)"}
    """Device kind -> why its target has not run on real hardware (`hetcc targets` shows it)."""
    options: ClassVar[tuple[Option, ...]] = (
        precision_option(PRECISIONS, "fp32 (TF32 off), tf32 (TensorRT's default), fp16/bf16 kernels "
                         "where TensorRT 10 picks them (BuilderFlag.FP16/BF16), or int8s: convolutions and "
                         "matrix products in int8 from calibration batches (Q/DQ in the ONNX file)"),
        Option("workspace", "bytes of scratch memory TensorRT may use (default: its own, the whole device)",
               types=(int,), minimum=1),
        Option("dynamic_max", "cap on a dynamic dimension's size in the optimization profile",
               types=(int,), default=DEFAULT_DYNAMIC_MAX, minimum=1),
    )

    def __init__(self, precision: str = "fp32", workspace: int | None = None,
                 dynamic_max: int = DEFAULT_DYNAMIC_MAX):
        """``precision``: one of PRECISIONS. ``workspace``: bytes TensorRT may use for scratch
        while building and running (None: TensorRT's default, the whole device). ``dynamic_max``:
        cap on a dynamic dimension's size in the optimization profile (see DEFAULT_DYNAMIC_MAX).
        All are recorded in the artifact."""
        given = check_options(self.name, self.options, {"precision": precision, "workspace": workspace,
                                                        "dynamic_max": dynamic_max})
        self.precision, self.workspace = given["precision"], given["workspace"]
        self.dynamic_max = given["dynamic_max"]

    def precisions(self, target: Target) -> tuple[str, ...]:
        """fp16 and bf16 builder flags (TensorRT picks half-precision kernels per layer); bf16 from
        compute capability 8.0 (Ampere) on. Static int8 (Q/DQ nodes from calibration batches)
        where ONNX Runtime's quantizer, which writes them, is installed."""
        described = cuda_description(gpu_index(target))
        major = int(str(described.get("compute_capability", "0")).split(".")[0] or 0)
        static = ("int8s",) if not missing_packages(("onnxruntime",)) else ()
        return (("fp16", "bf16") if major >= 8 else ("fp16",)) + static

    def target_problem(self, target: Target) -> str | None:
        # TensorRT first (its PyPI name depends on the CUDA version), then the ONNX exporter its
        # input goes through, then the GPU
        missing = missing_packages(_EXPORTER)
        return _tensorrt_or_error()[1] or (
            not_installed(missing, "the ONNX exporter TensorRT's input goes through") if missing
            else cuda_problem(target))

    def versions(self) -> dict[str, str]:
        import torch

        out = {"torch": torch.__version__}
        trt = _tensorrt_or_error()[0]
        if trt is not None:
            out["tensorrt"] = trt.__version__
        return out

    def supports_op(self, node, target: Target) -> Support:
        problem = op_problem(node)
        return Support(False, problem) if problem else YES

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        trt, why = _tensorrt_or_error()
        if trt is None:
            raise TargetError(f"cannot lower segment {segment.name!r} for {target}: {why}")
        if self.precision == "int8s" and not segment.calibration:
            # compile offers int8s only with batches (hetcc/precision.py), and hands them to the segment
            raise InternalError(f"segment {segment.name}: static int8 (int8s) reached lowering without "
                                "calibration batches")
        workdir = Path(workdir)
        exported = export_onnx(segment, workdir, self.name)
        if self.precision == "int8s":
            from hetcc.backends.onnx_quantize import quantized_static

            exported = quantized_static(exported, segment, workdir, symmetric=True)
        profile = input_profile(segment, exported.input_names, self.dynamic_max)
        try:
            plan = build_engine(trt, exported.files["model"], profile, self.precision, self.workspace,
                                gpu_index(target))
        except Exception as exc:
            raise lowering_error(segment, self.name, exc, workdir) from exc
        path = workdir / "model.plan"
        path.write_bytes(plan)
        remember_built(path)
        meta = engine_meta(segment, exported, profile, self.precision, self.workspace,
                           describe_here(target), self.versions())
        return Artifact(target=str(target), files={"engine": str(path)}, meta=meta)

    def load(self, artifact: Artifact, target: Target) -> "TrtExecutable":
        meta = artifact.meta
        segment = meta.get("segment", "?")
        # an engine is native code TensorRT runs while deserializing it: trust first, then the rest
        check_native_code_trusted(artifact.files["engine"], "a TensorRT engine", segment)
        error, warning = check_engine(meta.get("engine") or {}, describe_here(target), str(target))
        if error:
            raise BundleError(f"segment {segment!r}: {error}")
        if warning:
            log.warning("segment %s: %s", segment, warning)
        engine = deserialize(_tensorrt_or_error()[0], Path(artifact.files["engine"]).read_bytes(), target)
        if engine is None:
            raise BundleError(f"segment {segment!r}: TensorRT could not deserialize {artifact.files['engine']} "
                              f"(damaged, or built by another TensorRT); {_rebuild(str(target))}")
        return TrtExecutable(engine, meta, target)


# ---- pure pieces: the optimization profile, the artifact's metadata, the engine check ----

def input_profile(segment, onnx_names: list, dynamic_max: int = DEFAULT_DYNAMIC_MAX) -> dict:
    """ONNX input name -> {"min", "opt", "max"} shapes for TensorRT's optimization profile.

    A static dimension is its example size three times over; a dynamic one spans the segment's
    range for its symbol (capped at ``dynamic_max``) with the example size as the optimum."""
    import torch

    out = {}
    for name, x, dims in zip(onnx_names, segment.example_inputs, segment.dynamic_dims):
        if name is None or not isinstance(x, torch.Tensor):
            continue
        lo_shape, hi_shape = list(x.shape), list(x.shape)
        for axis, sym in dims.items():
            lo, hi = segment.dim_ranges.get(sym, (1, 2**31 - 2))
            if hi > dynamic_max:
                log.info("segment %s: dimension %s of %s may reach %d; the TensorRT profile stops at "
                         "%d (backend option dynamic_max)", segment.name, axis, name, hi, dynamic_max)
            hi = max(min(hi, dynamic_max), x.shape[axis])
            lo_shape[axis], hi_shape[axis] = min(max(lo, 0), x.shape[axis]), hi
        out[name] = {"min": lo_shape, "opt": list(x.shape), "max": hi_shape}
    return out


def engine_meta(segment, exported, profile: dict, precision: str, workspace, built_on: dict,
                versions: dict) -> dict:
    """The artifact's metadata: everything ``load`` needs, as JSON."""
    import torch

    def dtype(name):
        value = segment.expected.get(name)
        return dtype_name(value.dtype) if isinstance(value, torch.Tensor) else None

    return {
        "segment": segment.name,
        "opset": ONNX_OPSET,
        "input_names": list(segment.input_names),
        "output_names": list(segment.output_names),
        "onnx_input_names": list(exported.input_names),
        "onnx_output_names": list(exported.output_names),
        "output_dtypes": [dtype(n) for n in segment.output_names],
        "precision": precision,
        "workspace": workspace,
        "profile": profile,
        "engine": {k: built_on.get(k) for k in ("tensorrt", "gpu", "compute_capability")},
        **versions,
    }


def _rebuild(target: str) -> str:
    return (f"rebuild it on this machine: run `hetcc compile MODEL --targets {target},torch:cpu -o DIR` "
            "here (a TensorRT engine runs only with the TensorRT version and GPU architecture it was "
            "built for)")


def _release(version) -> tuple:
    """10.3.0.26 -> (10, 3, 0): the parts of a TensorRT version an engine is tied to."""
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_engine(built: dict, here: dict, target: str) -> tuple[str | None, str | None]:
    """(error, warning) for loading an engine ``built`` as recorded in its meta["engine"] on the
    machine ``here`` describes ({"tensorrt": version or None, "tensorrt_problem", "cuda_problem",
    "gpu", "compute_capability"}). Pure, so it is tested without TensorRT or a GPU.

    TensorRT ties an engine to its exact release and to the GPU's compute capability; another GPU
    model of the same capability loads, though TensorRT warns it may be slower or fail."""
    what = (f"was built with TensorRT {built.get('tensorrt', '?')} for {built.get('gpu', '?')} "
            f"(compute capability {built.get('compute_capability', '?')})")
    if not here.get("tensorrt"):
        why = here.get("tensorrt_problem") or "TensorRT is not installed"
        return f"this engine {what}, but {why}; install TensorRT {built.get('tensorrt', '')}, or " \
               f"{_rebuild(target)}", None
    if here.get("cuda_problem"):
        return f"this engine {what}, but there is no usable GPU here: {here['cuda_problem']}", None
    if _release(here["tensorrt"]) != _release(built.get("tensorrt")):
        return (f"this engine {what}; this machine has TensorRT {here['tensorrt']}, which cannot load it: "
                f"install TensorRT {built.get('tensorrt')}, or {_rebuild(target)}"), None
    if str(here.get("compute_capability")) != str(built.get("compute_capability")):
        return (f"this engine {what}; {target} is {here.get('gpu')} (compute capability "
                f"{here.get('compute_capability')}), which cannot run it: {_rebuild(target)}"), None
    if here.get("gpu") != built.get("gpu"):
        return None, (f"the TensorRT engine {what} and runs here on {here.get('gpu')}, which has the "
                      f"same compute capability: it loads, but TensorRT does not promise speed or "
                      f"success across GPU models; rebuild here for the best engine")
    return None, None


def check_shapes(profile: dict, names: list, inputs, segment: str) -> None:
    """InputError if an input falls outside the engine's optimization profile."""
    for seg_name, onnx_name, x in zip(names[0], names[1], inputs):
        bounds = profile.get(onnx_name) if onnx_name is not None else None
        if bounds is None or not hasattr(x, "shape"):
            continue
        shape = list(x.shape)
        if len(shape) != len(bounds["min"]):
            raise InputError(f"segment {segment!r}: input {seg_name} has {len(shape)} dimensions, the "
                             f"TensorRT engine takes {len(bounds['min'])}")
        for axis, (size, lo, hi) in enumerate(zip(shape, bounds["min"], bounds["max"])):
            if not lo <= size <= hi:
                raise InputError(
                    f"segment {segment!r}: dimension {axis} of input {seg_name} is {size}, outside "
                    f"{lo}..{hi}, the range its TensorRT engine was built for; recompile with a range "
                    f"that covers it (backend_options={{'tensorrt': {{'dynamic_max': N}}}} raises "
                    f"the cap of {hi})" if lo != hi else
                    f"segment {segment!r}: dimension {axis} of input {seg_name} is {size}; its "
                    f"TensorRT engine was built for {lo} only (the model was compiled with that "
                    f"dimension static)")


# ---- what needs TensorRT and a GPU (not run here: see docs/gpu_backends.md) ----

class _Logger:
    """Routes TensorRT's messages to Python logging and keeps the errors of the current thread's
    build, for the LoweringError. TensorRT wants one logger per process."""

    def __init__(self, trt):
        outer = self

        class Impl(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                outer.log(severity, msg)

        self.trt, self.impl, self._local = trt, Impl(), threading.local()

    def log(self, severity, msg) -> None:
        level = str(severity).rsplit(".", 1)[-1]
        if level in ("INTERNAL_ERROR", "ERROR"):
            self.errors().append(msg)
            log.warning("TensorRT: %s", msg)
        elif level == "WARNING":
            log.info("TensorRT: %s", msg)
        else:
            log.debug("TensorRT: %s", msg)

    def errors(self) -> list:
        if not hasattr(self._local, "errors"):
            self._local.errors = []
        return self._local.errors


@lru_cache(maxsize=None)
def _logger(trt) -> _Logger:
    return _Logger(trt)


def describe_here(target: Target) -> dict:
    """This machine as ``check_engine`` reads it: TensorRT's version and the target's GPU."""

    trt, why = _tensorrt_or_error()
    here = {"tensorrt": trt.__version__ if trt else None, "tensorrt_problem": why,
            "cuda_problem": cuda_problem(target)}
    if not here["cuda_problem"]:
        info = cuda_description(gpu_index(target))
        here.update(gpu=info.get("name"), compute_capability=info.get("compute_capability"))
    return here


def build_engine(trt, onnx_path: str, profile: dict, precision: str, workspace, index: int) -> bytes:
    """Parse the ONNX file, build and serialize an engine for GPU ``index``."""
    import onnx
    import torch

    logger = _logger(trt)
    logger.errors().clear()
    with torch.cuda.device(index):
        builder = trt.Builder(logger.impl)
        network = builder.create_network(0)  # explicit batch, TensorRT 10's only mode
        parser = trt.OnnxParser(network, logger.impl)
        if hasattr(parser, "supports_operator"):  # name the ops up front, not the first failure
            ops = sorted({n.op_type for n in onnx.load(onnx_path, load_external_data=False).graph.node})
            missing = [op for op in ops if not parser.supports_operator(op)]
            if missing:
                raise RuntimeError(f"TensorRT's ONNX parser has no importer for {', '.join(missing)}")
        if not parser.parse_from_file(onnx_path):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT's ONNX parser rejected the model: " + "; ".join(errors[:3]))
        config = builder.create_builder_config()
        if workspace:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        _set_precision(trt, config, precision)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        if any(-1 in tuple(t.shape) for t in inputs):
            opt = builder.create_optimization_profile()
            for t in inputs:
                bounds = profile.get(t.name)
                if bounds is None:
                    raise RuntimeError(f"the network input {t.name!r} has dynamic dimensions but the "
                                       "segment has no range for them")
                opt.set_shape(t.name, bounds["min"], bounds["opt"], bounds["max"])
            config.add_optimization_profile(opt)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = logger.errors()
        raise RuntimeError("TensorRT could not build an engine" + (f": {errors[-1]}" if errors else ""))
    return bytes(memoryview(serialized))


def _parser_error(error) -> str:
    parts = [error.desc()]
    for attr, label in (("node_name", "node"), ("node_operator", "op")):
        value = getattr(error, attr, None)
        if callable(value):
            parts.append(f"{label} {value()}")
    return " ".join(str(p) for p in parts if p)


def _set_precision(trt, config, precision: str) -> None:
    flags = trt.BuilderFlag
    if precision != "tf32" and hasattr(flags, "TF32"):
        config.clear_flag(flags.TF32)  # TensorRT's default; changes fp32 GEMM results at ~1e-3
    if precision in ("fp16", "bf16"):
        flag = getattr(flags, precision.upper(), None)
        if flag is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()} (TensorRT 11 removed "
                f"weak typing): precision {precision!r} needs TensorRT 10; with TensorRT 11, compile a "
                f"model that is already in {precision} with precision 'fp32'")
        config.set_flag(flag)
    if precision == "int8s" and hasattr(flags, "INT8"):
        # TensorRT 10 builds a weakly typed network's Q/DQ layers in int8 only with this flag;
        # TensorRT 11 removed it: its networks are strongly typed and take the Q/DQ as written
        config.set_flag(flags.INT8)


def deserialize(trt, plan: bytes, target: Target):
    import torch


    with torch.cuda.device(gpu_index(target)):
        return trt.Runtime(_logger(trt).impl).deserialize_cuda_engine(plan)


def _torch_dtype(trt_dtype):
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
             "FP8": getattr(torch, "float8_e4m3fn", None)}
    dtype = table.get(str(trt_dtype).rsplit(".", 1)[-1])
    if dtype is None:
        raise RuntimeError(f"the engine has a tensor of TensorRT type {trt_dtype}, which hetcc cannot hand over")
    return dtype


def _dtype_named(name):
    import torch

    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) else None


class TrtExecutable:
    """One engine; per calling thread its own execution context and CUDA stream (a TensorRT
    execution context is not thread-safe). Its location is the GPU (hetcc.handover): an input
    already there is read at its device address (no copy unless its dtype or layout differs),
    others are copied in; outputs are fresh device tensors, complete when the call returns (the
    stream is synchronised) and never changed afterwards."""

    def __init__(self, engine, meta: dict, target: Target):
        import torch


        self.engine = engine
        self.device = torch.device("cuda", gpu_index(target))
        self.location = str(self.device)
        self.segment = meta.get("segment", "?")
        self.names = (list(meta["input_names"]), list(meta["onnx_input_names"]))
        self.outputs = list(meta["onnx_output_names"])
        self.out_dtypes = [_dtype_named(d) for d in meta.get("output_dtypes") or []]
        self.profile = meta.get("profile") or {}
        io = [n for n in self.names[1] if n is not None] + self.outputs
        self.io_dtypes = {n: _torch_dtype(engine.get_tensor_dtype(n)) for n in io}
        # shape tensors (sizes a shape computation reads) are read by TensorRT from host memory
        host_io = getattr(engine, "is_shape_inference_io", lambda name: False)
        self.on_host = {n for n in self.names[1] if n is not None and host_io(n)}
        if self.on_host:  # the runtime hands these over on the host instead of via the GPU
            self.input_locations = tuple("cpu" if n in self.on_host else self.location for n in self.names[1])
        self._local = threading.local()

    def _state(self):
        import torch

        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = (self.engine.create_execution_context(), torch.cuda.Stream(self.device))
        return state

    def __call__(self, *inputs) -> tuple:
        import torch

        check_arity(inputs, len(self.names[0]), self.segment)
        check_shapes(self.profile, self.names, inputs, self.segment)
        with torch.cuda.device(self.device):
            context, stream = self._state()
            # the engine's stream waits for the caller's: a CUDA input may still be being written
            # there, and an output of an earlier call that the caller freed may still be being read
            # there (torch's allocator would hand its memory to this stream again)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                keep = []  # the device copies must live until the stream is done with them
                for name, x in zip(self.names[1], inputs):
                    if name is None:
                        continue
                    where = "cpu" if name in self.on_host else self.device
                    t = x.to(device=where, dtype=self.io_dtypes[name]).contiguous()
                    keep.append(t)
                    if not context.set_input_shape(name, tuple(t.shape)):
                        raise InputError(f"segment {self.segment!r}: TensorRT refused shape {tuple(t.shape)} "
                                         f"for input {name}")
                    context.set_tensor_address(name, t.data_ptr())
                outs = []
                for name in self.outputs:
                    shape = tuple(context.get_tensor_shape(name))
                    if any(d < 0 for d in shape):
                        raise LoweringError(f"segment {self.segment!r}: output {name} has a data-dependent "
                                            "shape, which this executable cannot allocate; exclude the "
                                            "node that makes it from tensorrt and compile again")
                    out = torch.empty(shape, dtype=self.io_dtypes[name], device=self.device)
                    context.set_tensor_address(name, out.data_ptr())
                    outs.append(out)
                if not context.execute_async_v3(stream.cuda_stream):
                    raise LoweringError(f"segment {self.segment!r}: TensorRT failed to run the engine "
                                        "(its log above says why); recompile the bundle on this machine")
                outs = [o if want is None or o.dtype == want else o.to(want)
                        for o, want in zip(outs, self.out_dtypes + [None] * len(outs))]
            stream.synchronize()
        return tuple(outs)
