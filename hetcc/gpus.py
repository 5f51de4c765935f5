"""The GPUs on this machine, as hetcc's backends and cost model see them: CUDA devices through
torch (an AMD GPU through a ROCm build of torch is "cuda" too), and the ROCm driver's own list of
AMD GPUs with their gfx architectures. Shared by the backends (torch, TensorRT, ONNX Runtime,
MIGraphX) and the cost model, so none of them imports another for it."""
from __future__ import annotations

from pathlib import Path

import torch

from hetcc.errors import TargetError
from hetcc.target import Target

KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
"""Where the ROCm kernel driver lists its agents (CPUs and GPUs), each with its gfx version."""


# ---- CUDA devices, as torch sees them ----

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


# ---- AMD GPUs, as the ROCm driver lists them ----

def gfx_name(target_version: int) -> str:
    """KFD's gfx_target_version to the LLVM target name: 90402 -> gfx942, 90010 -> gfx90a,
    110000 -> gfx1100 (major, minor, stepping; the stepping is written in hex)."""
    major, rest = divmod(int(target_version), 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor}{stepping:x}"


def rocm_gpus(root: str | Path | None = None) -> list[str]:
    """gfx names of the GPUs the ROCm driver exposes (under ``root``, default KFD_NODES), in its
    order; CPU agents, whose gfx_target_version is 0, are skipped. Empty without the driver."""
    nodes = []
    root = Path(root if root is not None else KFD_NODES)
    if not root.is_dir():
        return []
    for node in root.iterdir():
        try:
            fields = dict(line.split(None, 1) for line in (node / "properties").read_text().splitlines()
                          if len(line.split(None, 1)) == 2)
            version = int(fields.get("gfx_target_version", "0"))
        except (OSError, ValueError):
            continue
        if version and node.name.isdigit():
            nodes.append((int(node.name), gfx_name(version)))
    return [name for _, name in sorted(nodes)]


def rocm_arch(index: int) -> str | None:
    """gfx name of ROCm GPU ``index``: from a ROCm build of torch when there is one (it honours
    HIP_VISIBLE_DEVICES), else from the driver's agent list (which does not)."""
    if getattr(torch.version, "hip", None) and torch.cuda.is_available():
        if index < torch.cuda.device_count():
            return torch.cuda.get_device_properties(index).gcnArchName.split(":")[0]
        return None
    gpus = rocm_gpus()
    return gpus[index] if index < len(gpus) else None
