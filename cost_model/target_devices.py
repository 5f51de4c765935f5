"""The DeviceSpec a GPU target runs on, for the cost model.

``device_for_target(Target.parse("tensorrt:cuda:0"))`` names the GPU behind a target and returns
its spec from the device registry (cost_model/device_specs.py). A CPU target gives None: the caller
keeps its measured CPU spec. Where the GPU is not here (planning or compiling for hardware this
machine lacks) or its name is not in the registry, the spec is a documented default and a log
line says so: pass ``devices={target: spec}`` to compile to choose another.

- cuda: ``torch.cuda.get_device_name(index)`` when torch sees that GPU, matched by name
  (``NVIDIA H100 80GB HBM3`` -> h100-sxm); default h100-sxm.
- rocm: the gfx architecture (the target's index when it is one, as in ``iree:rocm:gfx942``; else
  the GPU's, from torch or the ROCm driver): gfx942 -> mi300x, gfx90a -> mi250x; default mi300x.
  The device name, when torch has it, is tried first.
"""
from __future__ import annotations

import logging
import re

from hetcc.cost_model.devices import DeviceSpec
from hetcc.target import Target

log = logging.getLogger(__name__)

DEFAULT_DEVICE = {"cuda": "h100-sxm", "rocm": "mi300x"}
"""Spec used when the GPU behind a target cannot be named (not here, or unknown)."""

GPU_NAMES = (
    (r"\bgh200\b|\bh200\b", "h200"),
    (r"\bb200\b", "b200"),
    (r"\bh100\b|\bh800\b", "h100-sxm"),
    (r"\ba100\b|\ba800\b", "a100-sxm-80gb"),
    (r"\bl4\b", "l4"),
    (r"\bmi300x?\b|\bmi325x\b", "mi300x"),
    (r"\bmi250x?\b|\bmi210\b", "mi250x"),
)
"""Pattern on the lower-cased device name -> registry device. The registry has one spec per
family, so an H100 PCIe maps to the SXM spec and an MI325X to the MI300X: close, not exact."""

GFX_ARCHS = {"gfx942": "mi300x", "gfx90a": "mi250x"}
"""gfx architecture -> registry device (gfx942 is also MI300A/MI325X; gfx90a also MI210/MI250)."""

PROFILE_OF_DEVICE = {"cuda": "torch:cuda", "rocm": "torch:cuda"}
"""Profile key for the torch backend on a GPU (a ROCm build of torch calls its GPUs "cuda")."""


def registry_name(gpu_name: str) -> str | None:
    """The registry device for a GPU's marketing name, or None if none matches."""
    text = str(gpu_name).lower().replace("-", " ").replace("_", " ")
    for pattern, device in GPU_NAMES:
        if re.search(pattern, text):
            return device
    return None


def device_for_target(target, devices=None) -> DeviceSpec | None:
    """The spec of the GPU that ``target`` runs on; None for a CPU target. ``devices``: a mapping
    name -> DeviceSpec to look in (default: the built-in registry)."""
    target = Target.parse(target)
    if target.device not in DEFAULT_DEVICE:
        return None
    if devices is None:
        from hetcc.cost_model.registry import registry

        devices = registry()
    name, seen = _identify(target)
    if name is None:
        name = DEFAULT_DEVICE[target.device]
        log.info("cost model: %s; planning %s with the %s spec (pass devices={%r: spec} to compile "
                 "to use another)", seen, target, name, str(target))
    else:
        log.info("cost model: %s is %s; using the %s spec", target, seen, name)
    return _with_real_memory(devices[name], target)


def _with_real_memory(spec: DeviceSpec, target: Target) -> DeviceSpec:
    """The registry has one spec per family (an A100 40GB matches the 80 GB A100): where torch sees
    the GPU, its capacity is what the GPU really has, if that is less."""
    import dataclasses

    import torch

    index = target.index if target.index is not None else "0"
    mine = target.device == "cuda" or bool(getattr(torch.version, "hip", None))  # torch's "cuda" is HIP on ROCm
    if not mine or not index.isdigit() or not torch.cuda.is_available() \
            or int(index) >= torch.cuda.device_count():
        return spec
    try:
        real = float(torch.cuda.get_device_properties(int(index)).total_memory)
    except Exception:  # noqa: BLE001 - no answer from the driver: keep the registry's figure
        return spec
    return dataclasses.replace(spec, mem_capacity=real) if real < spec.mem_capacity else spec


def _identify(target: Target) -> tuple[str | None, str]:
    """(registry name or None, what was seen, in words for the log)."""
    index = target.index if target.index is not None else "0"
    if target.device == "rocm" and index.startswith("gfx"):
        found = GFX_ARCHS.get(index.split(":")[0])
        return found, (f"its architecture {index}" if found else f"architecture {index} is not in the registry")
    if not index.isdigit():
        return None, f"device index {index!r} is not a number"
    gpu_name, arch = _gpu_here(int(index), target.device)
    if gpu_name is None and arch is None:
        return None, f"no {target.device} GPU {index} is present here"
    found = registry_name(gpu_name) if gpu_name else None
    if found is None and arch:
        found = GFX_ARCHS.get(arch)
    seen = " / ".join(x for x in (gpu_name, arch) if x)
    if found is None:
        log.warning("cost model: %s is %s, which the device registry does not know; using the %s spec "
                    "(add it in a devices file, docs/devices.md)", target, seen, DEFAULT_DEVICE[target.device])
        return None, f"{seen} is not in the registry"
    return found, seen


def _gpu_here(index: int, kind: str) -> tuple[str | None, str | None]:
    """(device name, gfx arch) of GPU ``index`` as this machine sees it; Nones where absent."""
    import torch

    name = arch = None
    hip = bool(getattr(torch.version, "hip", None))
    # a ROCm build of torch sees AMD GPUs (as "cuda"); a CUDA build must not answer for a rocm target
    if (kind == "cuda" or hip) and torch.cuda.is_available() and index < torch.cuda.device_count():
        name = torch.cuda.get_device_name(index)
        if hip:
            arch = getattr(torch.cuda.get_device_properties(index), "gcnArchName", "").split(":")[0] or None
    if kind == "rocm" and arch is None:
        from hetcc.gpus import rocm_gpus

        gpus = rocm_gpus()
        arch = gpus[index] if index < len(gpus) else None
    return name, arch


def profile_name(target) -> str:
    """The key of the target's BackendProfile in DEFAULT_PROFILES: the backend name, except torch
    and ONNX Runtime on a GPU ("torch:cuda", "onnxruntime:cuda"), whose costs are nothing like
    theirs on the CPU."""
    target = Target.parse(target)
    if target.backend == "torch" and target.device in PROFILE_OF_DEVICE:
        return PROFILE_OF_DEVICE[target.device]
    if target.backend == "onnxruntime" and target.device == "cuda":
        return "onnxruntime:cuda"
    return target.backend
