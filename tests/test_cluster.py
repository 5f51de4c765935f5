"""A bundle's stages in Ray actors (issue 15): on a local Ray cluster of two CPU-only nodes whose
custom resources stand in for devices. Outputs equal the single-process run, requests pipeline,
a dead actor gives callers a clear error instead of a hang, and closing leaves no process."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

ray = pytest.importorskip("ray")

import hetcc  # noqa: E402
from hetcc.cluster import ClusterError, distribute  # noqa: E402
from hetcc.cluster.stages import cut  # noqa: E402
from hetcc.errors import InputError  # noqa: E402

PLACES = {"onnxruntime:cpu": {"dev_a": 1}, "openvino:cpu": {"dev_b": 1}}


class TwoHalves(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
        self.b = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, x):
        return {"y": self.b(self.a(x)), "total": x.sum()}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"dev_a": 1}})
    nodes.add_node(num_cpus=1, resources={"dev_b": 1})
    ray.init(address=nodes.address, include_dashboard=False, logging_level="ERROR")
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoHalves().eval()
    cm = hetcc.compile(model, (torch.randn(4, 64),), targets=["onnxruntime:cpu", "openvino:cpu"],
                       pins={"a": "onnxruntime:cpu", "b": "openvino:cpu"}, tune="off")
    assert [s.target for s in cm.runtime.steps] == ["onnxruntime:cpu", "openvino:cpu"]
    return cm, cm.save(tmp_path_factory.mktemp("cluster") / "two.bundle")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stages_are_runs_of_one_target_and_hand_on_only_what_is_read():
    step = lambda name, target, inputs, outputs: SimpleNamespace(  # noqa: E731
        name=name, target=target, inputs=inputs, outputs=outputs)
    steps = [step("s0", "ort", ("x",), ("a",)), step("s1", "ort", ("a",), ("b",)),
             step("s2", "ov", ("b", "x"), ("c",)), step("s3", "ort", ("c",), ("d",))]
    stages = cut(steps, ["d", "a", None])
    assert [s.steps for s in stages] == [("s0", "s1"), ("s2",), ("s3",)]
    # stage 0 hands on b (read by s2), x (an input s2 reads) and a (an output); stage 2 only d and a
    assert stages[0].forward == ("a", "b", "x") and stages[1].forward == ("a", "c")
    assert stages[2].forward == ("a", "d")
    assert [s.steps for s in cut(steps, ["d"], split_after=["s2"])] == [("s0", "s1", "s2"), ("s3",)]
    with pytest.raises(InputError, match=r"split_after names \['nope'\]"):
        cut(steps, ["d"], split_after=["nope"])


def test_outputs_equal_the_single_process_run_with_a_stage_on_each_node(cluster, bundle):
    cm, path = bundle
    with distribute(path, resources=PLACES) as dm:
        assert len(dm.stages) == 2 and dm.nodes[0] != dm.nodes[1]
        for _ in range(3):
            x = torch.randn(4, 64)
            got, want = dm(x), cm(x)
            assert set(got) == {"y", "total"}
            torch.testing.assert_close(got["y"], want["y"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got["total"], want["total"])
        with pytest.raises(InputError, match="dimension 1 is 3"):
            dm(torch.randn(4, 3))


def test_requests_pipeline_across_the_stages(cluster, bundle):
    cm, path = bundle
    xs = [(torch.randn(4, 64),) for _ in range(40)]
    with distribute(path, resources=PLACES) as dm:
        got = dm.map(xs)
        for (x,), y in zip(xs, got):
            torch.testing.assert_close(y["y"], cm(x)["y"], rtol=1e-5, atol=1e-5)
        spans = dm.trace[-40:]
    # stage 0 starts a request before stage 1 has finished the one before it
    overlaps = sum(spans[i + 1][0][0] < spans[i][1][1] for i in range(len(spans) - 1))
    assert overlaps > 0, spans[:5]


def test_a_compiled_graph_gives_the_same_outputs(cluster, bundle):
    """Ray's compiled graph hands values between the stages over channels instead of one task per
    stage: the same outputs, one request or many in flight."""
    cm, path = bundle
    xs = [(torch.randn(4, 64),) for _ in range(20)]
    with distribute(path, resources=PLACES, compiled_graph=True) as dm:
        torch.testing.assert_close(dm(*xs[0])["y"], cm(*xs[0])["y"], rtol=1e-5, atol=1e-5)
        for (x,), y in zip(xs, dm.map(xs)):
            torch.testing.assert_close(y["y"], cm(x)["y"], rtol=1e-5, atol=1e-5)
        assert len(dm.trace[-1]) == 2


def test_a_dead_stage_gives_a_clear_error_and_nothing_hangs(cluster, bundle):
    _, path = bundle
    dm = distribute(path, resources=PLACES, wait_seconds=60)
    try:
        refs = [dm.submit(torch.randn(4, 64)) for _ in range(5)]
        ray.kill(dm._actors[1])
        started = time.monotonic()
        with pytest.raises(ClusterError, match="a stage's actor died"):
            for ref in refs:
                dm.result(ref)
        with pytest.raises(ClusterError, match="died"):
            dm(torch.randn(4, 64))
        assert time.monotonic() - started < 60
    finally:
        dm.close()


def test_closing_ends_the_stage_processes(cluster, bundle):
    _, path = bundle
    dm = distribute(path, resources=PLACES)
    assert all(_alive(pid) for pid in dm.pids)  # a local cluster: every node's processes are here
    dm.close()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in dm.pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in dm.pids)
    with pytest.raises(ClusterError, match="closed"):
        dm(torch.randn(4, 64))


def test_a_resource_no_node_has_is_refused_at_once(cluster, bundle):
    _, path = bundle
    started = time.monotonic()
    with pytest.raises(InputError, match=r"stage 1 asks for \{'dev_c': 1\}, which this Ray cluster does not have"):
        distribute(path, resources={"onnxruntime:cpu": {"dev_a": 1}, "openvino:cpu": {"dev_c": 1}})
    assert time.monotonic() - started < 30


def test_a_process_loads_only_its_own_segments(bundle):
    from hetcc.errors import TargetError

    cm, path = bundle
    part = hetcc.load(path, segments={"seg0"})
    first, second = part.runtime.steps
    x = torch.randn(4, 64)
    out = part.runtime.run_step(first, [x])
    assert len(out) == len(first.outputs)
    with pytest.raises(TargetError, match="not loaded in this process"):
        part.runtime.run_step(second, [out[0]])
    assert [s.steps for s in cut(cm.runtime.steps, cm.runtime.outputs, split_after="seg0")] == [("seg0",), ("seg1",)]


def test_stages_that_together_ask_for_more_than_the_cluster_has_are_refused(cluster, bundle):
    _, path = bundle
    with pytest.raises(InputError, match=r"the 2 stages together ask for \{'dev_a': 2\}"):
        distribute(path, resources={"onnxruntime:cpu": {"dev_a": 1}, "openvino:cpu": {"dev_a": 1}})


def test_a_process_without_a_stages_device_still_loads_the_others(bundle, tmp_path):
    """The driver and a CPU stage need not have the GPU another stage runs on: here seg1 claims
    torch:cuda:0, which this machine lacks."""
    import json
    import shutil

    from hetcc.errors import BundleError

    _, path = bundle
    copy = tmp_path / "gpu.bundle"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["segments"][1]["target"] = "torch:cuda:0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if not torch.cuda.is_available():
        with pytest.raises(BundleError, match="seg1 needs torch:cuda:0"):
            hetcc.load(copy)
    part = hetcc.load(copy, segments={"seg0"})
    assert [s.target for s in part.runtime.steps] == ["onnxruntime:cpu", "torch:cuda:0"]
    assert len(part.runtime.run_step(part.runtime.steps[0], [torch.randn(4, 64)])) == 2
