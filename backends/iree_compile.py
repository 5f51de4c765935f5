"""The compile half of the IREE backend: what each ``iree:`` target compiles for, and ``iree-compile``
(MLIR -> .vmfb). The MLIR comes from the MLIR stage (backends/mlir_import.py, on torch-mlir), in
the dialect named by ``DIALECT``.

iree-compile runs as a subprocess with a command line built here, so the command a failure prints
is exactly the one that ran. Nothing in this module needs a GPU: every target compiles anywhere.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hetcc.backends import mlir_import
from hetcc.errors import TargetError, clip
from hetcc.target import Target

log = logging.getLogger(__name__)

INSTALL = "pip install iree-base-compiler iree-base-runtime"


@dataclass(frozen=True)
class TargetSpec:
    """What one ``iree:`` target means to the compiler and to the runtime."""

    device: str
    """hetcc device kind: cpu, rocm, cuda, vulkan."""
    arch: str | None
    """GPU architecture (gfx942, sm_80, rdna3); None for the host CPU and for generic Vulkan."""
    driver: str
    """IREE runtime HAL driver that runs the artifact: local-task, hip, cuda, vulkan."""
    flags: tuple[str, ...]
    """iree-compile flags that select the device and architecture."""

    def describe(self) -> str:
        what = {"cpu": "this machine's CPU (llvm-cpu, host features)",
                "rocm": "AMD GPUs through ROCm/HIP", "cuda": "NVIDIA GPUs through CUDA",
                "vulkan": "GPUs through Vulkan (SPIR-V)"}[self.device]
        return what + (f", architecture {self.arch}" if self.arch else "")


# device kind -> (runtime driver, iree-compile device flag, flag that names the architecture)
_DEVICES = {
    "cpu": ("local-task", "--iree-hal-target-device=local", None),
    "rocm": ("hip", "--iree-hal-target-device=hip", "--iree-rocm-target"),
    "cuda": ("cuda", "--iree-hal-target-device=cuda", "--iree-cuda-target"),
    "vulkan": ("vulkan", "--iree-hal-target-device=vulkan", "--iree-vulkan-target"),
}
DEVICES = tuple(_DEVICES)
ARCH_EXAMPLES = {"rocm": "iree:rocm:gfx942 (MI300X)", "cuda": "iree:cuda:sm_80 (A100)",
                 "vulkan": "iree:vulkan:rdna3 or iree:vulkan:ampere"}

DIALECT = "torch"
"""What IREE takes from the MLIR stage: the importer's torch dialect, which IREE's own torch input
pipeline lowers (linalg-on-tensors from torch-mlir compiled no faster on the examples, and its
tm_tensor ops need that pipeline anyway; docs/iree.md has the measurements)."""
INPUT_TYPES = {"torch": "torch", "torch-backend": "torch", "linalg-on-tensors": "torch",
               "tosa": "tosa", "stablehlo": "stablehlo"}
"""Stage dialect -> iree-compile --iree-input-type. linalg-on-tensors goes in as torch: torch-mlir
leaves sort, scan and scatter as tm_tensor ops, which only IREE's torch input converts."""



def common_flags(dialect: str = DIALECT) -> tuple[str, ...]:
    """The flags every compile of MLIR in ``dialect`` gets, before the target's."""
    return (f"--iree-input-type={INPUT_TYPES[dialect]}",
            # IREE demotes f64 to f32 by default; hetcc promises the model's own precision.
            "--iree-input-demote-f64-to-f32=false")


COMMON_FLAGS = common_flags()


def target_spec(target: Target) -> TargetSpec:
    """The spec of an ``iree:`` target; TargetError for a device or architecture it cannot be."""
    if target.device not in _DEVICES:
        raise TargetError(f"backend 'iree' drives {', '.join(_DEVICES)}, not {target.device!r}")
    driver, device_flag, arch_flag = _DEVICES[target.device]
    arch = target.index
    if target.device == "cpu":
        if arch is not None:
            raise TargetError(f"{target}: iree:cpu compiles for this machine's CPU and takes no third "
                              "part; write iree:cpu")
        flags = (device_flag, "--iree-hal-local-target-device-backends=llvm-cpu",
                 "--iree-llvmcpu-target-cpu=host")
        return TargetSpec("cpu", None, driver, flags)
    if arch is not None and arch.isdigit():
        raise TargetError(f"{target}: the third part of an iree target is the GPU architecture to "
                          f"compile for, not a device index; write e.g. {ARCH_EXAMPLES[target.device]}")
    if arch is None and target.device in ("rocm", "cuda"):
        raise TargetError(f"iree:{target.device} needs the GPU architecture to compile for, e.g. "
                          f"{ARCH_EXAMPLES[target.device]}")
    flags = (device_flag,) + ((f"{arch_flag}={arch}",) if arch else ())
    return TargetSpec(target.device, arch, driver, flags)


# ---- availability -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def compiler_problem() -> str | None:
    """None when the MLIR stage (torch-mlir) and the iree-compile tool are both here, else what is
    missing and how to install it."""
    problems = [mlir_import.problem()] if mlir_import.problem() else []
    try:
        from iree.compiler.tools import binaries  # noqa: F401
    except Exception as exc:
        problems.append(f"the IREE compiler is not importable ({type(exc).__name__}: {exc}); install it "
                        f"with: {INSTALL}")
    else:
        try:
            compiler_tool()
        except Exception as exc:
            problems.append(f"the iree-compile tool was not found ({exc}); reinstall with: {INSTALL}")
    return "; ".join(problems) or None


@lru_cache(maxsize=None)
def compiler_tool() -> str:
    from iree.compiler.tools.binaries import find_tool

    return os.path.realpath(find_tool("iree-compile"))


# ---- compile -----------------------------------------------------------------------------------

def command_line(mlir: Path, vmfb: Path, spec: TargetSpec, extra_flags=(), dialect: str = DIALECT) -> list[str]:
    return [compiler_tool(), str(mlir), *common_flags(dialect), *spec.flags, *extra_flags, "-o", str(vmfb)]


class CompileFailed(Exception):
    def __init__(self, command: list[str], diagnostics: list[str]):
        self.command = command
        self.diagnostics = diagnostics
        super().__init__(diagnostics[0] if diagnostics else "iree-compile failed")

    def shell(self) -> str:
        return shlex.join(self.command)


def run_compiler(command: list[str]) -> None:
    """Run iree-compile; CompileFailed with its first diagnostic lines when it fails."""
    proc = subprocess.run(command, check=False, capture_output=True, text=True, errors="replace")
    out = Path(command[-1])
    if proc.returncode == 0 and out.is_file() and out.stat().st_size > 0:
        if proc.stderr.strip():
            log.debug("iree-compile said:\n%s", proc.stderr)
        return
    lines = [line.rstrip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    # the error lines first: notes and echoed source follow each of them
    errors = [line for line in lines if "error:" in line]
    first = errors + [line for line in lines if line not in errors]
    if not first:
        first = [f"iree-compile exited with status {proc.returncode} and no output"]
    log.debug("iree-compile failed (status %s):\n%s", proc.returncode, proc.stderr or proc.stdout)
    # lines echo MLIR source, where one constant can run to megabytes: long ones are clipped (at a
    # space, saying so); the command in the error reproduces the whole output
    raise CompileFailed(command, [clip(line, 400) for line in first[:6]])


def runtime_tool(name: str) -> str | None:
    """Path of a tool shipped with iree-base-runtime (iree-cpuinfo, iree-dump-module), if installed."""
    try:
        from iree import _runtime_libs
    except Exception:
        return None
    path = Path(_runtime_libs.__path__[0]) / name
    return str(path) if path.is_file() else None


@lru_cache(maxsize=None)
def cpu_features() -> frozenset[str] | None:
    """CPU features IREE's runtime sees on this machine (``iree-cpuinfo``), or None if unknown."""
    tool = runtime_tool("iree-cpuinfo")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool], check=False, capture_output=True, text=True, timeout=30).stdout
    except Exception as exc:
        log.debug("iree-cpuinfo failed: %s", exc)
        return None
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == "1":
            found.add(parts[0])
    return frozenset(found)
