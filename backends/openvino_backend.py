"""openvino:cpu: segments go through OpenVINO's PyTorch frontend (``ov.convert_model`` on the
segment's ExportedProgram) to OpenVINO IR (.xml + .bin), compiled for the CPU plugin at load.

Capability comes from the frontend's own table of the ATen ops it converts (the one its
``torch.compile`` backend partitions with). Inference precision is f32 unless asked otherwise:
the CPU plugin would otherwise pick bf16 on hardware that has it, which changes the numbers."""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Mapping

from hetcc.backends._common import (
    check_arity, dtype_problem, from_numpy, before_support, lowering_error, op_name, py_str, python_command,
    quiet, to_numpy,
)
from hetcc.backends.base import YES, Artifact, Support
from hetcc.target import Target

PRECISIONS = ("f32", "f16", "bf16")


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


@lru_cache(maxsize=None)
def _banned_dtypes() -> dict:
    import torch

    complex_ = "OpenVINO has no complex element type"
    banned = {
        torch.complex64: complex_, torch.complex128: complex_,
        torch.float64: "OpenVINO's CPU plugin computes float64 in float32, which loses precision",
        torch.bfloat16: "numpy has no bfloat16 to hand these tensors to OpenVINO",
    }
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
        if hasattr(torch, name):
            banned[getattr(torch, name)] = "float8 tensors cannot be handed to OpenVINO through numpy"
    return banned


class OpenVinoBackend:
    name: ClassVar[str] = "openvino"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, precision: str = "f32", config: Mapping[str, str] | None = None):
        """``precision`` is the CPU plugin's INFERENCE_PRECISION_HINT (f32, f16 or bf16); ``config``
        adds further compile properties (e.g. {"NUM_STREAMS": "2"}). Both are stored in the
        artifact, so a loaded bundle runs as it was verified."""
        if precision not in PRECISIONS:
            from hetcc.errors import TargetError

            raise TargetError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.config = _checked_config(dict(config or {}))

    def is_available(self, target: Target) -> bool:
        return target.device in self.devices and _core_or_error()[0] is not None

    def why_unavailable(self, target: Target) -> str:
        if target.device not in self.devices:
            return f"backend 'openvino' drives {', '.join(self.devices)}, not {target.device!r}"
        return _core_or_error()[1] or ""

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

    def supports(self, node, target: Target) -> Support:
        early = before_support(self, node, target)
        if early is not None:
            return early
        problem = dtype_problem(node, _banned_dtypes())
        if problem:
            return Support(False, problem)
        if _qualified_name(node.target) not in _converted_ops():
            return Support(False, f"{op_name(node.target)} is not converted by OpenVINO's PyTorch frontend")
        return YES

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        import openvino as ov

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        xml = workdir / "model.xml"
        try:
            ep = segment.export()
            with quiet():
                model = ov.convert_model(ep)
            if len(model.inputs) != len(segment.input_names) or len(model.outputs) != len(segment.output_names):
                raise RuntimeError(
                    f"converted model has {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
                    f"the segment {len(segment.input_names)} / {len(segment.output_names)}")
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
                "precision": self.precision,
                "config": dict(self.config),
                "input_names": list(segment.input_names),
                "output_names": list(segment.output_names),
                **self.versions(),
            },
        )

    def load(self, artifact: Artifact, target: Target) -> "OvExecutable":
        core, why = _core_or_error()
        if core is None:
            from hetcc.errors import TargetError

            raise TargetError(f"cannot load segment {artifact.meta.get('segment')!r} on {target}: {why}")
        config = {"INFERENCE_PRECISION_HINT": artifact.meta.get("precision", "f32"),
                  **_checked_config(artifact.meta.get("config", {}))}
        # read the weights the artifact lists, not whatever sits beside the .xml
        model = core.read_model(artifact.files["model"], artifact.files.get("weights"))
        compiled = core.compile_model(model, "CPU", config)
        return OvExecutable(compiled, len(artifact.meta["input_names"]), artifact.meta.get("segment", "?"))

    def load_command(self, artifact: Artifact) -> str:
        """The command that loads the lowered model as ``load`` does, to reproduce a failed load."""
        precision = artifact.meta.get("precision", "f32")
        return python_command(
            f"import openvino; core = openvino.Core(); core.compile_model(core.read_model("
            f"{py_str(artifact.files['model'])}), \"CPU\", {{\"INFERENCE_PRECISION_HINT\": {py_str(precision)}}})")


SAFE_CONFIG_KEYS = frozenset({
    "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "PERFORMANCE_HINT_NUM_REQUESTS",
    "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "EXECUTION_MODE_HINT",
    "INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE",
})
"""Compile properties a backend option (and so a bundle) may set. Others, such as CACHE_DIR, make
OpenVINO write files, which a bundle from someone else must not be able to direct."""


def _checked_config(config) -> dict:
    from hetcc.errors import TargetError

    if not isinstance(config, dict):
        raise TargetError(f"openvino config must be a mapping of property names to values, got {type(config).__name__}")
    unknown = sorted(k for k in config if k not in SAFE_CONFIG_KEYS)
    if unknown:
        raise TargetError(f"openvino config keys {unknown} are not allowed; hetcc passes only "
                          f"{', '.join(sorted(SAFE_CONFIG_KEYS))}")
    return {k: str(v) for k, v in config.items()}


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

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, *inputs) -> tuple:
        check_arity(inputs, self.n_inputs, self.segment)
        arrays = [to_numpy(x) for x in inputs]
        # share_inputs: the call is synchronous and the arrays outlive it, so no copy is needed.
        # share_outputs=False: OpenVINO copies results out of the request's reused buffers.
        results = self._request().infer(arrays, share_inputs=True, share_outputs=False)
        return tuple(from_numpy(results[i]) for i in range(self.n_outputs))


def _qualified_name(target) -> str:
    from torch.fx.node import _get_qualified_name

    try:
        return _get_qualified_name(target)
    except Exception:
        return str(target)
