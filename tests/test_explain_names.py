"""Explanations say why, not only where (issue 11 item 6): the modules each segment runs, the
runner-up target and why it lost, values named after the module that makes them and the model's
own output names, Analysis.summary(), and bundles from before these fields still loading."""
import json
import math

import pytest
import torch
from torch import nn

import hetcc
from hetcc.bundle import REPORT
from hetcc.capture import capture
from hetcc.cli import main
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import BackendProfile
from hetcc.module_paths import module_path, output_names, roll_up
from hetcc.passes.alternatives import runner_up
from hetcc.passes.problem import HOST, Value
from test_solver import make

TARGETS = ["onnxruntime:cpu", "torch:cpu"]
CPU = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=16e9,
                 source="fixed for these tests")
DEVICES = {t: CPU for t in TARGETS}
# ONNX Runtime ten times faster than torch at everything: every segment it runs wins on cost.
PROFILES = {"onnxruntime": BackendProfile("onnxruntime", {"default": 1.0}, 1e-6, 1e-6),
            "torch": BackendProfile("torch", {"default": 0.1}, 1e-5, 1e-6)}


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    """Known submodules: embed, blocks.0-3, head; returns a dict, so the outputs have names."""

    def __init__(self, d=32):
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(4))
        self.head = nn.Linear(d, 8)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return {"logits": self.head(h), "hidden": h}


@pytest.fixture(scope="module")
def split():
    """Net with blocks.2 pinned to torch:cpu: three segments, ONNX Runtime on both sides."""
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 16)
    return hetcc.compile(model, (x,), TARGETS, pins={"blocks.2": "torch:cpu"}, measure=False,
                         profiles=PROFILES, devices=DEVICES), model, x


# ---- module paths ----

def test_each_segment_names_the_modules_it_runs(split):
    compiled, _, _ = split
    got = [(s.target, s.modules) for s in compiled.plan.segments]
    assert got == [("onnxruntime:cpu", ("embed", "blocks.0-1")), ("torch:cpu", ("blocks.2",)),
                   ("onnxruntime:cpu", ("blocks.3", "head"))]


def test_roll_up_names_the_fewest_paths():
    paths = {"a": "emb", "b": "emb.norm", "c": "layer.0.att", "d": "layer.0.mlp", "e": "layer.1.att",
             "f": "layer.1.mlp", "g": "layer.2.att", "h": "layer.2.mlp", "i": "", "j": "pool", "k": "pool"}
    assert roll_up(paths, paths) == ("whole model",)
    assert roll_up("abcdefg", paths) == ("emb", "layer except 2.mlp")
    assert roll_up("cdefij", paths) == ("top level: own nodes only", "layer.0-1", "pool: 1 of 2 nodes")
    assert roll_up("ceg", paths) == ("layer.0.att", "layer.1.att", "layer.2.att")
    assert roll_up([n for n in paths if n != "d"], paths) == ("whole model except layer.0.mlp",)
    assert roll_up(["nowhere"], paths) == ()


def test_output_names_come_from_the_models_structure():
    model, x = Net().eval(), torch.randn(4, 16)
    cap = capture(model, (x,))
    names = output_names(cap.out_spec, cap.outputs)
    assert sorted(names.values()) == ["hidden", "logits"]
    (logits,) = [v for v, n in names.items() if n == "logits"]
    assert module_path(cap.node(logits)) == "head"

    class Nested(nn.Module):
        def forward(self, x):
            return x + 1, [x * 2, {"k": x - 1}]

    cap = capture(Nested(), (x,))
    assert list(output_names(cap.out_spec, cap.outputs).values()) == ["[0]", "[1][0]", "[1][1].k"]
    cap = capture(nn.Linear(16, 4), (x,))
    assert list(output_names(cap.out_spec, cap.outputs).values()) == ["output"]


def test_plan_names_outputs_and_cuts_after_the_model(split):
    compiled, _, _ = split
    plan = compiled.plan
    assert sorted(plan.output_names.values()) == ["hidden", "logits"]
    for s in plan.segments:  # every value a segment hands over has the module that makes it
        for value in (*s.outputs, *(v for v in s.inputs if v not in ("x",))):
            assert value in plan.producers, value
    cut = plan.segments[0].outputs
    assert [plan.producers[v] for v in cut] == ["blocks.1"]  # the residual add of block 1
    text = plan.summary()
    assert "seg0 on onnxruntime:cpu runs embed, blocks.0-1" in text
    assert "(blocks.1) -> seg1" in text
    assert "logits = " in text and "(head) -> caller" in text


# ---- the runner-up ----

def test_runner_up_lost_on_cost_with_its_time(split):
    compiled, _, _ = split
    for s in compiled.plan.segments:
        if s.target == "onnxruntime:cpu":  # won on cost: torch is slower for the same nodes
            assert s.runner_up == "torch:cpu"
            assert s.runner_up_seconds > s.predicted_seconds
            assert s.runner_up_why.startswith("slower: predicted")
        else:  # pinned: ONNX Runtime was refused, and the reason says so
            assert s.runner_up == "onnxruntime:cpu" and s.runner_up_seconds is None
            assert "refused" in s.runner_up_why and "pins['blocks.2']" in s.runner_up_why


def test_runner_up_faster_alone_but_the_hand_overs_cost_more():
    # n1 is a little faster on t1, but moving it there means two hand-overs of 1 ms each
    values = [Value(HOST, (0,), 4, name="x"), Value(0, (1,), 4, name="a"), Value(1, (2,), 4, name="b"),
              Value(2, (), 4, True, name="y")]
    p = make([[1e-3, 2e-3], [1e-3, 0.9e-3], [1e-3, 2e-3]], values, latency=1e-3)
    got = runner_up(p, [0, 0, 0], [1])
    assert got.target == "t1" and math.isclose(got.seconds, 0.9e-3)
    assert got.why.startswith("faster alone (predicted 0.900 ms vs 1.000 ms here), but the hand-overs and")
    assert runner_up(p, [0, 0, 0], [0, 1, 2]).why.startswith("slower")
    refused = make([[1e-3, math.inf]], [Value(HOST, (0,), 4, name="x")])
    got = runner_up(refused, [0], [0], [{"t1": "t1 cannot run aten.foo"}])
    assert got.seconds is None and got.why == "refused n0: t1 cannot run aten.foo"
    assert runner_up(make([[1e-3]], []), [0], [0]) is None


# ---- explain, and bundles from before these fields ----

def test_explain_shows_why_and_an_old_report_still_loads(split, tmp_path, capsys):
    compiled, _, x = split
    path = compiled.save(tmp_path / "net.bundle")
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runner-up torch:cpu: slower: predicted" in out and "runs blocks.3, head" in out
    assert "logits = " in out

    report = json.loads((path / REPORT).read_text())
    for s in report["segments"]:
        for key in ("modules", "runner_up", "runner_up_seconds", "runner_up_why"):
            del s[key]
    del report["output_names"], report["producers"]
    (path / REPORT).write_text(json.dumps(report))  # report.json is not in the manifest's sums
    loaded = hetcc.load(path)
    assert [s.modules for s in loaded.plan.segments] == [(), (), ()]
    assert loaded.plan.segments[0].runner_up is None and loaded.plan.output_names == {}
    torch.testing.assert_close(loaded(x)["logits"], compiled(x)["logits"])
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "seg2" in out and "runner-up" not in out and "runs " not in out

    # a hand-edited (or hostile) report with the new fields malformed: defaults, no crash
    for s in report["segments"]:
        s.update(modules=5, runner_up=["x"], runner_up_seconds="1", runner_up_why=None)
    report.update(output_names=[1], producers={"add": 3, "x": "y"})
    (path / REPORT).write_text(json.dumps(report))
    loaded = hetcc.load(path)
    assert loaded.plan.segments[0].modules == () and loaded.plan.segments[0].runner_up is None
    assert loaded.plan.output_names == {} and loaded.plan.producers == {"x": "y"}
    assert "seg0" in loaded.plan.summary()
    assert main(["explain", str(path)]) == 0 and "seg2" in capsys.readouterr().out


def test_prediction_names_segments_and_cuts():
    model, x = Net().eval(), torch.randn(4, 16)
    p = hetcc.predict(model, (x,), ["h100", "epyc"], pins={"blocks.2": "epyc", "head": "h100"})
    assert [(s.device, s.modules) for s in p.segments] == [
        ("epyc-9654", ("whole model except head",)), ("h100-sxm", ("head",))]
    outputs = {c.output: c for c in p.cuts if c.destination == "host"}
    assert set(outputs) == {"logits", "hidden"} and outputs["logits"].module == "head"
    assert "logits = " in p.summary()


# ---- a real Hugging Face model ----

def test_hf_bert_plan_names_its_modules():
    pytest.importorskip("transformers")
    import hf_models

    model, inputs = hf_models.build_bert("tiny")
    compiled = hetcc.compile(model, inputs, TARGETS, measure=False, profiles=PROFILES, devices=DEVICES,
                             pins={"model.encoder.layer.0.intermediate": "torch:cpu"})
    modules = [m for s in compiled.plan.segments for m in s.modules]
    assert "model.embeddings" in modules and "model.encoder.layer.0.intermediate" in modules
    assert all(m.startswith(("model", "top level", "whole model")) for m in modules)
    (out,) = [v for s in compiled.plan.segments for v in s.outputs if v in compiled.plan.output_names]
    assert compiled.plan.producers[out] == "model.encoder.layer.0.output.LayerNorm"


def test_hf_bert_analysis_summary_is_short_and_rolls_up_modules():
    pytest.importorskip("transformers")
    import hf_models

    model, inputs = hf_models.build_bert("tiny")
    analysis = hetcc.analyze(model, inputs)
    text = analysis.summary(devices=DEVICES, profiles=PROFILES, targets=TARGETS)
    assert len(text) < 3000 and len(text.splitlines()) <= 20
    assert "model.encoder.layer.0.attention" in text and "onnxruntime:cpu" in text
    assert len(repr(analysis)) < 300 and ".summary()" in repr(analysis)


def test_stock_hf_model_output_keeps_its_field_name():
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    model = BertModel(config, add_pooling_layer=False).eval()
    cap = capture(model, (torch.randint(0, 100, (1, 8)),))
    (value, name), = output_names(cap.out_spec, cap.outputs).items()
    assert name == "last_hidden_state"
    assert module_path(cap.node(value)) == "encoder.layer.0.output.LayerNorm"
