"""The MLIR stage (backends/mlir_import.py) on the real torch-mlir: a program lowers to each dialect
it claims, the lowerings that torch-mlir 20261001 cannot do fail with its diagnostics, weights
arrive bit for bit, and a consumer other than IREE gets the MLIR without loading anything of IREE.
tests/test_iree_backend.py checks that IREE compiles what the stage writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from hetcc.backends import mlir_import


class _Small(nn.Module):
    """matmul, bias, activation, reduction: something every dialect has."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.fc(x)).softmax(-1)


class _OneOp(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _export(model, *args):
    return torch.export.export(model.eval(), args).run_decompositions()


def _dialects_of(module) -> set[str]:
    """The dialects of the ops inside the module's functions."""
    found = set()

    def visit(op):
        found.add(op.name.split(".")[0])
        from torch_mlir.ir import WalkResult

        return WalkResult.ADVANCE

    for func in module.body.operations:
        func.operation.walk(visit)
    return found - {"func", "builtin"}


@pytest.fixture(scope="module")
def small():
    return _export(_Small(), torch.randn(2, 8))


# What the lowered program is written in: the dialect's own ops, and no torch ops left over.
# (arith/tensor ops sit beside linalg, tosa and stablehlo for constants and shapes.)
EXPECTED = {
    "torch": ("torch", {"linalg", "tosa", "stablehlo"}),
    "torch-backend": ("torch", {"linalg", "tosa", "stablehlo"}),
    "linalg-on-tensors": ("linalg", {"torch"}),
    "tosa": ("tosa", {"torch"}),
    "stablehlo": ("stablehlo", {"torch"}),
}


def test_every_dialect_is_checked():
    assert set(EXPECTED) == set(mlir_import.DIALECTS)


@pytest.mark.parametrize("dialect", mlir_import.DIALECTS)
def test_a_small_program_lowers_to_each_dialect(small, dialect, tmp_path):
    module = mlir_import.import_module(small, dialect)
    has, lacks = EXPECTED[dialect]
    dialects = _dialects_of(module)
    assert has in dialects and not dialects & lacks, dialects
    # the file a consumer gets: bytecode, which reads back to the same module
    path = mlir_import.import_program(small, tmp_path / "m.mlirbc", dialect)
    assert path.read_bytes()[:4] == b"ML\xefR"  # MLIR bytecode's magic number
    from torch_mlir import ir

    with mlir_import._context():
        again = ir.Module.parse(path.read_bytes())
        assert str(again) == str(module)


def test_torch_backend_is_the_importers_torch_refined(small):
    """torch is what the importer emits; torch-backend has been through torch-mlir's
    decompositions (addmm becomes mm and add there, softmax its exp, sum and div)."""
    raw = str(mlir_import.import_module(small, "torch"))
    backend = str(mlir_import.import_module(small, "torch-backend"))
    assert "torch.aten.addmm" in raw and "torch.aten._softmax" in raw
    assert "torch.aten.addmm" not in backend and "torch.aten._softmax" not in backend
    assert "torch.aten.mm" in backend and "torch.aten.exp" in backend


F = nn.functional
DOES_NOT_LOWER = {
    # (case, dialect): (program, inputs, the op torch-mlir 20261001 names in its error)
    ("interpolate_nearest", "tosa"): (lambda x: F.interpolate(x, scale_factor=2), (torch.randn(1, 2, 4, 4),),
                                      "torch.aten.__interpolate"),
    ("interpolate_nearest", "stablehlo"): (lambda x: F.interpolate(x, scale_factor=2),
                                           (torch.randn(1, 2, 4, 4),), "torch.constant.float"),
    ("scatter_add", "tosa"): (lambda x, i, s: x.scatter_add(0, i, s),
                              (torch.zeros(4, 3), torch.tensor([[0, 1, 2], [3, 0, 1]]), torch.randn(2, 3)),
                              "torch.aten.scatter_add"),
    ("fmod_scalar", "linalg-on-tensors"): (lambda x: torch.fmod(x, 0.7), (torch.randn(4, 8),),
                                           "torch.constant.float"),
}
"""Lowerings torch-mlir 20261001 fails (docs/iree.md lists them). When an upgrade lowers one, its
test fails and the entry (and the docs) should change."""


@pytest.mark.parametrize("case, dialect", sorted(DOES_NOT_LOWER))
def test_what_does_not_lower_fails_with_torch_mlirs_diagnostics(case, dialect):
    fn, args, op = DOES_NOT_LOWER[case, dialect]
    program = _export(_OneOp(fn), *args)
    mlir_import.import_module(program, "torch")  # the import itself is fine
    with pytest.raises(mlir_import.MlirImportError) as err:
        mlir_import.import_module(program, dialect)
    message = str(err.value)
    assert message.startswith(f"torch-mlir could not lower the program to {dialect}: ")
    assert f"failed to legalize operation '{op}" in message, message
    assert err.value.dialect == dialect and err.value.pipeline


def test_an_unknown_dialect_is_refused_with_the_ones_there_are(small):
    with pytest.raises(ValueError, match="linalg-on-tensors, tosa, stablehlo"):
        mlir_import.import_module(small, "spirv")


def test_weights_arrive_bit_for_bit_as_the_importer_would_write_them():
    """The stage reads each weight's bytes (torch-mlir's importer goes element by element, 30x
    slower on big weights): the MLIR must be what the importer alone writes, for every dtype that
    reaches it."""
    from torch_mlir.extras.fx_importer import FxImporter

    class Zoo(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.register_buffer("f32", torch.randn(3, 5, generator=g))
            self.register_buffer("f16", torch.randn(4, generator=g).half())
            self.register_buffer("bf16", torch.randn(4, generator=g).bfloat16())
            self.register_buffer("f64", torch.randn(2, 2, generator=g).double())
            self.register_buffer("i64", torch.arange(6).view(2, 3))
            self.register_buffer("i8", torch.tensor([-3, 7, 1], dtype=torch.int8))
            self.register_buffer("flags", torch.tensor([True, False, True]))
            self.register_buffer("strided", torch.randn(5, 3, generator=g).t())  # not contiguous
            self.register_buffer("one", torch.tensor([2.5]))

        def forward(self, x):
            return (x @ self.f32 + self.strided[0].sum() + self.one, self.f16 * 2, self.bf16 * 2,
                    self.f64 * 2, self.i64 + 1, self.i8 + 1, self.flags & (x[0, :3] > 0))

    program = torch.export.export(Zoo(), (torch.randn(2, 3),))
    ours = str(mlir_import.import_module(program, "torch"))
    theirs = FxImporter(context=mlir_import._context())
    theirs.import_program(program, func_name="main")
    assert ours == str(theirs.module)
    assert "torch_tensor_3_5_torch.float32" in ours  # the weights are there, as resources


def test_op_supported_answers_with_reasons():
    aten = torch.ops.aten
    assert mlir_import.op_supported(aten.mm.default) is None
    assert mlir_import.torch_op_name(aten.mm.default) == "torch.aten.mm"
    assert "no op in torch-mlir's torch dialect" in mlir_import.op_supported(aten._cdist_forward.default)
    assert "not an ATen op" in mlir_import.op_supported(len)


def test_a_failure_has_a_readable_copy_without_the_weights(tmp_path):
    model = nn.Linear(256, 256)
    path = mlir_import.import_program(_export(model, torch.randn(2, 256)), tmp_path / "m.mlirbc")
    text = mlir_import.readable_copy(path, tmp_path / "m.mlir").read_text()
    assert "func.func @main" in text and "torch.aten.addmm" in text
    assert len(text) < path.stat().st_size / 20  # 256 KB of weights elided
    (tmp_path / "junk.mlirbc").write_bytes(b"not mlir")
    assert mlir_import.readable_copy(tmp_path / "junk.mlirbc", tmp_path / "junk.mlir") is None


def test_versions_name_the_torch_mlir_release():
    import importlib.metadata

    assert mlir_import.versions() == {"torch-mlir": importlib.metadata.version("torch-mlir")}


SECOND_CONSUMER = r"""
import json, sys
import torch
from hetcc.backends import mlir_import

class Consumer:
    '''A stand-in for a second MLIR backend: it takes linalg-on-tensors and reads the ops.'''
    dialect = "linalg-on-tensors"

    def lower(self, exported, path):
        module = mlir_import.import_module(exported, self.dialect)
        mlir_import.import_program(exported, path, self.dialect)
        return sorted({op.name for op in module.body.operations[0].regions[0].blocks[0].operations})

model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
ep = torch.export.export(model, (torch.randn(2, 4),))
ops = Consumer().lower(ep, sys.argv[1])
print(json.dumps({"ops": ops, "loaded": sorted(m for m in sys.modules
                                              if m.split(".")[0] == "iree" or ".iree" in m)}))
"""


def test_a_second_consumer_gets_the_mlir_without_loading_iree(tmp_path):
    done = subprocess.run([sys.executable, "-c", SECOND_CONSUMER, str(tmp_path / "m.mlirbc")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], "the MLIR stage loaded IREE modules"
    assert "linalg.generic" in report["ops"] or any(op.startswith("linalg.") for op in report["ops"]), report
    assert (tmp_path / "m.mlirbc").stat().st_size > 0
