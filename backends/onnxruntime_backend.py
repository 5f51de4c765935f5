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

import json
import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from hetcc.backends._common import py_str, python_command
from hetcc.backends.base import Artifact, Backend, Support
from hetcc.backends.onnx_export import ONNX_EMBED_LIMIT, ONNX_OPSET, export_onnx, exporter_support
from hetcc.backends.onnx_norms import rsqrt_as_div
from hetcc.backends.onnx_quantize import quantized, quantized_static, reduced_range
from hetcc.backends.ort_session import BoundExecutable, OrtExecutable
from hetcc.backends.options import Option, check_options, precision_option, threads_option
from hetcc.errors import BundleError, InternalError, TargetError
from hetcc.gpus import cuda_problem, gpu_index
from hetcc.target import Target

log = logging.getLogger(__name__)

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
SKIP_LAYERNORM = ("split", "fused")
SPLIT_FUSIONS = ("SkipLayerNormFusion",)
"""ONNX Runtime graph optimizers a CPU session turns off with ``skip_layernorm="split"`` (the
default). SkipLayerNormFusion folds a residual Add (and a bias) into the LayerNormalization after
it; the CPU provider's kernel for the fused op is a scalar loop
that divides per element, and ran 4-6x slower than Add plus LayerNormalization on ONNX Runtime 1.32
(1x128x512: 385 against 65 us on one thread, on an AMD EPYC with AVX2). Left split, examples'
bert ran 6-10 % faster in fp32 and int8 (benchmarks/bench_skip_layernorm.py, docs/backends.md).
ONNX Runtime ignores a name it does not know, so tests/test_backends.py checks that this one still
fuses our exports."""
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
        Option("skip_layernorm", "a residual Add and the LayerNormalization after it: split (two kernels) or "
               "fused (SkipLayerNormalization, whose CPU kernel ran 4-6x slower than the two; docs/backends.md)",
               choices=SKIP_LAYERNORM, default="split", devices=("cpu",),
               elsewhere="on CUDA the fused kernel is ONNX Runtime's fast one, and its optimizers stay as they are"),
        replace(precision_option(("fp32", "int8", "int8u", "int8s"), "fp32; int8: weights of MatMul and Gemm "
                                 "stored in int8 (per output channel; 7 bits on a CPU without VNNI), large "
                                 "embedding tables in uint8, and activations quantized on each call "
                                 "(onnxruntime.quantization.quantize_dynamic); int8u: as int8 with the weights "
                                 "in uint8 and a zero point, 8 bits without VNNI too; int8s: convolutions and "
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
                 provider: str = "cuda", precision: str = "fp32", skip_layernorm: str = "split"):
        """Session settings; recorded in each artifact, so a loaded bundle runs as it was verified."""
        given = check_options(self.name, self.options, {"threads": threads, "optimization": optimization,
                                                        "spinning": spinning, "provider": provider,
                                                        "precision": precision, "skip_layernorm": skip_layernorm})
        self.threads, self.optimization, self.spinning = given["threads"], given["optimization"], given["spinning"]
        self.skip_layernorm = given["skip_layernorm"]
        self.provider, self.precision = given["provider"], given["precision"]

    def precisions(self, target: Target) -> tuple[str, ...]:
        """int8 and int8s on the CPU; int8u too where the CPU has no VNNI, as there int8's signed
        weights take 7 bits (backends/onnx_quantize.py reduced_range)."""
        if target.device != "cpu":
            return ()
        return ("int8", "int8u", "int8s") if reduced_range() else ("int8", "int8s")

    def precision_missing(self, target: Target, precision: str) -> str | None:
        if precision == "int8u" and target.device == "cpu" and not reduced_range():
            return ("int8u is for x86 CPUs without VNNI, where int8's signed weights take 7 bits; this CPU "
                    "has VNNI, so int8 keeps 8-bit weights and runs faster: write onnxruntime:cpu@int8")
        return None

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
        # before quantizing: what is quantized, and the sensitivity model, read the rewritten graph
        divided = rsqrt_as_div(exported.files["model"])
        quantizes = self.precision in ("int8", "int8u", "int8s") and target.device == "cpu"
        reduce_range = quantizes and self.precision != "int8u" and reduced_range()
        if self.precision in ("int8", "int8u") and target.device == "cpu":
            exported = quantized(exported, segment, workdir, reduce_range, unsigned=self.precision == "int8u")
        elif self.precision == "int8s" and target.device == "cpu":
            exported = quantized_static(exported, segment, workdir, reduce_range=reduce_range)
        return Artifact(
            target=str(target),
            files=dict(exported.files),
            meta={
                **exported.meta,  # first: hetcc's own keys below are never overridden
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
                **({"rsqrt_as_div": divided} if divided else {}),
                **({"skip_layernorm": self.skip_layernorm} if target.device == "cpu" else {}),
                **({"precision": self.precision} if self.precision != "fp32" and target.device == "cpu" else {}),
                **({"reduce_range": reduce_range} if quantizes else {}),
                **({"provider": self.provider} if target.device == "cuda" else {}),
                **self.versions(),
            },
        )

    def load(self, artifact: Artifact, target: Target) -> "OrtExecutable":
        import onnxruntime as ort

        meta = artifact.meta  # a bundle from before these options runs with their defaults
        settings = check_options(self.name, self.options, {k: meta[k] for k in ("threads", "optimization",
                                                                                "spinning", "skip_layernorm")
                                                           if k in meta})
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
            if meta.get("precision") in ("int8", "int8s") and not meta.get("reduce_range") and reduced_range():
                log.warning("segment %s was quantized with 8-bit weights for a CPU with VNNI; this CPU has "
                            "none, and ONNX Runtime's int8 kernels can saturate here (20 %% error was seen "
                            "where the weights' own rounding gave 1 %%): compile it again on this machine",
                            names[2])
            session = ort.InferenceSession(artifact.files["model"], sess_options=options,
                                           providers=["CPUExecutionProvider"],
                                           disabled_optimizers=_disabled_optimizers(meta))
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
        disabled = _disabled_optimizers(artifact.meta)
        return python_command(f"import onnxruntime; onnxruntime.InferenceSession({py_str(artifact.files['model'])}, "
                              "providers=[\"CPUExecutionProvider\"]"
                              + (f", disabled_optimizers={json.dumps(disabled)})" if disabled else ")"))


def _disabled_optimizers(meta: dict) -> list[str] | None:
    """The graph optimizers a CPU session of this artifact turns off (SPLIT_FUSIONS where it asks for
    skip_layernorm="split"); an artifact from before the option was verified with ONNX Runtime's
    fusions as they were, so it keeps them."""
    return list(SPLIT_FUSIONS) if meta.get("skip_layernorm", "fused") == "split" else None


def _torch_cuda() -> str:
    import torch

    return torch.version.cuda or "none"
