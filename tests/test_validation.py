"""Validation batches (compile(validation=...), hetcc/validation.py): the accuracy budget holds on
inputs besides the example ones, where what was chosen on the examples alone (which nodes stay
fp32) misses it."""
from __future__ import annotations

import json
import re

import pytest
import torch

import hetcc
from hetcc.cli.app import main
from hetcc.error_budget import relative_error
from hetcc.errors import HetccError, InputError
from test_precision import OutlierFirst  # six layers, the first reading a few huge inputs

pytest.importorskip("onnxruntime")
BUDGET = 0.02


def _case():
    """OutlierFirst with plain example inputs, and a batch whose first columns are 400x larger:
    dynamic int8 quantizes the first layer's activations with one scale, so on that batch the
    first layer moves the outputs far more than on the example."""
    torch.manual_seed(0)
    model = OutlierFirst(width=256).eval()
    g = torch.Generator().manual_seed(1)
    example = torch.randn(64, 256, generator=g)
    outliers = torch.randn(64, 256, generator=g)
    outliers[:, :4] *= 400.0
    return model, (example,), (outliers,)


def _error(cm, model, inputs) -> float:
    with torch.no_grad():
        return float(relative_error(cm(*inputs), model(*inputs)))


def _compile(model, example, **kwargs):
    # int8 alone: without VNNI onnxruntime:cpu also offers int8u, which would change the plan
    return hetcc.compile(model, example, targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=BUDGET,
                         tune="off", precisions=["int8"], **kwargs)


def test_validation_batches_hold_the_budget_where_the_example_inputs_alone_do_not():
    model, example, outliers = _case()
    alone = _compile(model, example)
    assert [str(s.target) for s in alone.plan.segments] == ["onnxruntime:cpu@int8"]
    assert _error(alone, model, example) <= BUDGET < _error(alone, model, outliers)

    cm = _compile(model, example, validation=[outliers])
    got = _error(cm, model, outliers)
    assert got <= BUDGET and _error(cm, model, example) <= BUDGET
    accuracy = cm.plan.accuracy
    assert accuracy["validation_batches"] == 1
    # what the whole-model check measured on the batch is what the caller sees
    assert accuracy["measured_validation"] == pytest.approx(got, rel=1e-4)
    summary = cm.plan.summary()
    assert re.search(r"the whole model: [0-9.]+ on the example inputs, [0-9.]+ at worst on 1 validation batch\b",
                     summary), summary
    assert "to hold its accuracy limit (the worst over the example inputs and 1 validation batch)" in summary
    # int8 kept where it holds: the first layer, which reads the outliers, went back to fp32 (on
    # the example alone every layer stayed int8)
    (artifact,) = [a for a in cm.artifacts.values() if a.target == "onnxruntime:cpu@int8"]
    assert artifact.meta["kept_fp32"]["where"] == ["layers.0"]
    assert not any(a.meta.get("kept_fp32") for a in alone.artifacts.values())


def test_a_segment_beyond_its_limit_on_a_batch_says_which():
    from hetcc.backends import onnx_sensitivity

    model, example, outliers = _case()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_sensitivity, "MOST_KEPT", 0.0)  # no node may stay fp32 inside the segment
        cm = _compile(model, example, validation=[outliers])
    notes = " ".join(cm.plan.notes)
    assert "on validation batch 0: output" in notes, notes
    assert _error(cm, model, outliers) <= BUDGET


def test_the_plan_keeps_its_validation_figures_in_a_bundle(tmp_path):
    model, example, outliers = _case()
    cm = _compile(model, example, validation=[outliers, example])
    cm.save(tmp_path / "b")
    loaded = hetcc.load(tmp_path / "b")
    assert loaded.plan.accuracy["validation_batches"] == 2
    assert loaded.plan.accuracy["measured_validation"] == pytest.approx(cm.plan.accuracy["measured_validation"])
    assert "at worst on 2 validation batches" in loaded.plan.summary()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"accuracy": None}, HetccError, r"validation= \(CLI --validation\) holds the accuracy budget"),
    ({"validation": []}, InputError, r"validation is an empty list: .*checked on the example inputs alone"),
    ({"validation": torch.randn(4, 256)}, InputError, r"validation must be a list of input batches"),
    ({"validation": [(torch.randn(8, 256),)]}, InputError,
     r"validation batch 0: input 'x' has shape \(8, 256\), the example input \(64, 256\)"),
    ({"validation": [(torch.randn(64, 256, dtype=torch.float64),)]}, InputError,
     r"validation batch 0: input 'x' is torch.float64"),
])
def test_bad_validation_batches_say_what_is_wrong(kwargs, error, message):
    model, example, _ = _case()
    given = {"accuracy": BUDGET, "validation": [example], **kwargs}
    with pytest.raises(error, match=message):
        hetcc.compile(model, example, targets=["onnxruntime:cpu"], tune="off", **given)


MODEL_FILE = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    return model, (torch.randn(16, 32),)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 32, generator=g),) for _ in range(3)]
'''


def test_cli_compile_takes_validation_batches_from_a_function(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    out = tmp_path / "net.bundle"
    code = main(["compile", f"{path}:build", "--targets", "onnxruntime:cpu", "--accuracy", "0.05",
                 "--validation", f"{path}:batches", "--tune", "off", "--json", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    accuracy = json.loads(captured.out)["plan"]["accuracy"]
    assert accuracy["validation_batches"] == 3 and 0 <= accuracy["measured_validation"] <= 0.05
    code = main(["compile", f"{path}:build", "--targets", "onnxruntime:cpu", "--accuracy", "0.05",
                 "--validation", f"{path}:missing", "-o", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code != 0 and re.search("has no function 'missing' for --validation", err), err


def test_the_whole_model_is_checked_on_each_batch_too(monkeypatch):
    from hetcc.validation import ValidationBatches

    # segments that see the example inputs alone: the stitched model's check on the batch still
    # holds the budget, and says where it broke
    monkeypatch.setattr(ValidationBatches, "for_segment", lambda self, inputs, outputs: ())
    model, example, outliers = _case()
    cm = _compile(model, example, validation=[example, outliers])
    assert _error(cm, model, outliers) <= BUDGET
    (dropped, *_) = cm.plan.accuracy["dropped"]
    assert dropped["on"] == "validation batch 1" and dropped["measured"] > BUDGET
    assert any("was" in n and "on validation batch 1, beyond the budget" in n for n in cm.plan.notes)


class Counting(torch.nn.Module):
    """Updates a buffer from a value nothing else reads: a segment output only for the state."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)
        self.register_buffer("seen", torch.zeros(64))

    def forward(self, x):
        h = self.a(x)
        self.seen.copy_(h.mean(0))
        return self.b(torch.relu(h))


def test_a_model_that_updates_its_state_is_validated():
    torch.manual_seed(0)
    model = Counting().eval()
    batches = [(torch.randn(16, 64),) for _ in range(2)]
    cm = _compile(model, (torch.randn(16, 64),), validation=batches)
    assert [str(s.target) for s in cm.plan.segments] == ["onnxruntime:cpu@int8"]
    assert cm.plan.accuracy["validation_batches"] == 2 and cm.plan.accuracy["measured_validation"] <= BUDGET


@pytest.mark.parametrize("failing, error", [("int8", RuntimeError), ("fp32", RuntimeError), ("fp32", InputError)])
def test_a_runtime_that_fails_on_a_batch_gives_its_part_up(monkeypatch, failing, error):
    from torch.export import Dim

    from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend

    loaded = OnnxRuntimeBackend.load

    def load(self, artifact, target):  # a runtime that runs batches of 16 rows only
        if failing == "fp32" and target.precision is not None:
            raise RuntimeError("no int8 here")  # the plan's segment is fp32: the whole model's check finds it
        run = loaded(self, artifact, target)
        if (target.precision is not None) != (failing == "int8"):
            return run

        def call(*inputs):
            if inputs[0].shape[0] != 16:  # a vendor's error, or hetcc's own as TensorRT's backend raises
                raise error(f"cannot run {inputs[0].shape[0]} rows")
            return run(*inputs)
        return call
    monkeypatch.setattr(OnnxRuntimeBackend, "load", load)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    targets = ["onnxruntime:cpu@int8"] if failing == "int8" else ["onnxruntime:cpu"]
    cm = hetcc.compile(model, (torch.randn(16, 64),), targets=targets, accuracy=0.05, tune="off",
                       validation=[(torch.randn(16, 64),), (torch.randn(4, 64),)],
                       dynamic_shapes=({0: Dim("rows", min=1, max=64)},))
    # the part that failed runs on torch:cpu, and the plan says which batch it failed on
    assert {str(s.target) for s in cm.plan.segments} == {"torch:cpu"}
    said = " ".join([*cm.plan.notes, *(why for s in cm.plan.segments for why in s.fell_back.values())])
    assert f"on validation batch 1: {error.__name__}: cannot run 4 rows" in said, said
    x = torch.randn(4, 64)
    assert torch.allclose(cm(x), model(x), atol=1e-5)
