"""migraphx:rocm:<index>: AMD GPUs through MIGraphX, by one of two routes (chosen at lower, recorded
in the artifact):

- ``migraphx``: ROCm's own ``migraphx`` Python module. The shared ONNX export is parsed
  (``parse_onnx`` at the example's shapes), optionally quantized to fp16/bf16, compiled for the
  "gpu" target with ``offload_copy`` (MIGraphX copies inputs in and outputs out itself) and saved
  as ``model.mxr``. A compiled program has fixed shapes; a segment with dynamic dimensions also
  keeps its ONNX file, and a call with new sizes compiles (once, cached) for them.
- ``onnxruntime``: ONNX Runtime's MIGraphXExecutionProvider (``pip install onnxruntime-migraphx``).
  The artifact is the ONNX file; the provider compiles it when the session starts and again for
  new input shapes. CPU fallback inside the session is switched off, so a node the provider does
  not take fails the load (and hetcc falls back) instead of running silently on the CPU.

Nothing here has run against a real MIGraphX or an AMD GPU yet (docs/gpu_backends.md). The PyPI
name ``migraphx`` is a placeholder; a module without ``parse_onnx`` counts as absent."""
from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from hetcc.backends._common import (
    check_arity, check_native_code_trusted, data_dependent_shape, dtype_problem, from_numpy, lowering_error,
    remember_built, to_numpy,
)
from hetcc.backends.base import YES, Artifact, Backend, Support, missing_packages
from hetcc.backends.onnx_export import ONNX_OPSET, export_onnx, exporter_support
from hetcc.backends.options import Option, check_options, precision_option
from hetcc.errors import BundleError, InputError, TargetError
from hetcc.gpus import gpu_index, rocm_arch, rocm_gpus
from hetcc.target import Target
from hetcc.names import dtype_name, first_line, op_name

log = logging.getLogger(__name__)

ROUTES = ("auto", "migraphx", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16")


# ---- the two routes ----

@lru_cache(maxsize=None)
def _migraphx_or_error():
    """(migraphx module, None) or (None, why not)."""
    try:
        mx = importlib.import_module("migraphx")
    except Exception as exc:
        return None, (f"the migraphx Python module is not importable ({first_line(exc)}); it comes with "
                      "ROCm (apt install migraphx), not from PyPI")
    if not all(hasattr(mx, a) for a in ("parse_onnx", "get_target", "save", "load", "argument")):
        return None, (f"the migraphx module at {getattr(mx, '__file__', '?')} has no parse_onnx/compile "
                      "API (the PyPI 'migraphx' is a placeholder); install ROCm's (apt install migraphx)")
    return mx, None


@lru_cache(maxsize=None)
def _ort_provider_problem() -> str | None:
    try:
        import onnxruntime as ort
    except Exception as exc:
        return f"onnxruntime is not importable ({first_line(exc)})"
    if "MIGraphXExecutionProvider" not in ort.get_available_providers():
        return (f"this onnxruntime {ort.__version__} has no MIGraphXExecutionProvider (it has "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-migraphx instead of onnxruntime")
    return None


def choose_route(wanted: str, module_problem: str | None, ep_problem: str | None, index: int):
    """(route, None) or (None, why neither works). Pure. The migraphx module compiles for the
    current HIP device, so it takes device 0 only (pick the GPU with HIP_VISIBLE_DEVICES); the
    provider route takes any device_id."""
    if index != 0 and module_problem is None:
        module_problem = ("the migraphx module compiles for the current HIP device, so hetcc uses it for "
                          f"rocm:0 only; expose GPU {index} as rocm:0 with HIP_VISIBLE_DEVICES={index}")
    if wanted in ("auto", "migraphx") and module_problem is None:
        return "migraphx", None
    if wanted in ("auto", "onnxruntime") and ep_problem is None:
        return "onnxruntime", None
    if wanted == "migraphx":
        return None, module_problem
    if wanted == "onnxruntime":
        return None, f"ONNX Runtime's MIGraphX route: {ep_problem}"
    return None, f"neither MIGraphX route works: {module_problem}; and ONNX Runtime's: {ep_problem}"


# ---- capability ----

_FLOAT8 = "float8 tensors cannot be handed to MIGraphX through numpy"
BANNED_DTYPES = {
    "float64": "hetcc keeps float64 off MIGraphX (its GPU kernels are not verified for it here)",
    "complex64": "MIGraphX has no complex type", "complex128": "MIGraphX has no complex type",
    "bfloat16": "numpy has no bfloat16 to hand these tensors to MIGraphX",
    **dict.fromkeys(("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"), _FLOAT8)}


def node_problem(node) -> str | None:
    """Why MIGraphX (through the ONNX export) cannot take this node, or None: the dtypes the base
    class refuses, then ``op_problem`` (what ``supports_op`` answers); needs no ROCm."""
    return dtype_problem(node, MIGraphXBackend.banned()) or op_problem(node)


def op_problem(node) -> str | None:
    """``node_problem`` for a node on dtypes MIGraphX has (what the base class has checked)."""
    if data_dependent_shape(node):
        return (f"{op_name(node.target)} has an output size that depends on the data; MIGraphX "
                "compiles for fixed shapes")
    answer = exporter_support(node)
    return None if answer.ok else answer.reason


# ---- the backend ----

class MIGraphXBackend(Backend):
    name: ClassVar[str] = "migraphx"
    devices: ClassVar[tuple[str, ...]] = ("rocm",)
    banned_dtypes: ClassVar[dict[str, str]] = BANNED_DTYPES
    untested: ClassVar[dict[str, str]] = {
        "rocm": "never run on a GPU: written against MIGraphX's documented API (docs/gpu_backends.md)"}
    """Device kind -> why its target has not run on real hardware (`hetcc targets` shows it)."""
    options: ClassVar[tuple[Option, ...]] = (
        precision_option(PRECISIONS, "fp32, or fp16/bf16 through MIGraphX's quantize_fp16/quantize_bf16 "
                         "(the onnxruntime route has no bf16)"),
        Option("route", "how segments reach MIGraphX: its Python module, ONNX Runtime's MIGraphX "
               "provider, or auto (the module first)", choices=ROUTES, default="auto"),
        Option("fast_math", "MIGraphX's approximate math functions (they change results)",
               types=(bool,), default=False),
        Option("max_programs", "compiled input shapes kept per segment (module route)", types=(int,),
               default=8, minimum=1),
    )

    def __init__(self, precision: str = "fp32", route: str = "auto", fast_math: bool = False,
                 max_programs: int = 8):
        """``precision``: fp32, or fp16/bf16 (``quantize_fp16``/``quantize_bf16`` on the module
        route; ``migraphx_fp16_enable`` on the provider route, which has no bf16). ``route``: auto
        (module first), migraphx or onnxruntime. ``fast_math``: MIGraphX's approximate math
        functions (off: they change results). ``max_programs``: compiled shapes kept per segment
        on the module route."""
        given = check_options(self.name, self.options, {"precision": precision, "route": route,
                                                        "fast_math": bool(fast_math), "max_programs": max_programs})
        self.precision, self.route = given["precision"], given["route"]
        self.fast_math, self.max_programs = given["fast_math"], given["max_programs"]

    def _route(self, target: Target):
        return choose_route(self.route, _migraphx_or_error()[1], _ort_provider_problem(), gpu_index(target))

    def precisions(self, target: Target) -> tuple[str, ...]:
        """MIGraphX's quantize_fp16 / quantize_bf16 on the parsed program."""
        return ("fp16", "bf16") if self.route != "onnxruntime" else ("fp16",)

    def target_problem(self, target: Target) -> str | None:
        try:
            index = gpu_index(target)
        except TargetError as exc:
            return str(exc)
        missing = missing_packages(("onnx", "onnxscript"))  # the ONNX exporter both routes start from
        if missing:
            return f"the ONNX exporter needs {', '.join(missing)}; install with: pip install {' '.join(missing)}"
        route, why = self._route(target)
        if route is None:
            return why
        if route == "onnxruntime" and self.precision == "bf16":
            return "ONNX Runtime's MIGraphX provider has no bf16 switch; use precision fp16 or the migraphx module"
        if rocm_arch(index) is None:
            return f"no AMD GPU {index} here (the ROCm driver lists {', '.join(rocm_gpus()) or 'none'})"
        return ""

    def versions(self) -> dict[str, str]:
        import torch

        out = {"torch": torch.__version__}
        mx = _migraphx_or_error()[0]
        if mx is not None:
            out["migraphx"] = _module_version(mx)
        try:
            import onnxruntime as ort

            out["onnxruntime"] = ort.__version__
        except Exception:
            pass
        return out

    def supports_op(self, node, target: Target) -> Support:
        problem = op_problem(node)
        return Support(False, problem) if problem else YES

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        route, why = self._route(target)
        if route is None:
            raise TargetError(f"cannot lower segment {segment.name!r} for {target}: {why}")
        workdir = Path(workdir)
        exported = export_onnx(segment, workdir, self.name)
        files = dict(exported.files)
        if route == "migraphx":
            shapes = {n: list(x.shape) for n, x in zip(exported.input_names, segment.example_inputs) if n}
            try:
                program = compile_program(_migraphx_or_error()[0], files["model"], shapes, self.precision,
                                          self.fast_math)
                mxr = workdir / "model.mxr"
                _migraphx_or_error()[0].save(program, str(mxr))
                remember_built(mxr)
            except Exception as exc:
                raise lowering_error(segment, self.name, exc, workdir) from exc
            onnx = {f"onnx_{role}": path for role, path in files.items()}
            # a fixed-shape program; the ONNX stays only where other sizes must be compiled later
            files = {"model": str(mxr), **(onnx if any(segment.dynamic_dims) else {})}
        meta = program_meta(segment, exported, route, self.precision, self.fast_math,
                            rocm_arch(gpu_index(target)), self.versions())
        meta["max_programs"] = self.max_programs
        return Artifact(target=str(target), files=files, meta=meta)

    def load(self, artifact: Artifact, target: Target):
        meta = artifact.meta
        segment = meta.get("segment", "?")
        here = {"gfx": rocm_arch(gpu_index(target)), "module_problem": _migraphx_or_error()[1],
                "ep_problem": _ort_provider_problem(),
                "migraphx": _module_version(_migraphx_or_error()[0]) if _migraphx_or_error()[0] else None}
        error = check_program(meta.get("built_for") or {}, here, str(target))
        if error:
            raise BundleError(f"segment {segment!r}: {error}")
        if meta["built_for"]["route"] == "onnxruntime":
            return _provider_executable(artifact, gpu_index(target))
        check_native_code_trusted(artifact.files["model"], "a compiled MIGraphX program (.mxr)", segment)
        mx = _migraphx_or_error()[0]
        program = mx.load(artifact.files["model"])
        return MxrExecutable(mx, program, meta, artifact.files.get("onnx_model"))


def _module_version(mx) -> str:
    version = getattr(mx, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version("migraphx")
    except Exception:
        return "unknown"


def program_meta(segment, exported, route: str, precision: str, fast_math: bool, gfx, versions: dict) -> dict:
    """The artifact's metadata: what ``load`` needs and what it was built for, as JSON."""
    import torch

    def dtype(name):
        value = segment.expected.get(name)
        return dtype_name(value.dtype) if isinstance(value, torch.Tensor) else None

    built_for = {"route": route, "gfx": gfx}
    if route == "migraphx":
        built_for["migraphx"] = versions.get("migraphx")
    return {
        "segment": segment.name,
        "opset": ONNX_OPSET,
        "input_names": list(segment.input_names),
        "output_names": list(segment.output_names),
        "onnx_input_names": list(exported.input_names),
        "onnx_output_names": list(exported.output_names),
        "output_dtypes": [dtype(n) for n in segment.output_names],
        "compiled_shapes": [list(x.shape) if isinstance(x, torch.Tensor) else None for x in segment.example_inputs],
        "precision": precision,
        "fast_math": fast_math,
        "built_for": built_for,
        **versions,
    }


def check_program(built: dict, here: dict, target: str) -> str | None:
    """Why a MIGraphX artifact cannot load here, or None. Pure. A .mxr holds code compiled for
    one gfx architecture by one MIGraphX release; the provider route compiles at load, so it only
    needs the provider."""
    rebuild = (f"rebuild it on this machine: run `hetcc compile MODEL --targets {target},torch:cpu -o DIR` "
               "here")
    route = built.get("route")
    if route == "onnxruntime":
        if here.get("ep_problem"):
            return f"this segment runs through ONNX Runtime's MIGraphX provider, but {here['ep_problem']}"
        return None
    if route != "migraphx":
        return f"unknown MIGraphX route {route!r} in the artifact; the bundle is corrupt or newer: {rebuild}"
    if here.get("module_problem"):
        return (f"this segment is a MIGraphX program (.mxr) compiled for {built.get('gfx')}, but "
                f"{here['module_problem']}; install ROCm's migraphx, or {rebuild}")
    if not here.get("gfx"):
        return f"this segment is a MIGraphX program compiled for {built.get('gfx')}, but {target} has no AMD GPU here"
    if here["gfx"] != built.get("gfx"):
        return (f"this segment is a MIGraphX program compiled for {built.get('gfx')}; {target} is "
                f"{here['gfx']}, which cannot run it: {rebuild}")
    then, now = built.get("migraphx"), here.get("migraphx")
    if then and now and "unknown" not in (then, now) and then != now:
        return (f"this segment was compiled by MIGraphX {then}; this machine has {now}, which may not "
                f"read its .mxr: install MIGraphX {then}, or {rebuild}")
    return None


def compile_program(mx, onnx_path: str, shapes: dict, precision: str, fast_math: bool):
    """Parse the ONNX file at fixed ``shapes`` (input name -> dims) and compile it for the GPU."""
    program = mx.parse_onnx(onnx_path, map_input_dims=shapes)
    if precision == "fp16":
        mx.quantize_fp16(program)
    elif precision == "bf16":
        if not hasattr(mx, "quantize_bf16"):
            raise RuntimeError("this MIGraphX has no quantize_bf16; use precision fp16")
        mx.quantize_bf16(program)
    program.compile(mx.get_target("gpu"), offload_copy=True, fast_math=fast_math)
    return program


def _provider_executable(artifact: Artifact, index: int):
    import onnxruntime as ort

    from hetcc.backends.ort_session import OrtExecutable

    meta = artifact.meta
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # a node the provider does not take must fail here, not run on the CPU behind the plan's back
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = {"device_id": str(index), "migraphx_fp16_enable": "1" if meta.get("precision") == "fp16" else "0"}
    session = ort.InferenceSession(artifact.files["model"], sess_options=options,
                                   providers=[("MIGraphXExecutionProvider", provider)])
    return OrtExecutable(session, meta["onnx_input_names"], meta["onnx_output_names"], meta.get("segment", "?"))


class MxrExecutable:
    """Compiled MIGraphX programs by input shapes. ``offload_copy`` programs take and return host
    buffers; outputs are copied into fresh arrays before returning. Each program runs under its
    own lock: MIGraphX does not document ``program.run`` as safe to call from several threads."""

    def __init__(self, mx, program, meta: dict, onnx_path: str | None):
        import torch

        self.mx, self.onnx_path = mx, onnx_path
        self.segment = meta.get("segment", "?")
        self.names = list(meta["onnx_input_names"])
        named = [getattr(torch, d, None) if isinstance(d, str) else None for d in meta.get("output_dtypes") or []]
        self.out_dtypes = [d if isinstance(d, torch.dtype) else None for d in named]
        self.precision, self.fast_math = meta.get("precision", "fp32"), bool(meta.get("fast_math"))
        self.max_programs = int(meta.get("max_programs", 8))
        first = tuple(tuple(s) for s, n in zip(meta["compiled_shapes"], self.names) if n is not None)
        self._programs = OrderedDict({first: (program, threading.Lock())})
        self._compiling = threading.Lock()

    def _program(self, key):
        entry = self._programs.get(key)
        if entry is not None:
            return entry
        with self._compiling:
            if key in self._programs:
                return self._programs[key]
            if self.onnx_path is None:
                raise InputError(f"segment {self.segment!r}: its MIGraphX program was compiled for input "
                                 f"shapes {list(self._programs)[0]}, got {key}")
            log.info("segment %s: compiling MIGraphX for new input shapes %s", self.segment, key)
            shapes = dict(zip([n for n in self.names if n is not None], [list(k) for k in key]))
            entry = (compile_program(self.mx, self.onnx_path, shapes, self.precision, self.fast_math),
                     threading.Lock())
            self._programs[key] = entry
            while len(self._programs) > self.max_programs:
                self._programs.popitem(last=False)
            return entry

    def __call__(self, *inputs) -> tuple:
        import numpy as np

        check_arity(inputs, len(self.names), self.segment)
        feeds = {name: to_numpy(x) for name, x in zip(self.names, inputs) if name is not None}
        program, lock = self._program(tuple(tuple(a.shape) for a in feeds.values()))
        with lock:
            results = program.run({name: self.mx.argument(a) for name, a in feeds.items()})
            arrays = [np.array(r, copy=True) for r in results]
        outs = [from_numpy(a) for a in arrays]
        return tuple(o if want is None or o.dtype == want else o.to(want)
                     for o, want in zip(outs, self.out_dtypes + [None] * len(outs)))
