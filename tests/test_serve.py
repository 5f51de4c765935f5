"""A bundle served over HTTP with Ray Serve (issue 15): payloads in and out (JSON and .npz),
requests batched into one call where the bundle has a dynamic batch, clear 400s for bad payloads."""
from __future__ import annotations

import io
import json
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

import hetcc
from hetcc.cluster.serve import NPZ, batchable, decode, encode, run_batch
from hetcc.errors import InputError
from hetcc.module_paths import leaf_names


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x, scale):
        return {"y": self.body(x) * scale, "norm": x.norm(dim=1)}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    model = Mlp().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    args = (torch.randn(4, 8), torch.full((4, 1), 2.0))
    cm = hetcc.compile(model, args, targets=["onnxruntime:cpu"], tune="off",
                       dynamic_shapes=({0: batch}, {0: batch}))
    return cm, cm.save(tmp_path_factory.mktemp("serve") / "mlp.bundle")


def test_requests_that_come_together_run_as_one_call(compiled):
    cm, _ = compiled
    runtime = cm.runtime
    assert batchable(runtime)
    calls = []
    real = runtime.call_flat

    def counted(flat, seconds=None):
        calls.append(flat[0].shape[0])
        return real(flat, seconds)

    runtime.call_flat = counted
    try:
        requests = [[torch.randn(n, 8), torch.full((n, 1), 2.0)] for n in (1, 3, 2)]
        got = run_batch(runtime, requests)
    finally:
        del runtime.call_flat
    assert calls == [6]
    names = leaf_names(runtime.out_spec)
    for request, outs in zip(requests, got):
        want = cm(*request)
        for name, value in zip(names, outs):
            torch.testing.assert_close(value, want[name])


def test_payloads_decode_and_encode_both_ways(compiled):
    cm, _ = compiled
    runtime = cm.runtime
    x = [[0.5] * 8, [1.0] * 8]
    flat = decode(json.dumps({"inputs": {"x": x, "scale": [[1.0], [2.0]]}}).encode(), "application/json", runtime)
    assert flat[0].shape == (2, 8) and flat[0].dtype == torch.float32
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array(x, dtype=np.float32), scale=np.ones((2, 1), dtype=np.float32))
    assert torch.equal(decode(buffer.getvalue(), NPZ, runtime)[0], flat[0])
    body = json.loads(encode([torch.ones(2), torch.zeros(2, 4)], ["norm", "y"], npz=False))
    assert body == {"outputs": {"norm": [1.0, 1.0], "y": [[0.0] * 4] * 2}}
    with np.load(io.BytesIO(encode([torch.ones(2)], ["norm"], npz=True))) as data:
        assert data["norm"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("body, kind, says", [
    (b"{not json", "application/json", "the body is not JSON"),
    (b'{"inputs": {"x": [[1.0]]}}', "application/json", r"inputs lacks \['scale'\]"),
    (b'{"inputs": {"x": [[1.0, 2.0]], "scale": [[1.0]]}}', "application/json", "dimension 1 is 2"),
    (b'{"inputs": {"x": "abc", "scale": [[1.0]]}}', "application/json", "input 'x' is not a float32"),
    (b"not a zip", NPZ, "not a readable .npz"),
    (b"PK\x03\x04broken", NPZ, "not a readable .npz"),
])
def test_bad_payloads_say_what_is_wrong(compiled, body, kind, says):
    cm, _ = compiled
    with pytest.raises(InputError, match=says):
        decode(body, kind, cm.runtime)


def test_only_independent_batch_first_rows_are_batched():
    from types import SimpleNamespace

    from hetcc.runtime import TensorSpec

    def runtime(inputs, outputs):
        return SimpleNamespace(input_specs=[TensorSpec(f"i{k}", shape, torch.float32) for k, shape in enumerate(inputs)],
                               outputs=[f"o{k}" for k in range(len(outputs))],
                               output_specs=[TensorSpec(f"o{k}", shape, torch.float32) for k, shape in enumerate(outputs)])

    assert batchable(runtime([("b", 8)], [("b", 4)]))
    assert not batchable(runtime([("b", 8), ("c", 8)], [("b", 4)]))  # two different dynamic sizes
    assert not batchable(runtime([("b", "s")], [("b", 4)]))           # a dynamic sequence as well
    assert not batchable(runtime([("b", 8)], [(4,)]))                 # an output not per row
    assert not batchable(runtime([(2, 8)], [(2, 4)]))                 # a fixed batch


def test_a_stateful_bundle_is_neither_served_nor_distributed(tmp_path):
    """Its state lives in one process: replicas, batching or stages would split or merge it. Both
    refuse before any Ray starts."""
    from hetcc.cluster import distribute
    from hetcc.cluster.serve import start

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x * self.calls

    path = hetcc.compile(Counter(), (torch.randn(2),), tune="off").save(tmp_path / "counter")
    with pytest.raises(InputError, match="updates state"):
        start(path)
    with pytest.raises(InputError, match="stateful model runs in one process"):
        distribute(path)


@pytest.fixture(scope="module")
def server(compiled):
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from hetcc.cluster.serve import start

    _, path = compiled
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    url = start(path, port=port, max_batch=8, batch_wait_ms=20)
    yield url
    serve.shutdown()
    ray.shutdown()


def _post(url, body: bytes, kind="application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_served_endpoint_answers(compiled, server):
    cm, _ = compiled
    with urllib.request.urlopen(server + "health", timeout=60) as answer:
        assert json.loads(answer.read())["status"] == "ok"
    x, scale = torch.randn(3, 8), torch.full((3, 1), 2.0)
    status, body = _post(server, json.dumps({"inputs": {"x": x.tolist(), "scale": scale.tolist()}}).encode())
    assert status == 200
    got = json.loads(body)["outputs"]
    torch.testing.assert_close(torch.tensor(got["y"]), cm(x, scale)["y"], rtol=1e-5, atol=1e-5)
    status, body = _post(server, b'{"inputs": {"x": [[1.0, 2.0]], "scale": [[1.0]]}}')
    assert status == 400 and "dimension 1 is 2" in json.loads(body)["error"]


def test_concurrent_requests_each_get_their_own_answer(compiled, server):
    cm, _ = compiled
    xs = [torch.randn(n, 8) for n in (1, 2, 3, 4, 1, 2, 3, 4)]
    answers = [None] * len(xs)

    def ask(i):
        buffer = io.BytesIO()
        np.savez(buffer, x=xs[i].numpy(), scale=np.ones((xs[i].shape[0], 1), dtype=np.float32))
        status, body = _post(server, buffer.getvalue(), NPZ)
        with np.load(io.BytesIO(body)) as data:
            answers[i] = (status, torch.from_numpy(data["y"].copy()))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for x, (status, y) in zip(xs, answers):
        assert status == 200
        torch.testing.assert_close(y, cm(x, torch.ones(x.shape[0], 1))["y"], rtol=1e-5, atol=1e-5)
