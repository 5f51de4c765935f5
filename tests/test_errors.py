"""Bad input gets a clear HetccError: what is wrong, where, and what to do."""
import logging

import pytest
import torch
from torch import nn

import hetcc
import mlp
from hetcc.errors import ExportError, HetccError, InputError, TargetError
from hetcc.torch_quirks import FAKE_TENSOR_LOGGER


@pytest.fixture(scope="module")
def compiled_mlp():
    model, (x,) = mlp.build(batch=4)
    return hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "torch:cpu"]), x


def test_wrong_input_count(compiled_mlp):
    cm, x = compiled_mlp
    with pytest.raises(InputError, match=r"signature \(x: float32\[4, 256\]\)"):
        cm(x, x)
    with pytest.raises(InputError, match="signature"):
        cm()


def test_wrong_shape_names_the_input_and_dimension(compiled_mlp):
    cm, x = compiled_mlp
    with pytest.raises(InputError, match=r"input 'x' dimension 1 is 255, expected 256"):
        cm(torch.randn(4, 255))
    with pytest.raises(InputError, match=r"input 'x' dimension 0 is 5.*dynamic_shapes"):
        cm(torch.randn(5, 256))
    with pytest.raises(InputError, match=r"input 'x' has 3 dimensions"):
        cm(torch.randn(1, 4, 256))


def test_wrong_dtype(compiled_mlp):
    cm, x = compiled_mlp
    with pytest.raises(InputError, match=r"input 'x' has dtype float64, expected float32"):
        cm(x.double())


def test_wrong_device(compiled_mlp):
    cm, x = compiled_mlp
    with pytest.raises(InputError, match=r"input 'x' is on meta.*\.cpu\(\)"):
        cm(torch.empty(4, 256, device="meta"))


def test_not_a_tensor(compiled_mlp):
    cm, _ = compiled_mlp
    with pytest.raises(InputError, match="signature"):
        cm([[1.0] * 256] * 4)


def test_dynamic_dim_out_of_range():
    model, (x,) = mlp.build(batch=4)
    batch = torch.export.Dim("batch", min=2, max=16)
    cm = hetcc.compile(model, (x,), targets=["torch:cpu"], dynamic_shapes=({0: batch},))
    cm(torch.randn(16, 256))
    with pytest.raises(InputError, match=r"dimension 0 is 17, outside the compiled range .* \[2, 16\]"):
        cm(torch.randn(17, 256))


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_unexportable_model_gets_one_paragraph():
    with pytest.raises(ExportError) as info:
        hetcc.compile(DataDependent(), (torch.randn(3),), targets=["torch:cpu"])
    msg = str(info.value)
    assert "data-dependent control flow" in msg and "torch.cond" in msg
    assert "test_errors.py" in msg  # points at the user's line
    assert len(msg.splitlines()) == 1


class ShortPositions(nn.Module):
    """A position table of 8 rows: a longer sequence fails in eager PyTorch as in torch.export."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(8, 4))
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("seen", None)

    def forward(self, x):
        self.calls += 1
        self.seen = x.clone()  # reassigned: the check puts the original object back
        x.mul_(2)  # the caller's tensor: the check runs on a copy
        self.register_buffer("extra", torch.ones(1))
        return x + self.pos


def test_inputs_the_model_itself_rejects_are_an_input_error():
    model = ShortPositions()
    seen = []  # what torch's fake-tensor logger emits (a handler on it sees them however torch propagates)
    catcher = logging.Handler()
    catcher.emit = seen.append
    logger = logging.getLogger(FAKE_TENSOR_LOGGER)
    logger.addHandler(catcher)
    try:
        x = torch.randn(16, 4)
        with pytest.raises(InputError) as info:
            hetcc.compile(model, (x,), targets=["torch:cpu"])
    finally:
        logger.removeHandler(catcher)
    msg = str(info.value)
    assert "fails on the example inputs when PyTorch runs it as it is" in msg
    assert "must match the size of tensor b (8)" in msg  # torch's own words
    assert "test_errors.py" in msg and "(in forward)" in msg  # the model's line, not torch's
    assert len(msg.splitlines()) == 1 and msg.endswith(".")
    assert isinstance(info.value.__cause__, RuntimeError)  # the eager failure, with its traceback
    assert not seen and not logger.filters  # torch's forty-line log stayed off, and nothing is left behind
    assert model.calls.item() == 0 and model.seen is None  # the eager check left the model as it was
    assert not hasattr(model, "extra")


def test_the_eager_check_runs_on_a_copy_of_the_inputs():
    x = torch.randn(16, 4)
    before = x.clone()
    with pytest.raises(InputError):
        hetcc.compile(ShortPositions(), (x,), targets=["torch:cpu"])
    assert torch.equal(x, before)  # the eager check doubled a copy, not the caller's tensor


def test_a_wrong_keyword_is_an_input_error_without_a_line_of_hetcc():
    with pytest.raises(InputError) as info:
        hetcc.compile(nn.Linear(4, 4), {"inputs": torch.randn(2, 4)}, targets=["torch:cpu"])
    msg = str(info.value)
    assert "unexpected keyword argument 'inputs'" in msg
    assert "hetcc" + "/" not in msg.replace("hetcc.compile", "")  # no frame of hetcc's own named


def test_a_model_on_the_meta_device_keeps_the_export_explanation():
    with torch.device("meta"):
        model = DataDependent()
    with pytest.raises(ExportError, match="data-dependent control flow"):
        hetcc.compile(model, (torch.randn(3, device="meta"),), targets=["torch:cpu"])


def test_not_a_module():
    with pytest.raises(ExportError, match="expects a torch.nn.Module"):
        hetcc.compile(lambda x: x, (torch.randn(3),))


@pytest.mark.parametrize("target,pattern", [
    ("nosuch:cpu", r"unknown backend 'nosuch'. Installed backends: .*onnxruntime.*Usable here: .*torch:cpu"),
    ("openvino:rocm:0", r"does not drive device 'rocm'.*Usable here"),
    ("torch", r"expected 'backend:device\[:index\]\[@precision\]'"),
])
def test_bad_targets_list_what_is_available(target, pattern):
    with pytest.raises(TargetError, match=pattern):
        hetcc.compile(nn.Linear(2, 2), (torch.randn(1, 2),), targets=[target])


def test_unknown_objective():
    with pytest.raises(HetccError, match="objective 'cheapest' is not supported"):
        hetcc.compile(nn.Linear(2, 2), (torch.randn(1, 2),), objective="cheapest")


def test_pin_to_unlisted_target_and_unknown_scope():
    model, inputs = mlp.build(batch=2)
    with pytest.raises(TargetError, match="not among the targets"):
        hetcc.compile(model, inputs, targets=["torch:cpu"], pins={"net.0": "openvino:cpu"})
    with pytest.raises(TargetError, match="neither a submodule nor a node.*net.0"):
        hetcc.compile(model, inputs, targets=["torch:cpu"], pins={"decoder": "torch:cpu"})


def test_backend_options_reach_the_backend_and_bad_ones_are_named():
    model, inputs = mlp.build(batch=2)
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu"],
                       backend_options={"openvino": {"precision": "fp32"}})
    assert all(a.meta.get("precision") == "fp32" for a in cm.artifacts.values() if a.target == "openvino:cpu")
    with pytest.raises(TargetError, match="bad options for backend 'openvino': it has no option 'colour'; "
                                          "it takes precision"):
        hetcc.compile(model, inputs, targets=["openvino:cpu"], backend_options={"openvino": {"colour": 1}})
    with pytest.raises(TargetError, match="precision must be one of fp32, fp16, bf16, int8w, int8w-bf16, int8s, got 'f8'"):
        hetcc.compile(model, inputs, targets=["openvino:cpu"], backend_options={"openvino": {"precision": "f8"}})


def test_model_that_fails_on_its_example_inputs_names_the_node_and_line():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 4)

        def forward(self, ids):
            return self.table(ids) * 2

    # export traces fine (it does not check indices); the reference run finds the bad id
    with pytest.raises(hetcc.errors.InputError) as err:
        hetcc.compile(Lookup(), (torch.tensor([[3, 12]]),), ["torch:cpu"])
    text = str(err.value)
    assert "submodule table (Embedding)" in text and "test_errors.py" in text
    assert "IndexError" in text and "example inputs" in text
