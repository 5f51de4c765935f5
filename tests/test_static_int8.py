"""Static int8 with calibration batches (onnxruntime:cpu@int8s, openvino:cpu@int8s through NNCF):
activation scales fixed from the batches the user gives, checked against the accuracy budget like
every lower precision."""
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
from hetcc.calibration_batches import CalibrationBatches, read_across_units
from hetcc.capture import capture
from hetcc.cli.app import main
from hetcc.errors import HetccError, InputError, InternalError, TargetError

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


def made_by(model: onnx.ModelProto) -> dict:
    return {o: n.op_type for n in model.graph.node for o in n.output}


def test_a_conv_model_runs_in_static_int8_within_the_budget():
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ORT, accuracy=0.05, precisions=["int8s"], calibration=batches(),
                       tune="off")
    assert [str(s.target) for s in cm.plan.segments] == ["onnxruntime:cpu@int8s"]
    graph = onnx_of(cm)
    producer = made_by(graph)
    products = [n for n in graph.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len([n for n in products if n.op_type == "Conv"]) == 2
    for n in products:  # activation and weight both come in through int8 (QDQ)
        assert producer.get(n.input[0]) == "DequantizeLinear" and producer.get(n.input[1]) == "DequantizeLinear"
    with torch.no_grad():
        want = model(*inputs)
    got = cm(*inputs)
    error = float((got - want).norm() / want.norm())
    assert 0 < error <= 0.05  # int8 moved the outputs, within the budget
    assert cm.plan.accuracy["measured"] == pytest.approx(error, rel=1e-4)
    # the three given; not the example inputs, on which the budget is checked
    assert cm.plan.accuracy["calibration_batches"] == 3
    assert "static int8 scales from 3 calibration batch(es)" in cm.plan.summary()


@pytest.mark.parametrize("vnni", [False, True])
def test_static_int8_weights_take_7_bits_on_a_cpu_without_vnni(cpu, vnni):
    cpu(vnni=vnni)
    model, inputs = convnet()
    # a loose budget: 8-bit weights saturate on a machine that really has no VNNI
    cm = hetcc.compile(model, inputs, ORT, accuracy=0.5, precisions=["int8s"], calibration=batches(), tune="off")
    (seg,) = cm.plan.segments
    assert str(seg.target) == "onnxruntime:cpu@int8s" and cm.artifacts[seg.name].meta["reduce_range"] is (not vnni)
    weights = [numpy_helper.to_array(t) for t in onnx_of(cm).graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) > 1]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) == (127 if vnni else 64)


def test_the_scales_come_from_the_batches_not_the_example_inputs():
    model, inputs = convnet()
    int8s = ["onnxruntime:cpu@int8s", "torch:cpu"]
    narrow = hetcc.compile(model, inputs, int8s, accuracy=1.0, calibration=batches(scale=0.5), tune="off")
    wide = hetcc.compile(model, inputs, int8s, accuracy=1.0, calibration=batches(scale=10.0), tune="off")
    # min-max over the batches alone (uint8 over [min, max] of the input, zero included): the
    # example inputs, which the budget is checked on, are not among them, so narrower batches give
    # a range narrower than the example's, and batches 10x wider widen it
    given = torch.cat([b[0] for b in batches(scale=0.5)])
    assert input_scale(onnx_of(narrow)) == pytest.approx(
        (float(given.max()) - min(float(given.min()), 0.0)) / 255, rel=0.02)
    assert input_scale(onnx_of(narrow)) < 0.75 * (float(inputs[0].max()) - float(inputs[0].min())) / 255
    assert input_scale(onnx_of(wide)) > 5 * input_scale(onnx_of(narrow))
    # so the check on the example inputs sees what clipping costs: batches a tenth as wide clip
    # them, and the budget gives int8s up (had the examples been among the batches, they would
    # have set the range themselves and passed)
    clipped = hetcc.compile(model, inputs, int8s, accuracy=0.3, calibration=batches(scale=0.1), tune="off")
    assert [str(s.target) for s in clipped.plan.segments] == ["torch:cpu"]
    assert any(d["target"] == "onnxruntime:cpu@int8s" for d in clipped.plan.accuracy["dropped"])


def test_a_segment_in_the_middle_calibrates_on_the_values_it_reads():
    model, inputs = convnet()
    captured = capture(model, inputs)
    given = batches(2)
    calibration = CalibrationBatches(captured, given)
    assert len(calibration) == 2  # the user's batches alone
    nodes = [n for n in captured.graph.nodes if n.op == "call_function"]
    units = {n.name: i for i, n in enumerate(nodes)}  # a unit per node
    relu = [n.name for n in nodes if "relu" in str(n.target)]
    first_conv = next(n for n in nodes if n.name == relu[0]).all_input_nodes[0].name
    # what a unit that may run in int8s reads, and only that, is kept
    assert read_across_units(captured.graph, units, {relu[0]}) == {first_conv}
    calibration.run(units, {relu[0]})
    assert len(calibration.for_segment([first_conv])) == 2
    with pytest.raises(InternalError, match="not among the values kept"):
        calibration.for_segment([relu[0]])  # read by the second conv, which is not a reader
    calibration.run(units)
    (first, second) = calibration.for_segment([relu[0]])
    with torch.no_grad():
        torch.testing.assert_close(first[0], model.features[:2](given[0][0]))
        torch.testing.assert_close(second[0], model.features[:2](given[1][0]))


def test_a_split_plan_calibrates_its_int8s_part_on_intermediate_values():
    model, inputs = convnet()
    given = batches(scale=4.0)
    cm = hetcc.compile(model, inputs, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.2,
                       calibration=given, tune="off",
                       pins={"features.0": "torch:cpu", "features.1": "torch:cpu",
                             "features.2": "onnxruntime:cpu@int8s"})
    targets = [str(s.target) for s in cm.plan.segments]
    assert targets[0] == "torch:cpu" and targets[1] == "onnxruntime:cpu@int8s"
    (artifact,) = [a for a in cm.artifacts.values() if a.target == "onnxruntime:cpu@int8s"]
    # the int8s part reads the first ReLU's output: uint8 over [0, its max] on the batches, which
    # are 4x wider than the example
    with torch.no_grad():
        seen = max(float(model.features[:2](x[0]).max()) for x in given)
        example_only = float(model.features[:2](inputs[0]).max())
        want = model(*inputs)
    scale = input_scale(onnx.load(artifact.files["model"]))
    assert scale == pytest.approx(seen / 255, rel=0.02) and seen > 2 * example_only
    assert float((cm(*inputs) - want).norm() / want.norm()) <= 0.2


class Keywords(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, image, scale):
        return self.conv(image) * scale


def test_batches_for_a_model_called_by_keyword_are_dicts_in_any_order():
    torch.manual_seed(0)
    model = Keywords().eval()
    example = {"image": torch.randn(1, 3, 8, 8), "scale": torch.ones(1)}
    g = torch.Generator().manual_seed(1)
    given = [{"scale": torch.ones(1), "image": 3 * torch.randn(1, 3, 8, 8, generator=g)} for _ in range(2)]
    cm = hetcc.compile(model, example, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05,
                       calibration=given, tune="off", pins={"conv": "onnxruntime:cpu@int8s"})
    assert "onnxruntime:cpu@int8s" in [str(s.target) for s in cm.plan.segments]
    (artifact,) = [a for a in cm.artifacts.values() if a.target == "onnxruntime:cpu@int8s"]
    seen = max(float(b["image"].max()) for b in given)  # the batches' range, not the example's
    low = min(min(float(b["image"].min()) for b in given), 0.0)
    assert input_scale(onnx.load(artifact.files["model"])) == pytest.approx((seen - low) / 255, rel=0.02)


def test_batches_may_differ_along_a_dynamic_dimension_within_its_range():
    model, _ = convnet()
    model = nn.Sequential(*model.features).eval()  # no Linear: any batch size
    batch = torch.export.Dim("batch", min=1, max=8)
    example = (torch.randn(2, 3, 8, 8),)
    g = torch.Generator().manual_seed(1)
    cm = hetcc.compile(model, example, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05, tune="off",
                       dynamic_shapes=({0: batch},), calibration=[(torch.randn(5, 3, 8, 8, generator=g),)])
    assert [str(s.target) for s in cm.plan.segments] == ["onnxruntime:cpu@int8s"]
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    assert float((cm(x) - want).norm() / want.norm()) <= 0.1
    with pytest.raises(InputError, match=r"calibration batch 0: input 'input' has 9 along dimension 0 \(batch\), "
                                         r"outside the range 1..8"):
        hetcc.compile(model, example, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05, tune="off",
                      dynamic_shapes=({0: batch},), calibration=[(torch.randn(9, 3, 8, 8),)])


def test_a_batch_the_model_fails_on_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8)).eval()
    with pytest.raises(InputError, match=r"the model fails on calibration batch 1 at node"):
        hetcc.compile(model, (torch.tensor([[1, 2, 3]]),), ORT, accuracy=0.05, tune="off",
                      calibration=[(torch.tensor([[0, 1, 2]]),), (torch.tensor([[4, 50, 6]]),)])


def test_a_plan_without_static_int8_does_not_claim_calibrated_scales():
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ORT, accuracy=1e-6, precisions=["int8s"], calibration=batches(),
                       tune="off")
    assert [str(s.target) for s in cm.plan.segments] == ["onnxruntime:cpu"]  # int8s missed the budget
    assert "calibration_batches" not in cm.plan.accuracy and "static int8" not in cm.plan.summary()


def test_a_bundle_in_static_int8_loads_and_gives_the_same_outputs(tmp_path):
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ORT, accuracy=0.05, precisions=["int8s"], calibration=batches(),
                       tune="off")
    loaded = hetcc.load(cm.save(tmp_path / "int8s.bundle"))
    assert [str(s.target) for s in loaded.plan.segments] == ["onnxruntime:cpu@int8s"]
    assert loaded.plan.accuracy["calibration_batches"] == 3
    torch.testing.assert_close(loaded(*inputs), cm(*inputs))


def openvino_model_of(compiled):
    import openvino as ov

    (artifact,) = compiled.artifacts.values()
    return ov.Core().read_model(artifact.files["model"], artifact.files["weights"])


def input_range(model) -> float:
    """The width of the FakeQuantize range on the model's input (what calibration fixed)."""
    first = model.inputs[0].get_node()
    (fq,) = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
             and op.input_value(0).get_node() == first]
    low, high = (float(fq.input_value(i).get_node().get_data().min()) for i in (1, 2))
    return high - low


def test_openvino_runs_static_int8_from_nncf_within_the_budget(tmp_path):
    pytest.importorskip("nncf", reason="NNCF is optional (the nncf extra); CI installs it")
    model, inputs = convnet()
    cm = hetcc.compile(model, inputs, ["openvino:cpu"], accuracy=0.05, precisions=["int8s"],
                       calibration=batches(), tune="off")
    assert [str(s.target) for s in cm.plan.segments] == ["openvino:cpu@int8s"]
    graph = openvino_model_of(cm)
    ops = [op.get_type_name() for op in graph.get_ordered_ops()]
    # the activations of both convolutions and the Linear go through int8, and so do their weights,
    # which the file stores as int8
    assert ops.count("FakeQuantize") >= 3 and ops.count("Convolution") == 2
    assert sum(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
               for op in graph.get_ordered_ops()) >= 3
    (artifact,) = cm.artifacts.values()
    assert artifact.meta["static_int8"].startswith("nncf ") and artifact.meta["calibration_batches"] == 3
    assert "transformer" not in artifact.meta["static_int8"]  # no attention, no lookup: NNCF's default type
    with torch.no_grad():
        want = model(*inputs)
    error = float((cm(*inputs) - want).norm() / want.norm())
    assert 0 < error <= 0.05 and cm.plan.accuracy["measured"] == pytest.approx(error, rel=1e-4)
    # the ranges come from the batches: ten times wider batches widen the input's
    wide = hetcc.compile(model, inputs, ["openvino:cpu"], accuracy=0.5, precisions=["int8s"],
                         calibration=batches(scale=10.0), tune="off")
    assert input_range(openvino_model_of(wide)) > 5 * input_range(graph)
    # a bundle loads it without NNCF's help and gives the same outputs
    loaded = hetcc.load(cm.save(tmp_path / "ov-int8s.bundle"))
    assert [str(s.target) for s in loaded.plan.segments] == ["openvino:cpu@int8s"]
    torch.testing.assert_close(loaded(*inputs), cm(*inputs))


def test_openvino_static_int8_quantizes_a_transformer_as_one():
    """A segment with attention or an embedding lookup goes to NNCF as its TRANSFORMER model type.
    With NNCF's default type, the embedding part of a Hugging Face BERT failed in NNCF's quantizer
    setup (KeyError on the lookup's Gather) and fell back to torch:cpu."""
    pytest.importorskip("nncf", reason="NNCF is optional (the nncf extra); CI installs it")
    pytest.importorskip("transformers")
    import hf_models  # examples/, put on the path by tests/conftest.py

    model, inputs = hf_models.build("bert", "tiny")
    calibration = [tuple(b) for b in hf_models.like(inputs, 3, seed=1234)]
    cm = hetcc.compile(model, inputs, ["openvino:cpu@int8s"], accuracy=0.5, calibration=calibration,
                       tune="off")
    assert [str(s.target) for s in cm.plan.segments] == ["openvino:cpu@int8s"]  # the lookup included
    (artifact,) = cm.artifacts.values()
    assert artifact.meta["static_int8"].endswith("model type transformer")
    ops = [op.get_type_name() for op in openvino_model_of(cm).get_ordered_ops()]
    assert ops.count("FakeQuantize") >= 4
    with torch.no_grad():
        want = model(*inputs)
    want = want[0] if isinstance(want, (tuple, list)) else want
    got = cm(*inputs)
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert float((got - want).norm() / want.norm()) <= 0.5


def test_which_graphs_nncf_quantizes_as_a_transformer():
    from hetcc.backends.openvino_static import is_transformer
    from hetcc.capture import decomposition_table

    def graph(module, *args):  # decomposed as hetcc captures, which segments are exported from
        return torch.export.export(module.eval(), args).run_decompositions(decomposition_table()).graph

    class Fused(nn.Module):
        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v)

    class WrittenOut(nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v

    x = torch.randn(1, 2, 4, 8)
    assert is_transformer(graph(Fused(), x, x, x))
    assert is_transformer(graph(WrittenOut(), x, x, x))
    assert is_transformer(graph(nn.Embedding(10, 8), torch.tensor([[1, 2]])))
    # a classifier's softmax is not attention, nor is a Linear on a sequence
    net, args = convnet()
    assert not is_transformer(graph(nn.Sequential(net, nn.Softmax(-1)), *args))
    assert not is_transformer(graph(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Softmax(-1)), torch.randn(1, 4, 8)))
    assert not is_transformer(graph(net, *args))


def test_openvino_static_int8_without_nncf_says_to_install_it(monkeypatch):
    from hetcc.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "nncf_here", lambda: False)
    model, inputs = convnet()
    with pytest.raises(HetccError, match=r"none of the targets runs here \(openvino:cpu runs static int8 "
                                         r"through NNCF, which is not installed: pip install nncf\)"):
        hetcc.compile(model, inputs, ["openvino:cpu"], accuracy=0.05, calibration=batches(), tune="off")
    with pytest.raises(TargetError, match="does not run int8s on cpu here .*pip install nncf"):
        hetcc.compile(model, inputs, ["openvino:cpu@int8s"], accuracy=0.05, calibration=batches(), tune="off")


@pytest.mark.parametrize("options, message", [
    ({"accuracy": 0.05, "targets": ["onnxruntime:cpu@int8s"]}, "give calibration="),
    ({"accuracy": 0.05, "precisions": ["int8s"]}, "give calibration=.* too"),
    ({"calibration": "batches"}, "give an accuracy budget too"),
    ({"accuracy": 0.05, "calibration": "batches", "targets": ["iree:cpu", "torch:cpu"]},
     "none of the targets runs here .onnxruntime:cpu does, and openvino:cpu's int8s with NNCF installed"),
    ({"accuracy": 0.05, "calibration": "batches", "precisions": ["int8w"], "targets": [*ORT, "openvino:cpu"]},
     r"precisions= \(CLI --precisions\) leaves out: add int8 or int8s( or int8u)? to it"),
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
    ([(torch.randn(4, 3, 8, 8),)], r"batch 0: input 'x' has shape \(4, 3, 8, 8\), the example input \(2, 3, 8, 8\)"),
    ([(torch.randn(2, 3, 8, 8),), (torch.randn(2, 3, 8, 8, dtype=torch.float64),)],
     "batch 1: input 'x' is torch.float64, the example input torch.float32"),
    ([(torch.randn(2, 3, 8, 8), torch.randn(2))], r"batch 0: does not match the example inputs \(expected 1 "
                                                  r"tensor inputs, got 2\)"),
    (list(range(65)), "calibration has 65 batches; give at most 64"),
])
def test_bad_calibration_batches_are_named(given, message, monkeypatch):
    import hetcc.compiler

    model, inputs = convnet()
    if isinstance(given, list) and len(given) > 64 or not isinstance(given, list) or not given:
        # found before the model is traced: nothing of it is needed
        monkeypatch.setattr(hetcc.compiler, "capture", lambda *a, **k: pytest.fail("traced first"))
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
                 "--precisions", "int8s", "--calibration", f"{path}:batches", "--json", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    plan = json.loads(captured.out)["plan"]
    # tuning built and timed the static int8 plan beside ONNX Runtime's fp32 one, and kept one
    timed = {c["name"]: c["measured_seconds"] for c in plan["candidates"]}
    assert timed["onnxruntime:cpu@int8s alone"] > 0 and timed["onnxruntime:cpu alone"] > 0
    assert {s["target"] for s in plan["segments"]} <= {"onnxruntime:cpu@int8s", "onnxruntime:cpu"}
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


def test_numpy_batches_and_positional_with_keyword_batches_are_taken():
    torch.manual_seed(0)
    model = Keywords().eval()
    image, scale = torch.randn(1, 3, 8, 8), torch.ones(1)
    g = torch.Generator().manual_seed(1)
    wide = 3 * torch.randn(1, 3, 8, 8, generator=g)
    cm = hetcc.compile(model, (image,), ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05, tune="off",
                       example_kwargs={"scale": scale}, pins={"conv": "onnxruntime:cpu@int8s"},
                       calibration=[((wide.numpy(),), {"scale": scale.numpy()})])
    (artifact,) = [a for a in cm.artifacts.values() if a.target == "onnxruntime:cpu@int8s"]
    low, high = min(float(wide.min()), 0.0), float(wide.max())  # the one batch's range
    assert input_scale(onnx.load(artifact.files["model"])) == pytest.approx((high - low) / 255, rel=0.02)


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, a, b):
        return self.conv(a) + self.conv(b)


def test_inputs_sharing_a_dynamic_dimension_must_agree_on_it():
    model = Two().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    example = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    with pytest.raises(InputError, match=r"calibration batch 0: input 'b' has 3 along dimension 0 \(batch\), "
                                         r"but 'a' has 4; inputs that share batch must agree on it"):
        hetcc.compile(model, example, ["onnxruntime:cpu@int8s", "torch:cpu"], accuracy=0.05, tune="off",
                      dynamic_shapes=({0: batch}, {0: batch}),
                      calibration=[(torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8))])


def test_hetcc_targets_says_static_int8_needs_calibration(capsys, vnni):
    assert main(["targets"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│ onnxruntime:cpu ")]
    assert len(rows) == 1 and "int8, int8s (with --calibration)" in rows[0]
