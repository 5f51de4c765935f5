"""Static int8 with calibration batches (onnxruntime:cpu@int8s): activation scales fixed from the
batches the user gives, checked against the accuracy budget like every lower precision."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hetcc
from hetcc.calibration_batches import CalibrationBatches
from hetcc.capture import capture
from hetcc.cli.app import main
from hetcc.errors import HetccError, InputError

ORT = ["onnxruntime:cpu", "torch:cpu"]


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def convnet():
    torch.manual_seed(0)
    return ConvNet().eval(), (torch.randn(2, 3, 8, 8),)


def batches(n=3, scale=1.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(2, 3, 8, 8, generator=g),) for _ in range(n)]


def onnx_of(compiled):
    (artifact,) = compiled.artifacts.values()
    return onnx.load(artifact.files["model"])


def input_scale(model: onnx.ModelProto) -> float:
    """The scale of the QuantizeLinear that reads the graph's input (what calibration fixed)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    first = model.graph.input[0].name
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first]
    return float(inits[q.input[1]])


def test_a_conv_model_runs_in_static_int8_within_the_budget():
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ORT, accuracy=0.05, precisions=["int8s"], calibration=batches(),
                       tune="off")
    assert [str(s.target) for s in cm.plan.segments] == ["onnxruntime:cpu@int8s"]
    ops = {n.op_type for n in onnx_of(cm).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ around the convolutions
    with torch.no_grad():
        want = model(*inputs)
    got = cm(*inputs)
    error = float((got - want).norm() / want.norm())
    assert 0 < error <= 0.05  # int8 moved the outputs, within the budget
    assert cm.plan.accuracy["measured"] == pytest.approx(error, rel=1e-4)


def test_the_scales_come_from_the_batches_and_the_example_inputs():
    model, inputs = convnet()
    narrow = hetcc.compile(model, inputs, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.5,
                           calibration=batches(scale=0.1), tune="off")
    wide = hetcc.compile(model, inputs, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.5,
                         calibration=batches(scale=10.0), tune="off")
    example = float(inputs[0].abs().max())
    # min-max over the batches and the example inputs: narrow batches leave the example's range
    # (uint8 over [min, max] of the input), batches 10x wider widen it
    assert input_scale(onnx_of(narrow)) == pytest.approx(
        (float(inputs[0].max()) - min(float(inputs[0].min()), 0.0)) / 255, rel=0.02)
    assert input_scale(onnx_of(wide)) > 5 * input_scale(onnx_of(narrow))
    assert input_scale(onnx_of(narrow)) < 2 * example / 255 + 1e-6


def test_a_segment_in_the_middle_calibrates_on_the_values_it_reads():
    model, inputs = convnet()
    captured = capture(model, inputs)
    given = batches(2)
    calibration = CalibrationBatches(captured, given)
    assert len(calibration) == 3  # the example inputs, then the user's batches
    relu = [n.name for n in captured.graph.nodes if n.op == "call_function" and "relu" in str(n.target)]
    (first, second, third) = calibration.for_segment([relu[0]])
    with torch.no_grad():
        torch.testing.assert_close(first[0], model.features[:2](inputs[0]))
        torch.testing.assert_close(second[0], model.features[:2](given[0][0]))
        torch.testing.assert_close(third[0], model.features[:2](given[1][0]))


def test_a_split_plan_calibrates_its_int8s_part_on_intermediate_values():
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05,
                       calibration=batches(), tune="off",
                       pins={"features.0": "torch:cpu", "features.2": "onnxruntime:cpu@int8s"})
    targets = [str(s.target) for s in cm.plan.segments]
    assert targets[0] == "torch:cpu" and "onnxruntime:cpu@int8s" in targets
    with torch.no_grad():
        want = model(*inputs)
    assert float((cm(*inputs) - want).norm() / want.norm()) <= 0.05


def test_a_bundle_in_static_int8_loads_and_gives_the_same_outputs(tmp_path):
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ORT, accuracy=0.05, precisions=["int8s"], calibration=batches(),
                       tune="off")
    loaded = hetcc.load(cm.save(tmp_path / "int8s.bundle"))
    assert [str(s.target) for s in loaded.plan.segments] == ["onnxruntime:cpu@int8s"]
    torch.testing.assert_close(loaded(*inputs), cm(*inputs))


@pytest.mark.parametrize("options, message", [
    ({"accuracy": 0.05, "targets": ["onnxruntime:cpu@int8s"]}, "give calibration="),
    ({"accuracy": 0.05, "precisions": ["int8s"]}, "give calibration=.* too"),
    ({"calibration": "batches"}, "give an accuracy budget too"),
    ({"accuracy": 0.05, "calibration": "batches", "targets": ["openvino:cpu", "torch:cpu"]},
     "none of the targets runs here .onnxruntime:cpu does"),
    ({"accuracy": 0.05, "calibration": "batches", "precisions": ["int8"]}, "precisions= leaves out: add int8s"),
])
def test_static_int8_asked_for_without_what_it_needs_says_what_to_add(options, message):
    model, inputs = convnet()
    options = dict(options)
    if options.get("calibration") == "batches":
        options["calibration"] = batches()
    targets = options.pop("targets", ORT)
    with pytest.raises(HetccError, match=message):
        hetcc.compile(model, inputs, targets, tune="off", **options)


@pytest.mark.parametrize("given, message", [
    ([], "calibration is an empty list"),
    (torch.randn(2, 3, 8, 8), "must be a list of input batches"),
    ([(torch.randn(4, 3, 8, 8),)], r"batch 0: input x has shape \(4, 3, 8, 8\), the example input \(2, 3, 8, 8\)"),
    ([(torch.randn(2, 3, 8, 8),), (torch.randn(2, 3, 8, 8, dtype=torch.float64),)],
     "batch 1: input x is torch.float64, the example input torch.float32"),
    ([(torch.randn(2, 3, 8, 8), torch.randn(2))], "batch 0: expected 1 tensor inputs, got 2"),
])
def test_bad_calibration_batches_are_named(given, message):
    model, inputs = convnet()
    with pytest.raises(InputError, match=message):
        hetcc.compile(model, inputs, ORT, accuracy=0.05, calibration=given, tune="off")


MODEL_FILE = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    return net, (torch.randn(1, 3, 8, 8),)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 3, 8, 8, generator=g),) for _ in range(4)]


def not_a_list():
    return 3
'''


def test_cli_compile_takes_calibration_batches_from_a_function(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    out = tmp_path / "net.bundle"
    code = main(["compile", f"{path}:build", "--targets", "onnxruntime:cpu", "--accuracy", "0.05",
                 "--precisions", "int8s", "--calibration", f"{path}:batches", "--tune", "off", "--json",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    plan = json.loads(captured.out)["plan"]
    assert [s["target"] for s in plan["segments"]] == ["onnxruntime:cpu@int8s"]
    loaded = hetcc.load(out)
    x = torch.randn(1, 3, 8, 8)
    assert np.isfinite(loaded(x).numpy()).all()


@pytest.mark.parametrize("spec, message", [
    ("{path}:not_a_list", r"must return a list of input batches; it returned an int"),
    ("{path}:missing", "has no function 'missing' for --calibration"),
    ("{path}", "--calibration takes path/to/file.py:function"),
])
def test_cli_says_what_is_wrong_with_a_calibration_function(tmp_path, capsys, spec, message):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    code = main(["compile", f"{path}:build", "--targets", "onnxruntime:cpu", "--accuracy", "0.05",
                 "--calibration", spec.format(path=path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert re.search(message, err), err
