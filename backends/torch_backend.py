"""torch:cpu and torch:cuda:<index>: the segment's own ExportedProgram, saved as .pt2.

torch:cpu runs every core-ATen node, so a plan always exists; it is the fallback of last resort.
torch:cuda runs the same program eagerly on an NVIDIA GPU (or an AMD one through a ROCm build of
torch, which calls its devices "cuda"), optionally through torch.compile, and in fp16 or bf16 under
torch.autocast (``torch:cuda@fp16``; backends/torch_autocast.py). The artifact needs only torch to
load, not the model's Python source.

Which GPUs are here, and why one is not usable, comes from hetcc/gpus.py (shared with the other GPU
backends and the cost model)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import ClassVar

import torch
from torch.export.graph_signature import TensorArgument

from hetcc.backends._common import check_arity, lowering_error
from hetcc.backends.base import Artifact, Backend
from hetcc.backends.options import Option, check_options, precision_option
from hetcc.backends.torch_archive import load_program
from hetcc.backends.torch_autocast import (LOWER, autocast_call, cast_weights, declared_dtypes, precision_of,
                                          widen_fp32_inputs)
from hetcc.errors import BundleError, TargetError
from hetcc.program import dim_order, with_dim_order
from hetcc.gpus import cuda_description, cuda_problem, gpu_index
from hetcc.target import Target

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
"""torch.compile modes the cuda target accepts. The CUDA-graph modes ("reduce-overhead",
"max-autotune") are refused: a graph replay overwrites the previous call's outputs and torch keeps
its graph trees per thread, while a hetcc executable is shared by every calling thread."""


class TorchBackend(Backend):
    name: ClassVar[str] = "torch"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    on_device: ClassVar[tuple[str, ...]] = ("cuda",)
    untested: ClassVar[dict[str, str]] = {
        "cuda": "never run on a GPU: torch:cuda calls, torch.compile and autocast there (docs/gpu_backends.md)"}
    """Device kind -> why its target has not run on real hardware (`hetcc targets` shows it)."""
    options: ClassVar[tuple[Option, ...]] = (
        Option("compile", "run torch:cuda segments through torch.compile (true: mode default), or "
               "eagerly (false); CUDA-graph modes are refused: a replay overwrites the previous "
               "call's outputs, and hetcc shares an executable between threads",
               types=(bool, str), choices=(False, True) + COMPILE_MODES, default=False, devices=("cuda",),
               elsewhere="torch:cpu always runs eagerly: it is the fallback of last resort and must "
                         "not depend on a C++ toolchain"),
        precision_option(("fp32",) + tuple(LOWER), "fp32, or fp16/bf16 under torch.autocast: matrix "
                         "products and convolutions in the lower type (their weights cast once, at load), "
                         "softmax and norms in fp32", devices=("cuda",),
                         elsewhere="torch:cpu runs the model's own precision: it is the reference every "
                                   "other runtime is checked against and the fallback of last resort"),
    )

    def __init__(self, compile: bool | str = False, precision: str = "fp32"):
        """``compile``: run torch:cuda segments through torch.compile (True or a mode from
        COMPILE_MODES); False runs them eagerly. torch:cpu always runs eagerly: it is the fallback
        of last resort and must not depend on a C++ toolchain. ``precision``: fp32, or fp16/bf16
        under torch.autocast on torch:cuda (backends/torch_autocast.py)."""
        self.compile_mode = _compile_mode(compile)
        self.precision = check_options(self.name, self.options, {"precision": precision})["precision"]

    def precisions(self, target: Target) -> tuple[str, ...]:
        """fp16 and bf16 through autocast on a GPU; bf16 where torch says the GPU computes in it
        (NVIDIA from compute capability 8.0, Ampere; a ROCm build of torch says so of every AMD
        GPU). Nothing on the CPU: torch:cpu is the fp32 reference."""
        if target.device != "cuda" or cuda_problem(target):
            return ()
        with torch.cuda.device(gpu_index(target)):
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp16", "bf16") if bf16 else ("fp16",)

    def target_problem(self, target: Target) -> str | None:
        return cuda_problem(target) if target.device == "cuda" else None

    def versions(self) -> dict[str, str]:
        out = {"torch": torch.__version__}
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
        if getattr(torch.version, "hip", None):
            out["hip"] = torch.version.hip
        return out

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "segment.pt2"
        try:
            torch.export.save(segment.export(), str(path))
        except Exception as exc:
            raise lowering_error(segment, self.name, exc, workdir) from exc
        meta = {
            "segment": segment.name,
            "torch": torch.__version__,
            "input_names": list(segment.input_names),
            "output_names": list(segment.output_names),
            "input_dim_orders": [list(dim_order(x)) if isinstance(x, torch.Tensor) else None
                                 for x in segment.example_inputs],
        }
        if target.device == "cuda":
            # what it was verified on; informative only: the .pt2 itself runs on any CUDA device
            meta.update(compile=self.compile_mode, gpu=cuda_description(gpu_index(target)))
            if self.precision in LOWER:
                meta.update(precision=self.precision)
        elif self.compile_mode:
            log.info("segment %s: torch option compile applies to torch:cuda only; torch:cpu runs "
                     "eagerly", segment.name)
        return Artifact(target=str(target), files={"program": str(path)}, meta=meta)

    def load(self, artifact: Artifact, target: Target) -> "TorchExecutable | CudaExecutable":
        # never torch.export.load on the file itself: torch_archive vets and rebuilds the archive
        ep = load_program(artifact.files["program"])
        orders = [tuple(o) if o is not None else None
                  for o in artifact.meta.get("input_dim_orders") or [None] * len(artifact.meta["input_names"])]
        n_inputs, segment = len(artifact.meta["input_names"]), artifact.meta.get("segment", "?")
        if target.device == "cpu":
            return TorchExecutable(_direct_call(ep, n_inputs), n_inputs, segment, orders)
        problem = cuda_problem(target)
        if problem:
            raise TargetError(f"cannot load segment {segment!r} on {target}: {problem}")
        device = torch.device("cuda", gpu_index(target))
        precision = self._precision_here(artifact.meta, target, segment)
        if precision:
            ep, out_dtypes = autocast_program(ep, precision, device)
        else:
            ep = move_program(ep, device)  # weights go to the GPU once, here
        mode = _compile_mode(artifact.meta.get("compile") or False)
        call = _direct_call(ep, n_inputs)
        if precision:
            call = autocast_call(call, "cuda", precision, out_dtypes)
        if mode:  # the same direct call, compiled: ep.module() would run the archive's guards_code
            call = torch.compile(call, mode=mode)
        return CudaExecutable(call, n_inputs, segment, device, orders, compiled=bool(mode))

    def _precision_here(self, meta: dict, target: Target, segment: str) -> str | None:
        """The artifact's precision, if the target's name agrees and this GPU computes in it."""
        precision = precision_of(meta, segment)
        if target.precision and target.precision != precision:
            raise BundleError(f"segment {segment!r} is listed for {target} but its artifact runs "
                              f"{precision or 'fp32'}; the bundle is corrupt: recompile it")
        offered = self.precisions(target) if precision else ()
        if precision and precision not in offered:
            raise TargetError(f"segment {segment!r} runs in {precision}, which {target.base} does not compute "
                              f"in here (it offers {', '.join(offered) or 'no lower precision'}); recompile "
                              "the bundle on a machine with this GPU")
        return precision


_STATE_KINDS = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")


def _direct_call(ep, n_inputs: int | None = None):
    """Call the exported graph itself: weights from the program's state where the signature puts
    them, the inputs in the user-input places in order (usually last, but torch's verifier accepts
    any order). This skips the unlifted module's pytree handling and input-constraint hook (~90 us a
    call here; hetcc's runtime has already checked the inputs), and never builds ep.module(), which
    would run the archive's guards_code as Python. The graph module's code is torch.fx's, generated
    from the vetted graph nodes when torch built the program (torch_archive), not text from the
    archive. A BundleError for a signature this does not model, or ``n_inputs`` that differ."""
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    template, places = [], []
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind == "USER_INPUT" and isinstance(spec.arg, TensorArgument):
            places.append(len(template))
            template.append(None)
        elif kind in _STATE_KINDS and spec.target in state:
            template.append(state[spec.target])
        else:
            raise BundleError(f"the program has an input {spec.arg.name} of kind {kind}"
                              f"{' with no value in the archive' if kind in _STATE_KINDS else ''}, which "
                              "hetcc's torch backend does not model; recompile the bundle")
    unmodelled = [spec.kind.name for spec in sig.output_specs if spec.kind.name != "USER_OUTPUT"]
    if unmodelled:
        raise BundleError(f"the program has outputs of kind {unmodelled[0]}, which hetcc's torch backend "
                          "does not model; recompile the bundle")
    if n_inputs is not None and len(places) != n_inputs:
        raise BundleError(f"the program takes {len(places)} inputs but the manifest lists {n_inputs}; "
                          "the bundle is corrupt: recompile it")
    graph_module = ep.graph_module
    if places == list(range(len(template) - len(places), len(template))):  # weights first: no copy
        leading = tuple(template[:len(template) - len(places)])
        return lambda *inputs: graph_module(*leading, *inputs)

    def call(*inputs):
        args = list(template)
        for place, value in zip(places, inputs):
            args[place] = value
        return graph_module(*args)
    return call


class TorchExecutable:
    """Calls the exported graph; it keeps no state between calls, so threads may share it."""

    def __init__(self, module, n_inputs: int, segment: str, dim_orders=None):
        self.module = module
        self.n_inputs = n_inputs
        self.segment = segment
        self.dim_orders = [o if o is not None and o != tuple(range(len(o))) else None
                           for o in (dim_orders or [None] * n_inputs)]
        """Per input: the memory layout it was traced with, where that is not plain row-major."""

    def __call__(self, *inputs) -> tuple:
        check_arity(inputs, self.n_inputs, self.segment)
        if any(self.dim_orders):
            inputs = tuple(x if order is None else with_dim_order(x, order)
                           for x, order in zip(inputs, self.dim_orders))
        with torch.no_grad():
            out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class CudaExecutable:
    """The exported graph on one GPU. Its location is that GPU (hetcc.handover): inputs already
    there are used as they are, others are copied in; outputs stay on the GPU, and the runtime
    copies them to the host only when a host segment or the caller needs them there.

    Work is queued on the calling thread's current stream (torch's default stream unless the
    caller set another), and that stream is synchronised before returning, so the outputs are
    complete for any runtime that reads them next (TensorRT and ONNX Runtime use streams of their
    own) and never change afterwards. Eager calls keep no state and may run from several threads
    at once. A torch.compile'd module is called under a lock: dynamo's compilation (again on each
    new input shape) is not safe to enter from two threads at once."""

    def __init__(self, module, n_inputs: int, segment: str, device, dim_orders=None, compiled: bool = False):
        self.module = module
        self.n_inputs = n_inputs
        self.segment = segment
        self.device = device
        self.location = str(device)
        self.dim_orders = [o if o is not None and o != tuple(range(len(o))) else None
                           for o in (dim_orders or [None] * n_inputs)]
        self._lock = threading.Lock() if compiled else None

    def __call__(self, *inputs) -> tuple:
        check_arity(inputs, self.n_inputs, self.segment)
        with torch.cuda.device(self.device), torch.no_grad():
            moved = [x.to(self.device) if isinstance(x, torch.Tensor) else x for x in inputs]
            moved = [x if order is None else with_dim_order(x, order) for x, order in zip(moved, self.dim_orders)]
            if self._lock is None:
                out = self.module(*moved)
            else:
                with self._lock:
                    out = self.module(*moved)
            out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            torch.cuda.current_stream(self.device).synchronize()
        return out


def autocast_program(ep, precision: str, device) -> tuple:
    """``ep`` ready to run under autocast in ``precision`` on ``device``, and the dtype per output
    it declares: the weights autocast would cast on every call cast on the host, then moved, then
    the inputs of the fp32 ops autocast does not recognise widened (backends/torch_autocast.py)."""
    cast_weights(ep, precision, str(device))
    ep = move_program(ep, device)
    widen_fp32_inputs(ep.graph_module)
    return ep, declared_dtypes(ep)


def move_program(ep, device):
    """``ep`` with its weights, constants and the devices written into its graph (``arange(...,
    device=cpu)``, ``_to_copy(..., device=cpu)``) moved to ``device``. The segment was exported
    on the CPU, so without this a graph-made tensor would stay on the host."""
    from torch.export.passes import move_to_device_pass

    ep = move_to_device_pass(ep, device)
    for module in ep.graph_module.modules():  # the pass edits nodes; the generated code must follow
        if isinstance(module, torch.fx.GraphModule):
            module.recompile()
    return ep


def _compile_mode(value) -> str | None:
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise TargetError(f"torch option compile must be True, False or one of {', '.join(COMPILE_MODES)}; "
                      f"got {value!r}" + (" (CUDA-graph modes are refused: a replay overwrites the "
                                          "previous outputs, and hetcc shares an executable between "
                                          "threads)" if value in ("reduce-overhead", "max-autotune") else ""))
