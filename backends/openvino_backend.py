"""openvino:cpu: segments go through OpenVINO's PyTorch frontend (``ov.convert_model`` on the
segment's ExportedProgram) to OpenVINO IR (.xml + .bin), compiled for the CPU plugin at load.

Capability comes from the frontend's own table of the ATen ops it converts (the one its
``torch.compile`` backend partitions with). Inference precision is fp32 unless asked otherwise:
the CPU plugin would otherwise pick bf16 on hardware that has it, which changes the numbers. A
precision the CPU cannot run is not an error: the plugin runs another, hetcc warns, and the
artifact records the precision that ran."""
from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Mapping

from hetcc.backends._common import (
    check_arity, from_numpy, lowering_error, py_str, python_command, quiet, to_numpy,
)
from hetcc.backends.base import YES, Artifact, Backend, Support
from hetcc.backends.openvino_masks import drop_empty_masks
from hetcc.backends.openvino_static import is_transformer, nncf_here, quantize_static
from hetcc.backends.openvino_weights import compress_weights
from hetcc.backends.options import PRECISION_ALIASES, Option, check_options, precision_option, threads_option
from hetcc.cost_model.devices import int8_dot_products
from hetcc.errors import BundleError, InternalError, TargetError
from hetcc.target import Target
from hetcc.names import op_name

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
"""The CPU plugin's inference precisions (an artifact's meta ``precision``)."""
_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
"""hetcc's spelling -> OpenVINO's INFERENCE_PRECISION_HINT."""
COMPRESSED = {"int8w": "fp32", "int8w-bf16": "bf16"}
"""Precisions with int8 weights (backends/openvino_weights.py) -> the inference precision they run."""
_NAMED_PROPERTIES = {"INFERENCE_PRECISION_HINT": "precision", "INFERENCE_NUM_THREADS": "threads"}
"""Compile properties that have an option of their own: config must not set them behind its back."""


@lru_cache(maxsize=None)
def _core_or_error():
    """(ov.Core, None) or (None, why not)."""
    try:
        import openvino as ov
    except Exception as exc:
        return None, f"Python package openvino not importable ({exc}); install with: pip install openvino"
    try:
        core = ov.Core()
        devices = core.available_devices
    except Exception as exc:
        return None, f"OpenVINO could not start its runtime: {exc}"
    if "CPU" not in devices:
        return None, f"OpenVINO sees no CPU device (it sees: {', '.join(devices) or 'none'})"
    return core, None


# Converted by the frontend for ExportedPrograms but missing from the torch.compile table above;
# tests/test_backends.py lowers and checks each one, so an OpenVINO upgrade that drops one fails there.
CONVERTED_BEYOND_TABLE = frozenset({
    "torch.ops.aten.scaled_dot_product_attention.default",
    "torch.ops.aten.logical_and.default",
})


@lru_cache(maxsize=None)
def _converted_ops() -> frozenset[str]:
    from openvino.frontend.pytorch.torchdynamo.op_support import OperatorSupport

    with quiet():
        return frozenset(OperatorSupport({})._support_dict) | CONVERTED_BEYOND_TABLE


_COMPLEX = "OpenVINO has no complex element type"
_FLOAT8 = "float8 tensors cannot be handed to OpenVINO through numpy"


class OpenVinoBackend(Backend):
    name: ClassVar[str] = "openvino"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    banned_dtypes: ClassVar[dict[str, str]] = {
        "complex64": _COMPLEX, "complex128": _COMPLEX,
        "float64": "OpenVINO's CPU plugin computes float64 in float32, which loses precision",
        "bfloat16": "numpy has no bfloat16 to hand these tensors to OpenVINO",
        **dict.fromkeys(("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"), _FLOAT8)}
    options: ClassVar[tuple[Option, ...]] = (
        precision_option(PRECISIONS + tuple(COMPRESSED) + ("int8s",),
                         "the CPU plugin's INFERENCE_PRECISION_HINT (one this CPU lacks runs as the plugin "
                         "decides, bf16 for fp16, or fp32, with a warning); int8w and int8w-bf16 also store "
                         "MatMul weights and embedding tables in int8, computing in fp32 or bf16 (convolution "
                         "weights in the file only); int8s: convolutions and matrix products in int8, "
                         "activation ranges from calibration batches (NNCF's quantize; pip install nncf)"),
        threads_option("INFERENCE_NUM_THREADS, threads per compiled segment; 0: OpenVINO's default"),
        Option("config", "further compile properties, e.g. {\"NUM_STREAMS\": \"2\"} (the keys in "
               "openvino_backend.SAFE_CONFIG_KEYS)", types=(dict,), default={}),
    )

    def __init__(self, precision: str = "fp32", threads: int = 0, config: Mapping[str, str] | None = None):
        """``precision``: the CPU plugin's INFERENCE_PRECISION_HINT (fp32, fp16 or bf16; OpenVINO's
        own f32 and f16 are deprecated spellings). ``threads``: INFERENCE_NUM_THREADS. ``config``
        adds further compile properties (e.g. {"NUM_STREAMS": "2"}). All are stored in the
        artifact, so a loaded bundle runs as it was verified."""
        if config is not None and not isinstance(config, Mapping):
            raise TargetError(f"openvino config must be a mapping of property names to values, "
                              f"got {type(config).__name__}")
        given = check_options(self.name, self.options, {"precision": precision, "threads": threads,
                                                        "config": dict(config or {})})
        # int8s runs its int8 ops as quantized and the rest in fp32
        self.static = given["precision"] == "int8s"
        self.precision = "fp32" if self.static else COMPRESSED.get(given["precision"], given["precision"])
        self.threads = given["threads"]
        self.weights = "int8" if given["precision"] in COMPRESSED else None
        self.config = _checked_config(given["config"])
        named = sorted(k for k in self.config if k in _NAMED_PROPERTIES)
        if named:
            raise TargetError(f"openvino config {named[0]} has an option of its own: write "
                              f"openvino.{_NAMED_PROPERTIES[named[0]]}=... (backend_options={{'openvino': "
                              f"{{'{_NAMED_PROPERTIES[named[0]]}': ...}}}}) instead")
        self._warned = False

    def target_problem(self, target: Target) -> str | None:
        return _core_or_error()[1]  # the package, and a runtime that starts and sees the CPU

    def versions(self) -> dict[str, str]:
        out = {}
        try:
            import torch

            out["torch"] = torch.__version__
            import openvino as ov

            out["openvino"] = ov.__version__
        except Exception:
            pass
        return out

    def precisions(self, target: Target) -> tuple[str, ...]:
        """int8 weights always; bf16 and fp16 where this CPU's plugin computes in them itself;
        static int8 where NNCF is installed."""
        native = [p for p in ("bf16", "fp16") if _precision_run_for(p) == p]
        return (tuple(native) + ("int8w",) + (("int8w-bf16",) if "bf16" in native else ())
                + (("int8s",) if nncf_here() else ()))

    def arithmetic(self, target: Target, precision: str) -> str | None:
        """int8w's matrix products compute in int8 only where the CPU has VNNI: the plugin
        quantizes their activations on each call (its dynamic quantization) only on an AVX-VNNI or
        AVX512-VNNI CPU, and elsewhere decompresses the int8 weights to f32 inside the kernel. On an
        AVX2-only EPYC here that ran no faster than fp32: with their MatMul weights in int8, bert
        ran 0.97x and vit 0.86x the speed of OpenVINO in fp32 (docs/precision.md)."""
        if precision == "int8w" and not int8_dot_products():
            return "fp32"
        return None

    def precision_missing(self, target: Target, precision: str) -> str | None:
        if precision == "int8s" and not nncf_here():
            return "openvino:cpu runs static int8 through NNCF, which is not installed: pip install nncf"
        return None

    def supports_op(self, node, target: Target) -> Support:
        if _qualified_name(node.target) not in _converted_ops():
            return Support(False, f"{op_name(node.target)} is not converted by OpenVINO's PyTorch frontend")
        return YES

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        import openvino as ov

        if self.static and not segment.calibration:
            # compile offers int8s only with batches (hetcc/precision.py), and hands them to the segment
            raise InternalError(f"segment {segment.name}: static int8 (int8s) reached lowering without "
                                "calibration batches")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        xml = workdir / "model.xml"
        static = {}
        try:
            ep = segment.export()
            with quiet():
                model = ov.convert_model(ep)
            if len(model.inputs) != len(segment.input_names) or len(model.outputs) != len(segment.output_names):
                raise RuntimeError(
                    f"converted model has {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
                    f"the segment {len(segment.input_names)} / {len(segment.output_names)}")
            _fix_static_shapes(ov, model, segment)
            drop_empty_masks(model)  # bf16 attention with a constant mask returns NaN
            compressed = compress_weights(model) if self.weights == "int8" else {}
            if self.static:
                model, static = quantize_static(model, segment.calibration, transformer=is_transformer(ep.graph))
            # Give the IR the segment's names too, so it reads well outside hetcc; ports stay by index.
            for port, name in zip(model.inputs, segment.input_names):
                port.get_tensor().add_names({name})
            for port, name in zip(model.outputs, segment.output_names):
                port.get_tensor().add_names({name})
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise lowering_error(segment, self.name, exc, workdir,
                                 step="import openvino; openvino.convert_model(ep)") from exc
        return Artifact(
            target=str(target),
            files={"model": str(xml), "weights": str(xml.with_suffix(".bin"))},
            meta={
                "segment": segment.name,
                "precision": self._precision_that_runs(),
                "requested_precision": self.precision,
                **static,
                **({"weights": "int8", "compressed_matmuls": compressed["matmuls"],
                    "compressed_embeddings": compressed["embeddings"],
                    "compressed_convolutions": compressed["convolutions"]} if self.weights else {}),
                "threads": self.threads,
                "config": dict(self.config),
                "input_names": list(segment.input_names),
                "output_names": list(segment.output_names),
                **self.versions(),
            },
        )

    def _precision_that_runs(self) -> str:
        """The precision OpenVINO's CPU plugin runs when asked for ``self.precision`` here; warns
        once per backend (one compile) when that is not what was asked for."""
        ran = _precision_run_for(self.precision)
        if ran != self.precision and not self._warned:
            self._warned = True
            core = _core_or_error()[0]
            log.warning("openvino:cpu: precision %s was asked for, but this CPU's OpenVINO plugin runs %s "
                        "(its OPTIMIZATION_CAPABILITIES: %s); segments are verified in %s, and their "
                        "artifacts record it (meta precision)", self.precision, ran,
                        ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")), ran)
        return ran

    def load(self, artifact: Artifact, target: Target) -> "OvExecutable":
        core, why = _core_or_error()
        segment = artifact.meta.get("segment", "?")
        if core is None:
            raise TargetError(f"cannot load segment {segment!r} on {target}: {why}")
        precision = _meta_precision(artifact.meta)
        threads = check_options(self.name, self.options, {"threads": artifact.meta.get("threads", 0)})["threads"]
        config = _load_config(artifact.meta, precision, threads)
        # read the weights the artifact lists, not whatever sits beside the .xml
        model = core.read_model(artifact.files["model"], artifact.files.get("weights"))
        compiled = core.compile_model(model, "CPU", config)
        ran = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if ran != precision:  # a bundle verified on another CPU
            log.warning("segment %s was verified in %s, but OpenVINO's CPU plugin runs it in %s here "
                        "(this CPU lacks %s arithmetic)", segment, precision, ran, precision)
        return OvExecutable(compiled, len(artifact.meta["input_names"]), segment)

    def load_command(self, artifact: Artifact) -> str:
        """The command that loads the lowered model as ``load`` does, to reproduce a failed load."""
        threads = artifact.meta.get("threads", 0)
        config = _load_config(artifact.meta, _meta_precision(artifact.meta),
                              threads if isinstance(threads, int) and not isinstance(threads, bool) else 0)
        return python_command(
            f"import openvino; core = openvino.Core(); core.compile_model(core.read_model("
            f"{py_str(artifact.files['model'])}), \"CPU\", {config!r})")


def _load_config(meta: dict, precision: str, threads: int) -> dict:
    """The compile properties for a segment: its config, then the named options, which win (a
    bundle's config must not undo the thread cap or the precision it was verified in)."""
    config = {k: v for k, v in _checked_config(meta.get("config", {})).items() if k not in _NAMED_PROPERTIES}
    config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


SAFE_CONFIG_KEYS = frozenset({
    "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "PERFORMANCE_HINT_NUM_REQUESTS",
    "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "EXECUTION_MODE_HINT",
    "INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE",
})
"""Compile properties a backend option (and so a bundle) may set. Others, such as CACHE_DIR, make
OpenVINO write files, which a bundle from someone else must not be able to direct."""


def _fix_static_shapes(ov, model, segment) -> None:
    """convert_model of an ExportedProgram leaves every input dimension dynamic ([?,?]), even where
    the segment's is fixed; the CPU plugin then plans memory and picks kernels per call. Give it the
    segment's real shapes: fixed sizes as they are, dynamic dims bounded by their ranges."""
    shapes = {}
    for port, example, dynamic in zip(model.inputs, segment.example_inputs, segment.dynamic_dims):
        if not hasattr(example, "shape"):
            continue
        dims = []
        for axis, size in enumerate(example.shape):
            sym = dynamic.get(axis)
            if sym is None:
                dims.append(ov.Dimension(int(size)))
            else:
                lo, hi = segment.dim_ranges.get(sym, (0, -1))
                dims.append(ov.Dimension(int(lo), int(hi)) if 0 <= lo <= hi < 2**31 - 1 else ov.Dimension())
        shapes[port] = ov.PartialShape(dims)
    if shapes:
        model.reshape(shapes)


@lru_cache(maxsize=None)
def _precision_run_for(precision: str) -> str:
    """Ask the CPU plugin, on a one-op model, which precision it runs for a hint: it resolves the
    hint against the CPU (fp16 becomes bf16 on an x86 CPU with bf16 but no fp16, bf16 fp32 on one
    with neither), and reports the result as the compiled model's INFERENCE_PRECISION_HINT."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    core, why = _core_or_error()
    if core is None:
        raise TargetError(f"openvino is not usable here: {why}")
    x = ops.parameter([1], np.float32)
    compiled = core.compile_model(ov.Model([ops.relu(x)], [x]), "CPU",
                                  {"INFERENCE_PRECISION_HINT": _HINTS[precision]})
    return _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))


def _precision_name(element_type) -> str:
    """OpenVINO's element type (f32, f16, bf16) in hetcc's spelling."""
    name = element_type.get_type_name()
    return {hint: ours for ours, hint in _HINTS.items()}.get(name, name)


def _meta_precision(meta: dict) -> str:
    """The precision an artifact was verified in; bundles from before the one spelling say f32/f16."""
    value = meta.get("precision", "fp32")
    value = dict(PRECISION_ALIASES).get(value, value)
    if value not in PRECISIONS:
        raise BundleError(f"segment {meta.get('segment', '?')!r}: openvino precision {value!r} is none of "
                          f"{', '.join(PRECISIONS)}; the bundle is corrupt: recompile it")
    return value


def _checked_config(config) -> dict:
    if not isinstance(config, dict):
        raise TargetError(f"openvino config must be a mapping of property names to values, got {type(config).__name__}")
    unknown = sorted(k for k in config if k not in SAFE_CONFIG_KEYS)
    if unknown:
        raise TargetError(f"openvino config keys {unknown} are not allowed; hetcc passes only "
                          f"{', '.join(sorted(SAFE_CONFIG_KEYS))}")
    return {k: str(v) for k, v in config.items()}


COPY_IN_BYTES = 64 * 1024
"""Inputs up to this size are copied into the request's own input buffer (0.4-1.6 us) instead of
being wrapped in a shared ov.Tensor and set (about 2.5 us; the request then also infers slower on
memory it does not own): 13.2 against 17.0 us a call for an 8x16 input on the 2-core CI machine.
Larger inputs are shared, since copying 256 KiB already costs 5 us."""


class OvExecutable:
    """A compiled model plus one infer request per calling thread: OpenVINO's infer requests are
    not thread-safe, and each reuses its output buffers on the next inference, so outputs are
    copied out before they are returned."""

    def __init__(self, compiled, n_inputs: int, segment: str):
        self.compiled = compiled
        self.n_inputs = n_inputs
        self.n_outputs = len(compiled.outputs)
        self.segment = segment
        self._local = threading.local()
        import numpy as np
        import openvino as ov

        self._tensor = ov.Tensor
        self._copyto = np.copyto

    def _request(self):
        """This thread's (infer request, its input buffers to copy into: see _buffer, its output
        buffers to copy from: see _result)."""
        mine = getattr(self._local, "mine", None)
        if mine is None:
            request = self.compiled.create_infer_request()
            mine = self._local.mine = (request, [self._buffer(request, i) for i in range(self.n_inputs)],
                                       [self._result(request, i) for i in range(self.n_outputs)])
        return mine

    def _result(self, request, i: int):
        """A numpy view of the request's own buffer for output i of a fixed shape, which every
        inference writes in place; None where the shape is dynamic (the request may reallocate it)
        or numpy cannot map its type. Reading the view saves asking the request for the tensor and
        wrapping it again on each call (~1.3 us of a ~15 us call of a small segment)."""
        if self.compiled.outputs[i].get_partial_shape().is_dynamic:
            return None
        try:
            return request.get_output_tensor(i).data
        except (RuntimeError, TypeError):
            return None

    def _buffer(self, request, i: int):
        """The request's own memory for small input i of a fixed shape, to copy into; else None."""
        if self.compiled.inputs[i].get_partial_shape().is_dynamic:
            return None
        try:
            view = request.get_input_tensor(i).data
        except (RuntimeError, TypeError):  # an element type numpy cannot map (bf16)
            return None
        return view if view.flags.writeable and view.nbytes <= COPY_IN_BYTES else None

    def __call__(self, *inputs) -> tuple:
        if len(inputs) != self.n_inputs:
            check_arity(inputs, self.n_inputs, self.segment)
        request, buffers, results = self._request()
        # The request's own calls, not InferRequest.infer(): infer's conversions of inputs and
        # results cost ~30 us a call on a 2-core CPU (benchmarks/bench_overhead.py), more than a
        # small segment's work. Small inputs are copied into the request's buffers; larger ones
        # are shared. Outputs are copied out of the request's buffers, which the next inference
        # reuses.
        shared = []
        for i, x in enumerate(inputs):
            array = to_numpy(x)
            buffer = buffers[i]
            if buffer is not None and array.shape == buffer.shape and array.dtype == buffer.dtype:
                self._copyto(buffer, array)
                continue
            if buffer is not None:
                buffers[i] = None  # the request reads the tensor set below from now on
            request.set_input_tensor(i, self._tensor(array, shared_memory=True))
            # a shared ov.Tensor does not keep its array alive, and the array of a non-contiguous
            # input is a copy made just now: it must outlive the inference
            shared.append(array)
        request.infer()
        return tuple([from_numpy((view if view is not None else request.get_output_tensor(i).data).copy())
                      for i, view in enumerate(results)])


def _qualified_name(target) -> str:
    from torch.fx.node import _get_qualified_name

    try:
        return _get_qualified_name(target)
    except Exception:
        return str(target)
