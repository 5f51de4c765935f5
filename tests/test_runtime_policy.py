"""Runtime configuration follows the plan: ONNX Runtime busy-waits between calls only when it has
the cores to itself (docs/backends.md, "Spinning"), and a bundle keeps that choice."""
import pytest
import torch
from torch import nn

import hetcc
from hetcc.compiler import configure_for_plan


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(32, 64)
        self.second = nn.Linear(64, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def _spinning(cm) -> dict:
    """Segment -> ORT's intra-op spinning setting, for the ONNX Runtime segments."""
    out = {}
    for step in cm.runtime.steps:
        if step.target == "onnxruntime:cpu":
            options = step.run.session.get_session_options()
            out[step.name] = options.get_session_config_entry("session.intra_op.allow_spinning")
    return out


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(4, 32)


def test_onnxruntime_alone_spins_as_it_does_by_hand(x, tmp_path):
    model = TwoLayers().eval()
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], measure=False)
    assert cm.plan.targets_used() == ["onnxruntime:cpu"]
    assert set(_spinning(cm).values()) == {"1"}
    torch.testing.assert_close(cm(x), model(x))
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    assert set(_spinning(loaded).values()) == {"1"}


def test_onnxruntime_beside_another_runtime_does_not_spin(x, tmp_path):
    model = TwoLayers().eval()
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "torch:cpu"], measure=False,
                       pins={"first": "onnxruntime:cpu", "second": "torch:cpu"})
    assert set(cm.plan.targets_used()) == {"onnxruntime:cpu", "torch:cpu"}
    assert set(_spinning(cm).values()) == {"0"}
    torch.testing.assert_close(cm(x), model(x))
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    assert set(_spinning(loaded).values()) == {"0"}


def test_configuring_again_reloads_nothing(x):
    cm = hetcc.compile(TwoLayers().eval(), (x,), targets=["onnxruntime:cpu"], measure=False)
    step = cm.runtime.steps[0]
    run, artifact = step.run, cm.artifacts[step.name]
    assert artifact.meta["runs_alone"] is True
    target = hetcc.Target.parse("onnxruntime:cpu")
    configure_for_plan(cm, {target: hetcc.compiler.resolve(target)})
    assert step.run is run and cm.artifacts[step.name] is artifact


def test_a_spinning_option_overrides_the_plan_and_the_bundle_keeps_it(x, tmp_path):
    model = TwoLayers().eval()
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], measure=False,
                       backend_options={"onnxruntime": {"spinning": "off", "threads": 1}})
    assert cm.plan.targets_used() == ["onnxruntime:cpu"]
    assert set(_spinning(cm).values()) == {"0"}  # alone, "auto" would spin
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    assert set(_spinning(loaded).values()) == {"0"}
    threads = {step.run.session.get_session_options().intra_op_num_threads for step in loaded.runtime.steps}
    assert threads == {1}
    torch.testing.assert_close(loaded(x), model(x))
