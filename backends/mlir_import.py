"""The MLIR stage: a segment's ExportedProgram -> MLIR, on the torch-mlir package (PyPI ``torch-mlir``).

Any backend that compiles MLIR takes its input from here; the stage knows nothing of its consumers
(IREE is one: backends/iree_compile.py), so a second one plugs in without touching the first.

Dialects (``DIALECTS``), each a step further down torch-mlir's own pipelines:

- ``torch``: what torch-mlir's FX importer emits, ops in the torch dialect, value semantics for
  what the program does not mutate. IREE's ``--iree-input-type=torch`` is built for this.
- ``torch-backend``: torch-mlir's "backend contract", the torch dialect after its decompositions
  and shape and dtype refinement (torch-mlir calls this output type TORCH).
- ``linalg-on-tensors``, ``tosa``, ``stablehlo``: the backend contract lowered to that dialect.
  Not every op lowers to every dialect; a program that does not raises MlirImportError with
  torch-mlir's diagnostics. docs/iree.md lists what was seen to fail.

The output is MLIR bytecode with the weights inside (as resources), so the file alone reproduces
whatever a consumer does with it. Bytecode rather than text: a consumer built on another LLVM
commit (iree-compile 3.13) reads torch-mlir 20261001's bytecode, but not all of its textual
assembly (TOSA's ``tosa.const_shape`` syntax differs between the two).
"""
from __future__ import annotations

import importlib.metadata
import logging
from functools import lru_cache
from pathlib import Path

from hetcc.errors import clip

log = logging.getLogger(__name__)

INSTALL = "pip install torch-mlir"

DIALECTS = ("torch", "torch-backend", "linalg-on-tensors", "tosa", "stablehlo")

# torch-mlir's own pipelines for each output type (torch_mlir/fx.py and compiler_utils.py), run
# here with our own pass manager: torch-mlir's runner writes a reproducer into the temp directory
# and prints diagnostics to the process's stderr, where a library must not.
_TO_BACKEND = ("builtin.module(func.func(torch-match-quantized-custom-ops), "
               "torchdynamo-export-to-torch-backend-pipeline)")
_FROM_BACKEND = {
    "linalg-on-tensors": "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=true})",
    "tosa": "builtin.module(torch-backend-to-tosa-backend-pipeline)",
    "stablehlo": "builtin.module(torch-backend-to-stablehlo-backend-pipeline{allow-non-finites=true})",
}


class MlirImportError(Exception):
    """torch-mlir could not import a program, or could not lower it to the dialect asked for."""

    def __init__(self, message: str, dialect: str, pipeline: str | None = None):
        self.dialect = dialect
        self.pipeline = pipeline
        super().__init__(message)


# ---- availability ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def problem() -> str | None:
    """None when torch-mlir is importable, else what is missing and how to install it."""
    try:
        from torch_mlir import ir  # noqa: F401
        from torch_mlir.dialects import torch as _torch_dialect  # noqa: F401
        from torch_mlir.extras import fx_importer  # noqa: F401
    except Exception as exc:
        return (f"torch-mlir, which turns a segment into MLIR, is not importable ({type(exc).__name__}: "
                f"{exc}); install it with: {INSTALL}")
    return None


def versions() -> dict[str, str]:
    """The torch-mlir release that made the MLIR (recorded beside what a consumer builds from it)."""
    try:
        return {"torch-mlir": importlib.metadata.version("torch-mlir")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def _context():
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_dialect

    context = ir.Context()
    # a bare torch_mlir Context knows the upstream dialects (linalg, tosa) but not the torch ops,
    # nor stablehlo, which reading back a stablehlo file needs (lowering to it loads it itself)
    torch_dialect.register_dialect(context)
    try:
        from torch_mlir._mlir_libs import _stablehlo

        _stablehlo.register_dialect(context)
    except Exception as exc:  # a torch-mlir build without StableHLO: the other dialects still work
        log.debug("no StableHLO dialect in this torch-mlir: %s", exc)
    return context


# ---- capability --------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _op_context():
    return _context()


@lru_cache(maxsize=4096)
def torch_op_name(op) -> str | None:
    """The torch-dialect op the importer emits for an ATen OpOverload, if the dialect defines one;
    None when it would emit a generic ``torch.operator``, which no lowering in torch-mlir or IREE
    accepts."""
    from torch_mlir.extras import fx_importer as fx

    name = fx._get_mlir_op_name_for_schema(op._schema)
    # The importer swaps some Tensor overloads for their Scalar ones; either name can be emitted.
    candidates = [name, getattr(fx, "TENSOR_SCALAR_OP_CONVERTER", {}).get(name)]
    context = _op_context()
    for candidate in candidates:
        if candidate and context.is_registered_operation(candidate):
            return candidate
    return None


def op_supported(op) -> str | None:
    """None when the stage imports ``op`` (an ATen OpOverload) as a torch-dialect op, else why not."""
    if problem():
        return problem()
    import torch

    from hetcc.names import op_name

    if not isinstance(op, torch._ops.OpOverload):
        return f"{op_name(op)} is not an ATen op; torch-mlir's FX importer takes ATen ops"
    if torch_op_name(op) is None:
        return f"{op_name(op)} has no op in torch-mlir's torch dialect"
    return None


# ---- import ------------------------------------------------------------------------------------

def import_module(exported, dialect: str = "torch"):
    """The ExportedProgram as a torch-mlir ``ir.Module`` in ``dialect`` (one of DIALECTS), in a
    context of its own. MlirImportError when torch-mlir is missing or the program does not lower."""
    if dialect not in DIALECTS:
        raise ValueError(f"dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    if problem():
        raise MlirImportError(problem(), dialect)
    from torch_mlir.extras.fx_importer import FxImporter

    importer = FxImporter(context=_context(), hooks=_fast_literals())
    try:
        importer.import_program(exported, func_name="main")
    except Exception as exc:
        raise MlirImportError(f"torch-mlir's FX importer failed: {type(exc).__name__}: {exc}", dialect) from exc
    module = importer.module
    if dialect != "torch":
        _run(module, _TO_BACKEND, dialect)
    if dialect in _FROM_BACKEND:
        _run(module, _FROM_BACKEND[dialect], dialect)
    return module


def import_program(exported, path: Path, dialect: str = "torch") -> Path:
    """The ExportedProgram as MLIR bytecode in ``dialect`` at ``path``, weights inlined."""
    module = import_module(exported, dialect)
    with open(path, "wb") as f:
        module.operation.write_bytecode(f)
    return Path(path)


def readable_copy(bytecode: Path, path: Path) -> Path | None:
    """A text copy of an MLIR bytecode file with the weight data elided, for reading a failure
    (the bytecode file, with the weights, is what reproduces it); None if it cannot be made."""
    try:
        from torch_mlir import ir

        with _context():
            module = ir.Module.parse(Path(bytecode).read_bytes())
            path.write_text(module.operation.get_asm(large_elements_limit=16, large_resource_limit=16))
        return path
    except Exception as exc:  # reading aid only: the failure report must not fail
        log.debug("no readable MLIR copy of %s: %s", bytecode, exc)
        return None


def _run(module, pipeline: str, dialect: str) -> None:
    from torch_mlir.ir import MLIRError
    from torch_mlir.passmanager import PassManager

    with module.context:
        try:
            PassManager.parse(pipeline).run(module.operation)
        except MLIRError as exc:
            # its message holds the diagnostics, with locations and notes; a note can echo an op
            # with a large constant, so long lines are clipped (saying so)
            said = "\n".join(clip(line, 400) for line in str(exc).splitlines())
            raise MlirImportError(f"torch-mlir could not lower the program to {dialect}: {said}",
                                  dialect, pipeline) from None


def _fast_literals():
    """Importer hooks that turn a weight into an MLIR constant from its bytes. torch-mlir 20261001
    goes through ``tensor.tolist()``, a Python object per element: 3.8 s instead of 0.27 s for the
    123 MB of weights in examples/mixed.py (benchmarks/bench_mlir_import.py). IREE's vendored copy
    of the importer reads the bytes the same way as here."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch_mlir.extras import fx_importer as fx
    from torch_mlir.ir import DenseResourceElementsAttr, Operation

    class FastLiterals(fx.FxImporterHooks):
        def __init__(self):
            self._attrs = {}  # id(tensor) -> (tensor, attribute): one constant per tensor, kept alive

        def resolve_literal(self, gni, literal, info):
            if not (isinstance(literal, torch.Tensor) and not isinstance(literal, FakeTensor)
                    and not literal.is_meta and literal.layout == torch.strided
                    and literal.dtype in fx.TORCH_DTYPE_TO_NPY_TYPE and literal.numel() > 1
                    and all(type(d) is int for d in literal.shape)):
                return None  # splats, fakes and odd dtypes: the importer's own conversion
            hit = self._attrs.get(id(literal))
            if hit is None:
                data = (literal.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
                        .view(torch.uint8).numpy().copy())  # a copy: the constant outlives the tensor
                name = f"torch_tensor_{'_'.join(map(str, literal.shape))}_{literal.dtype}"
                # the typed view gives the buffer the element's alignment, as the importer's own path
                attr = DenseResourceElementsAttr.get_from_buffer(
                    data.view(fx.TORCH_DTYPE_TO_NPY_TYPE[literal.dtype]), name, fx.create_mlir_tensor_type(literal))
                hit = self._attrs[id(literal)] = (literal, attr)
            return Operation.create(name="torch.vtensor.literal",
                                    results=[gni._cc.tensor_to_vtensor_type(literal)],
                                    attributes={"value": hit[1]}).result

    return FastLiterals()
