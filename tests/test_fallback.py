"""compile(strict=True) and compile(max_fallback=...): nodes that fall back to torch:cpu because a
target asked for could not take them make the compile fail, naming them and why; the user's pins
and exclusions and the cost model's own choices do not count."""
import re

import pytest
import torch
from torch import nn

import hetcc
import mlp
from hetcc.cost_model.profiles import BackendProfile
from hetcc.errors import FallbackError, HetccError
from hetcc.fallback import CHOICE, FAILED, REFUSED, USER, fallen_back
from hetcc.passes.capability import Candidates
from hetcc.passes.units import Unit


class Eigh(nn.Module):
    """ONNX Runtime refuses aten._linalg_eigh (no ONNX translation): a capability refusal."""

    def forward(self, x):
        w, v = torch.linalg.eigh(x @ x.T)
        return (v * w).relu() + 1


def eigh():
    return Eigh().eval(), (torch.randn(4, 4),)


def on_torch(cm) -> list[str]:
    return [n for s in cm.plan.segments if s.target == "torch:cpu" for n in s.nodes]


def total_nodes(cm) -> int:
    return sum(len(s.nodes) for s in cm.plan.segments)


# ---- what counts ----

def test_strict_names_the_refused_nodes_the_target_and_its_reason():
    model, inputs = eigh()
    allowed = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False)
    fell = on_torch(allowed)
    assert "_linalg_eigh" in fell, allowed.plan.summary()  # the case still falls back
    with pytest.raises(FallbackError) as info:
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], strict=True, measure=False)
    text = str(info.value)
    assert f"{len(fell)} of {total_nodes(allowed)} nodes" in text
    assert "_linalg_eigh" in text and "strict=True allows none" in text
    assert "onnxruntime:cpu refused them: aten._linalg_eigh.default has no ONNX translation" in text
    assert "--exclude _linalg_eigh=onnxruntime:cpu" in text  # what to do


def test_max_fallback_is_a_share_of_the_nodes_bounded_on_both_sides():
    model, inputs = eigh()
    allowed = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False)
    share = len(on_torch(allowed)) / total_nodes(allowed)
    assert 0 < share < 1, allowed.plan.summary()
    for bound in (share, min(1.0, share + 0.01), 1.0):  # at the bound is allowed
        cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], max_fallback=bound, measure=False)
        assert on_torch(cm) == on_torch(allowed)
    for bound in (share - 0.01, 0.0):
        with pytest.raises(FallbackError, match=rf"\({share:.1%}\) .* max_fallback={bound:g} allows"):
            hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], max_fallback=bound, measure=False)


def test_listed_torch_counts_refusals_but_not_the_cost_models_choice():
    # ONNX Runtime refused eigh: fallback, even with torch:cpu listed
    model, inputs = eigh()
    with pytest.raises(FallbackError, match="_linalg_eigh"):
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"], strict=True, measure=False)
    # ONNX Runtime could take every node of the MLP; a profile that makes it slow puts them all on
    # torch:cpu by choice, which is not fallback
    slow = {"onnxruntime": BackendProfile("onnxruntime", {"default": 1e-4}, per_node=1e-3, call_overhead=1.0)}
    model, inputs = mlp.build(batch=2)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"], strict=True,
                       profiles=slow, measure=False)
    assert cm.plan.targets_used() == ["torch:cpu"]


def test_pins_and_exclusions_are_the_users_choice():
    model, inputs = eigh()
    excluded = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], strict=True, measure=False,
                             exclude={"_linalg_eigh": ["onnxruntime:cpu"]})
    assert "_linalg_eigh" in on_torch(excluded)
    pinned = hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"], strict=True,
                           measure=False, pins={"_linalg_eigh": "torch:cpu"})
    assert "_linalg_eigh" in on_torch(pinned)


def test_torch_alone_never_falls_back():
    model, inputs = eigh()
    assert hetcc.compile(model, inputs, targets=["torch:cpu"], strict=True, measure=False)


def test_which_units_count():
    """The rule itself, on hand-made candidates: targets a, b and torch:cpu (index 2)."""
    units = [Unit(f"n{u}", (f"n{u}",)) for u in range(6)]
    cand = Candidates(6, ["onnxruntime:cpu", "openvino:cpu", "torch:cpu"])
    cand.forbid(0, 0, "refused", REFUSED)           # 0: a refused, b could: the cost model's choice
    cand.forbid(1, 0, "refused", REFUSED)           # 1: both refused
    cand.forbid(1, 1, "failed", FAILED)
    cand.forbid(2, 0, "pinned", USER)               # 2: the user's pins alone
    cand.forbid(2, 1, "pinned", USER)
    cand.forbid(3, 0, "refused", REFUSED)           # 3: refused, and excluded from the other
    cand.forbid(3, 1, "excluded", USER)
    cand.forbid(4, 0, "refused", REFUSED)           # 4: refused, the other ruled out to time one target
    cand.forbid(4, 1, "measuring", CHOICE)          #    alone: if that plan is kept, 4 falls back
    found = {f.nodes[0]: f.refusals for f in fallen_back(units, cand, range(6), torch_index=2)}
    assert found == {"n1": (("onnxruntime:cpu", REFUSED, "refused"), ("openvino:cpu", FAILED, "failed")),
                     "n3": (("onnxruntime:cpu", REFUSED, "refused"),),
                     "n4": (("onnxruntime:cpu", REFUSED, "refused"),)}
    assert fallen_back(units, cand, [0, 2, 5], torch_index=2) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"strict": True, "max_fallback": 0.1}, "give one"),
    ({"max_fallback": 1.5}, "from 0 to 1"),
    ({"max_fallback": -0.1}, "from 0 to 1"),
    ({"max_fallback": float("nan")}, "from 0 to 1"),
    ({"max_fallback": "0.1"}, "from 0 to 1"),
    ({"max_fallback": True}, "from 0 to 1"),
    ({"strict": "yes"}, "strict must be True or False"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(HetccError, match=message):
        hetcc.compile(nn.Linear(2, 2), (torch.randn(1, 2),), **kwargs)


def test_the_error_keeps_each_reason_whole_and_plain(monkeypatch):
    model, inputs = mlp.build(batch=2)
    long = "\x1b[1;31mExporterFailure\x1b[0m: " + " ".join(f"word{i}" for i in range(400)) + " END-OF-REASON"

    def export(*args, **kwargs):
        raise RuntimeError(long)

    monkeypatch.setattr(torch.onnx, "export", export)  # every ONNX export fails, after capability said yes
    with pytest.raises(FallbackError) as info:
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], strict=True, measure=False)
    text = str(info.value)
    assert "\x1b" not in text and "ExporterFailure: word0 word1" in text and "word399 END-OF-REASON" in text
    assert re.search(r"onnxruntime:cpu failed on (this segment|this node|a part of seg0)", text) and "failed_segment.pt2" in text


def test_a_tuning_candidate_that_falls_back_is_not_kept_under_strict(monkeypatch):
    """With strict, a candidate on one target alone that fails on some nodes would run them on
    torch:cpu (the other targets are ruled out by hetcc's own choice there): it is not built, though
    it might be the fastest, and the kept plan falls back nowhere."""
    from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend

    lower = OnnxRuntimeBackend.lower

    def failing(self, program, target, workdir):
        if any(n.target is torch.ops.aten.gelu.default for n in program.gm.graph.nodes):
            raise RuntimeError("gelu fails on this runtime, for this test")
        return lower(self, program, target, workdir)

    monkeypatch.setattr(OnnxRuntimeBackend, "lower", failing)
    model, inputs = mlp.build(batch=2)
    # predicted slow: the solver's plan is OpenVINO alone, so ONNX Runtime meets gelu only in tuning
    slow = BackendProfile("onnxruntime", {"default": 0.001}, per_node=1e-4, call_overhead=1e-3)
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu", "onnxruntime:cpu"], strict=True, tune=60,
                       profiles={"onnxruntime": slow})
    assert cm.plan.targets_used() == ["openvino:cpu"]
    alone = [c for c in cm.plan.candidates if c["name"] == "onnxruntime:cpu alone"]
    assert alone and alone[0]["measured_seconds"] is None and "fall" in alone[0]["note"], cm.plan.candidates
