"""The compile half of the IREE backend: what each ``iree:`` target compiles for, the torch-mlir FX
importer (ExportedProgram -> MLIR in the torch dialect), and ``iree-compile`` (MLIR -> .vmfb).

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

COMMON_FLAGS = (
    "--iree-input-type=torch",
    # IREE demotes f64 to f32 by default; hetcc promises the model's own precision.
    "--iree-input-demote-f64-to-f32=false",
)


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
    """None when the FX importer and the iree-compile tool are both here, else what is missing."""
    try:
        from iree.compiler.extras import fx_importer  # noqa: F401
    except Exception as exc:
        return f"the IREE compiler is not importable ({type(exc).__name__}: {exc}); install it with: {INSTALL}"
    try:
        compiler_tool()
    except Exception as exc:
        return f"the iree-compile tool was not found ({exc}); reinstall with: {INSTALL}"
    return None


@lru_cache(maxsize=None)
def compiler_tool() -> str:
    from iree.compiler.tools.binaries import find_tool

    return os.path.realpath(find_tool("iree-compile"))


# ---- capability -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _op_context():
    from iree.compiler import ir

    return ir.Context()


@lru_cache(maxsize=4096)
def torch_dialect_name(op) -> str | None:
    """The torch-dialect op the importer emits for an OpOverload, if the dialect defines it; None
    when the importer would emit a generic ``torch.operator``, which no IREE lowering accepts."""
    from iree.compiler.extras import fx_importer as fx

    name = fx._get_mlir_op_name_for_schema(op._schema)
    # The importer swaps some Tensor overloads for their Scalar ones; either name can be emitted.
    candidates = [name, getattr(fx, "TENSOR_SCALAR_OP_CONVERTER", {}).get(name)]
    context = _op_context()
    for candidate in candidates:
        if candidate and context.is_registered_operation(candidate):
            return candidate
    return None


# ---- import and compile -------------------------------------------------------------------------

def import_program(exported, path: Path) -> None:
    """The ExportedProgram as MLIR bytecode (torch dialect) at ``path``; weights are inlined as
    resources, so the file alone reproduces a compile."""
    from iree.compiler import ir
    from iree.compiler.extras.fx_importer import FxImporter

    importer = FxImporter(context=ir.Context())
    importer.import_program(exported, func_name="main")
    with open(path, "wb") as f:
        importer.module.operation.write_bytecode(f)


def readable_copy(bytecode: Path, path: Path) -> Path | None:
    """A text copy of the MLIR with the weight data elided, for reading a failure (the bytecode
    file, with weights, is what reproduces it)."""
    try:
        from iree.compiler import ir

        with ir.Context():
            module = ir.Module.parse(bytecode.read_bytes())
            path.write_text(module.operation.get_asm(large_elements_limit=16, large_resource_limit=16))
        return path
    except Exception as exc:  # reading aid only: the failure report must not fail
        log.debug("no readable MLIR copy: %s", exc)
        return None


def command_line(mlir: Path, vmfb: Path, spec: TargetSpec, extra_flags=()) -> list[str]:
    return [compiler_tool(), str(mlir), *COMMON_FLAGS, *spec.flags, *extra_flags, "-o", str(vmfb)]


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
