"""iree: segments go through the MLIR stage (backends/mlir_import.py: torch-mlir's FX importer) to
MLIR in the torch dialect, then ``iree-compile`` to a .vmfb that the IREE runtime runs.

Targets: ``iree:cpu`` (llvm-cpu for this machine's CPU, local-task driver) runs here;
``iree:rocm:<gfx arch>``, ``iree:cuda:<sm arch>`` and ``iree:vulkan[:<arch>]`` compile anywhere
the compiler is installed and run where that GPU and its driver are. docs/iree.md has the details.
"""
from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import ClassVar

from hetcc.backends import iree_compile as ic
from hetcc.backends import iree_runtime as irt
from hetcc.backends import mlir_import
from hetcc.backends._common import check_native_code_trusted, lowering_error, quiet, remember_built
from hetcc.backends.base import YES, Artifact, Backend, Support
from hetcc.backends.options import Option
from hetcc.backends.iree_rewrite import REWRITES, rewritten
from hetcc.errors import LoweringError, TargetError
from hetcc.target import Target
from hetcc.names import dtype_name, op_name

log = logging.getLogger(__name__)

NOT_LOWERED = {
    # In the torch dialect, but IREE 3.13's torch input conversion fails on them: each was lowered
    # and seen to fail, and tests/test_iree_backend.py checks that they still do.
    "aten.fmod.Scalar": "IREE 3.13 does not lower fmod with a scalar divisor (iree-compile: failed "
                        "to legalize torch.constant)",
    "aten.upsample_bilinear2d.vec": "IREE 3.13 does not lower upsample_bilinear2d.vec (iree-compile: "
                                    "failed to legalize torch.constant.float)",
    "aten._embedding_bag.default": "IREE 3.13 does not lower embedding_bag (iree-compile: failed to "
                                   "legalize torch.aten.embedding_bag.padding_idx)",
}
"""ATen overload -> why IREE cannot lower it, though the importer takes it."""


_NO_NUMPY = "tensors do not cross into IREE through numpy here"


class IreeBackend(Backend):
    name: ClassVar[str] = "iree"
    devices: ClassVar[tuple[str, ...]] = ic.DEVICES
    banned_dtypes: ClassVar[dict[str, str]] = {
        "complex64": f"complex {_NO_NUMPY}", "complex128": f"complex {_NO_NUMPY}",
        # bf16 crosses fine (as its bits), and bf16 arithmetic on inputs compiles, but IREE 3.13
        # fails on bf16 weights ("'arith.constant' op failed to verify"), which is most uses.
        "bfloat16": "IREE 3.13 fails to compile bfloat16 weights (arith.constant type mismatch in iree-compile)",
        **{name: f"{name} {_NO_NUMPY}" for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                    "float8_e5m2fnuz", "uint16", "uint32", "uint64", "complex32")}}
    untested: ClassVar[dict[str, str]] = {
        device: "compiles here; the module has never run on that GPU (docs/iree.md)"
        for device in ic.DEVICES if device != "cpu"}
    """Device kind -> why its targets have not run on real hardware (`hetcc targets` shows it)."""
    options: ClassVar[tuple[Option, ...]] = (
        Option("flags", "extra iree-compile flags, after hetcc's own, e.g. [\"--iree-opt-level=O3\"] "
               "(compiling only, never loading)", types=(list, tuple), default=()),
    )

    def __init__(self, flags=()):
        """``flags``: extra iree-compile flags, appended after hetcc's own (recorded in the
        artifact; they only affect compiling, never loading)."""
        if isinstance(flags, str) or not all(isinstance(f, str) for f in flags):
            raise TargetError("iree flags must be a list of strings, e.g. ['--iree-opt-level=O3']")
        self.flags = tuple(flags)

    # ---- availability ----

    def target_problem(self, target: Target) -> str | None:
        """None when this machine can compile for ``target`` or run it; a GPU target needs its
        architecture named (vulkan without one only where a Vulkan device is here)."""
        try:
            spec = ic.target_spec(target)
        except TargetError as exc:
            return str(exc)
        if spec.device == "cpu":
            return irt.device(spec.driver)[1] or ""
        if spec.arch is None:  # generic vulkan: offered only where it runs
            runs = irt.device(spec.driver)[1]
            return (f"no Vulkan device here ({runs}); to compile for another machine's GPU, name its "
                    f"target: {ic.ARCH_EXAMPLES['vulkan']}") if runs else ""
        if ic.compiler_problem() is None:
            return ""
        runs = irt.device(spec.driver)[1]
        return "" if runs is None else f"{ic.compiler_problem()}; and it cannot run here: {runs}"

    def versions(self) -> dict[str, str]:
        out = {}
        for key, dist in (("torch", "torch"), ("iree-compiler", "iree-base-compiler"),
                          ("iree-runtime", "iree-base-runtime")):
            try:
                out[key] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return {**out, **mlir_import.versions()}

    # ---- capability ----

    def supports_op(self, node, target: Target) -> Support:
        if ic.compiler_problem():
            return Support(False, ic.compiler_problem())
        if op_name(node.target) in NOT_LOWERED:
            return Support(False, f"{op_name(node.target)}: {NOT_LOWERED[op_name(node.target)]}")
        if node.target in REWRITES:  # written in ops the dialect has before import
            return YES
        why = mlir_import.op_supported(node.target)
        return Support(False, f"{why}, so IREE cannot compile it") if why else YES

    # ---- lower ----

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        spec = ic.target_spec(target)
        problem = ic.compiler_problem()
        if problem:
            raise LoweringError(f"segment {segment.name!r}: backend 'iree' cannot compile: {problem}")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        mlir, vmfb = workdir / "segment.mlirbc", workdir / "module.vmfb"
        program = segment
        try:
            program = rewritten(segment, spec.device)  # what is imported, so what is kept on failure
            ep = program.export()
            with quiet():
                mlir_import.import_program(ep, mlir, ic.DIALECT)
        except Exception as exc:
            raise lowering_error(program, self.name, exc, workdir, step=(
                "from hetcc.backends import mlir_import; "
                f"mlir_import.import_program(ep, 'segment.mlirbc', {ic.DIALECT!r})")) from exc
        command = ic.command_line(mlir, vmfb, spec, self.flags)
        try:
            ic.run_compiler(command)
        except ic.CompileFailed as exc:
            raise _compile_error(segment, target, exc, mlir) from exc
        mlir.unlink()  # it holds a copy of every weight; a failure keeps it (above)
        meta = {
            "segment": segment.name,
            "device": spec.device,
            "arch": spec.arch,
            "driver": spec.driver,
            "flags": [*ic.COMMON_FLAGS, *spec.flags, *self.flags],
            "input_names": list(segment.input_names),
            "output_names": list(segment.output_names),
            "output_dtypes": [_dtype_name(segment.reference_value(n)) for n in segment.output_names],
            **self.versions(),
        }
        if spec.device == "cpu":
            features = ic.cpu_features()
            meta["cpu_features"] = sorted(features) if features is not None else None
        remember_built(vmfb)  # native code this process made: loading it here needs no trust
        return Artifact(target=str(target), files={"module": str(vmfb)}, meta=meta)

    # ---- load ----

    def load(self, artifact: Artifact, target: Target) -> irt.IreeExecutable:
        spec = ic.target_spec(target)
        meta = artifact.meta
        segment = meta.get("segment", "?")
        if irt.runtime_problem():
            raise TargetError(f"cannot load segment {segment!r} on {target}: {irt.runtime_problem()}")
        if spec.device == "cpu":
            _check_cpu_features(meta.get("cpu_features"), segment)
        dtypes = meta.get("output_dtypes")
        if not isinstance(dtypes, list) or not all(d in irt.DTYPES for d in dtypes):
            from hetcc.errors import BundleError

            raise BundleError(f"segment {segment!r}: artifact meta output_dtypes {dtypes!r} is not a list "
                              f"of {', '.join(sorted(irt.DTYPES))}; the artifact is corrupt")
        # A vmfb carries machine code (an embedded shared object on the CPU, a device binary on a
        # GPU) that IREE maps and runs: like a TensorRT engine, only from a trusted bundle.
        check_native_code_trusted(artifact.files["module"], "an IREE module (compiled machine code)", segment)
        run = irt.load_module(artifact.files["module"], spec.driver, f"{spec.describe()} ({target})", segment)
        return run.configure(len(meta["input_names"]), dtypes)


def _dtype_name(value) -> str:
    import torch

    if not isinstance(value, torch.Tensor):
        raise LoweringError(f"a segment output is a {type(value).__name__}, not a tensor; IREE returns tensors")
    name = dtype_name(value.dtype)
    if name not in irt.DTYPES:
        raise LoweringError(f"a segment output is {name}, which does not cross out of IREE here")
    return name


def _compile_error(segment, target, exc: "ic.CompileFailed", mlir: Path) -> LoweringError:
    readable = mlir_import.readable_copy(mlir, mlir.with_suffix(".mlir"))
    more = "\n".join(f"  {line}" for line in exc.diagnostics[1:])
    return LoweringError(
        f"segment {segment.name!r}: iree-compile failed for {target}: {exc.diagnostics[0] if exc.diagnostics else ''}\n"
        + (f"{more}\n" if more else "")
        + f"The segment's MLIR ({ic.DIALECT} dialect, with its weights) is {mlir}"
        + (f"; a readable copy without the weight data is {readable}" if readable else "")
        + f".\nReproduce with:\n  {exc.shell()}\n"
        f"compile falls back for these nodes on its own; to keep them off IREE from the start, use "
        f"exclude={{SCOPE: [{str(target)!r}]}} (CLI: --exclude SCOPE={target}).")


def _check_cpu_features(wanted, segment: str) -> None:
    """An iree:cpu vmfb uses every feature of the CPU it was compiled on (target-cpu=host); on a
    CPU without one of them it would die on an illegal instruction, so refuse it here."""
    if not wanted:
        return
    here = ic.cpu_features()
    if here is None:
        log.warning("segment %s: cannot list this CPU's features (iree-cpuinfo missing); loading an "
                    "iree:cpu module compiled elsewhere unchecked", segment)
        return
    missing = sorted(set(wanted) - here)
    if missing:
        raise irt.NotRunnableHere(
            f"segment {segment!r} was compiled by iree for a CPU with {', '.join(missing[:8])}"
            f"{' and more' if len(missing) > 8 else ''}, which this CPU lacks; running it would stop the "
            "process on an illegal instruction. Compile the model again on this machine")
