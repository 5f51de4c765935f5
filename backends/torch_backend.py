"""torch:cpu and torch:cuda:<index>: the segment's own ExportedProgram, saved as .pt2.

torch:cpu runs every core-ATen node, so a plan always exists; it is the fallback of last resort.
torch:cuda runs the same program eagerly on an NVIDIA GPU (or an AMD one through a ROCm build of
torch, which calls its devices "cuda"), optionally through torch.compile. The artifact needs only
torch to load, not the model's Python source.

The CUDA helpers here (``gpu_index``, ``cuda_problem``, ``cuda_description``) are shared with the
TensorRT and MIGraphX backends: torch.cuda is how hetcc looks at an NVIDIA GPU."""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import ClassVar

import torch

from hetcc.backends._common import check_arity, lowering_error
from hetcc.backends.base import YES, Artifact, Support
from hetcc.errors import TargetError
from hetcc.program import dim_order, with_dim_order
from hetcc.target import Target

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
"""torch.compile modes the cuda target accepts. The CUDA-graph modes ("reduce-overhead",
"max-autotune") are refused: a graph replay overwrites the previous call's outputs and torch keeps
its graph trees per thread, while a hetcc executable is shared by every calling thread."""


class TorchBackend:
    name: ClassVar[str] = "torch"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, compile: bool | str = False):
        """``compile``: run torch:cuda segments through torch.compile (True or a mode from
        COMPILE_MODES); False runs them eagerly. torch:cpu always runs eagerly: it is the fallback
        of last resort and must not depend on a C++ toolchain."""
        self.compile_mode = _compile_mode(compile)

    def is_available(self, target: Target) -> bool:
        if target.device == "cpu":
            return True
        return target.device in self.devices and cuda_problem(target) is None

    def why_unavailable(self, target: Target) -> str:
        if target.device not in self.devices:
            return f"backend 'torch' drives {', '.join(self.devices)}, not {target.device!r}"
        if target.device == "cuda":
            return cuda_problem(target) or ""
        return ""

    def supports(self, node, target: Target) -> Support:
        if target.device != "cpu" and not self.is_available(target):
            return Support(False, self.why_unavailable(target))
        return YES

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
        elif self.compile_mode:
            log.info("segment %s: torch option compile applies to torch:cuda only; torch:cpu runs "
                     "eagerly", segment.name)
        return Artifact(target=str(target), files={"program": str(path)}, meta=meta)

    def load(self, artifact: Artifact, target: Target) -> "TorchExecutable | CudaExecutable":
        check_archive_is_safe(artifact.files["program"])
        ep = torch.export.load(artifact.files["program"])
        orders = [tuple(o) if o is not None else None
                  for o in artifact.meta.get("input_dim_orders") or [None] * len(artifact.meta["input_names"])]
        n_inputs, segment = len(artifact.meta["input_names"]), artifact.meta.get("segment", "?")
        if target.device == "cpu":
            return TorchExecutable(_direct_call(ep) or ep.module(), n_inputs, segment, orders)
        problem = cuda_problem(target)
        if problem:
            raise TargetError(f"cannot load segment {segment!r} on {target}: {problem}")
        device = torch.device("cuda", gpu_index(target))
        ep = move_program(ep, device)  # weights go to the GPU once, here
        mode = _compile_mode(artifact.meta.get("compile") or False)
        if mode:
            module = torch.compile(ep.module(), mode=mode)
        else:
            module = _direct_call(ep) or ep.module()
        return CudaExecutable(module, n_inputs, segment, device, orders, compiled=bool(mode))


def _direct_call(ep):
    """Call the exported graph with its weights as leading arguments, skipping the unlifted
    module's pytree handling and input-constraint hook (~90 us a call here; hetcc's runtime has
    already checked the inputs). None when the program has inputs or outputs we don't model."""
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    leading = []
    for spec in sig.input_specs:
        if spec.kind.name == "USER_INPUT":
            continue
        if spec.kind.name not in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") or spec.target not in state:
            return None
        leading.append(state[spec.target])
    if any(spec.kind.name != "USER_INPUT" for spec in sig.input_specs[len(leading):]):
        return None  # weights are not all ahead of the user inputs
    if any(spec.kind.name != "USER_OUTPUT" for spec in sig.output_specs):
        return None
    graph_module = ep.graph_module
    return lambda *inputs: graph_module(*leading, *inputs)


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
    """The exported graph on one GPU. Takes CPU tensors and returns CPU tensors: the runtime hands
    tensors between segments on the host, so each call copies its inputs to the device and its
    outputs back (the cost model charges both through the device's host link).

    Work is queued on the calling thread's current stream (torch's default stream unless the
    caller set another) and the outputs are copied to host memory and that stream synchronised
    before returning, so results are complete and never change afterwards. Eager calls keep no
    state and may run from several threads at once. A torch.compile'd module is called under a
    lock: dynamo's compilation (again on each new input shape) is not safe to enter from two
    threads at once."""

    def __init__(self, module, n_inputs: int, segment: str, device, dim_orders=None, compiled: bool = False):
        self.module = module
        self.n_inputs = n_inputs
        self.segment = segment
        self.device = device
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
            out = out if isinstance(out, (tuple, list)) else (out,)
            host = tuple(o.to("cpu") if isinstance(o, torch.Tensor) else o for o in out)
            torch.cuda.current_stream(self.device).synchronize()
        return host


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


# ---- CUDA devices, as torch sees them (shared with the TensorRT backend and the cost model) ----

def gpu_index(target: Target) -> int:
    """The device number of a GPU target; ``torch:cuda`` means device 0. A TargetError if the
    index is not a number."""
    index = target.index if target.index is not None else "0"
    if not index.isdigit():
        raise TargetError(f"target {target}: the device index must be a number such as 0 "
                          f"(write {target.backend}:{target.device}:0), got {index!r}")
    return int(index)


def cuda_problem(target: Target) -> str | None:
    """Why torch cannot use the target's CUDA device here, or None."""
    try:
        index = gpu_index(target)
    except TargetError as exc:
        return str(exc)
    if not torch.cuda.is_available():
        if not torch.version.cuda and not getattr(torch.version, "hip", None):
            return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of "
                    "torch (https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU")
        return (f"torch {torch.__version__} sees no GPU (torch.cuda.is_available() is False): check "
                "the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if index >= count:
        return (f"there is no GPU {index}: torch sees {count} "
                f"(valid targets: {', '.join(f'{target.backend}:cuda:{i}' for i in range(count))})")
    return None


def cuda_description(index: int) -> dict:
    """Name, compute capability and memory of CUDA device ``index`` (an empty dict without one)."""
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return {}
    props = torch.cuda.get_device_properties(index)
    out = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
           "memory_bytes": int(props.total_memory)}
    arch = getattr(props, "gcnArchName", None)  # ROCm builds: gfx942:sramecc+:xnack-
    if arch:
        out["arch"] = arch.split(":")[0]
    return out


_ALLOWED_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/weight_\d+|data/weights/[\w.-]+_weights_config\.json"
    r"|data/constants/tensor_\d+|data/constants/[\w.-]+_constants_config\.json"
    r"|data/sample_inputs/[\w.-]+\.pt|extra/[\w./-]+)")
"""Entries a PT2 archive written by torch.export.save holds. Anything else (a legacy weights
pickle, an older archive layout) would make torch.export.load fall back to a reader that unpickles."""


def check_archive_is_safe(path) -> None:
    """Refuse a .pt2 archive that would make ``torch.export.load`` unpickle anything.

    torch.export.load unpickles weights or constants flagged ``use_pickle``, custom and opaque
    objects, legacy ``.pt`` members and whole older archive layouts, and retries sample inputs with
    ``weights_only=False`` when the safe loader fails. Bundles may come from someone else, so every
    entry must be one torch.export.save writes, and each of those paths is checked before torch
    sees the file.
    """
    import io
    import json
    import zipfile

    from hetcc.errors import BundleError

    def refuse(why: str):
        return BundleError(f"{path}: {why}; hetcc refuses to load it (it could run code); recompile "
                           "the bundle from the model")

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            prefixes = {n.split("/", 1)[0] for n in names}
            if len(prefixes) != 1 or any("/" not in n for n in names):
                raise refuse("it is not a single-folder PT2 archive")
            for name in names:
                if not _ALLOWED_ENTRY.fullmatch(name.split("/", 1)[1]):
                    raise refuse(f"it holds {name!r}, which torch.export.save does not write")
            configs = [n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))]
            if not configs or not any(n.endswith("/archive_format") for n in names):
                raise refuse("it is not a torch.export PT2 archive")
            if not any("/data/sample_inputs/" in n for n in names):
                raise refuse("it has no sample inputs (torch would fall back to an older reader)")
            for name in configs:
                for fqn, meta in json.loads(archive.read(name)).get("config", {}).items():
                    stored = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or not stored.startswith(("weight_", "tensor_")):
                        raise refuse(f"{fqn} is stored as a pickled object")
            for name in names:
                if "/data/sample_inputs/" in name:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except BundleError:
        raise
    except Exception as exc:  # a bad zip, bad JSON, or sample inputs the safe unpickler rejects
        raise BundleError(f"{path} is not a safe torch.export archive ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); recompile the bundle") from exc
