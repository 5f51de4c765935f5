"""Where values live between segments (hetcc/handover.py): the runtime's copies, the cost model's
charges for them, output placement, and ONNX Runtime's IOBinding path.

The runtime's bookkeeping is checked with steps that *say* they run on "cuda:0" and a recording
stand-in for the copy, so the copies it makes are counted on a machine without a GPU; the real
copies run in the ``gpu`` tests (tests/test_gpu_backends.py) and in scripts/gpu_check.sh."""
from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.utils._pytree as pytree

from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend, gpu_problem
from hetcc.backends.ort_session import BoundExecutable
from hetcc.cost_model.profiles import DEFAULT_PROFILES
from hetcc.errors import InputError, TargetError
from hetcc.handover import KEEP, parse_output_device
from hetcc.runtime import Runtime, Step, TensorSpec
from hetcc.target import Target
from passes.build_problem import HANDOFF_LATENCY, TargetInfo, handoff
from test_backends import LinearReluNorm, make_segment


def _runtime(steps, outputs, n_inputs=1, output_device="cpu"):
    specs = [TensorSpec(f"x{i}", (4,), torch.float32) for i in range(n_inputs)]
    _, in_spec = pytree.tree_flatten(((torch.zeros(4),) * n_inputs, {}))
    _, out_spec = pytree.tree_flatten(tuple(range(len(outputs))))
    return Runtime(steps, specs, outputs, {}, in_spec, out_spec, {}, output_device=output_device)


def _recording(rt):
    """Replace the runtime's copy by one that records (value's first element, location)."""
    moves = []

    def move(x, location):
        moves.append((float(x.flatten()[0]), location))
        return x.clone()
    rt._move = move
    return moves


def _add(k):
    return lambda *xs: (sum(xs) + k,)


def test_a_value_is_copied_once_per_location_and_never_between_gpu_segments():
    # x (host) -> a on cpu -> b, c on cuda:0 (both read a) -> d on cpu reads c
    steps = [Step("s0", "torch:cpu", _add(1), ("x0",), ("a",)),
             Step("s1", "torch:cuda:0", _add(10), ("a",), ("b",), location="cuda:0"),
             Step("s2", "onnxruntime:cuda:0", _add(100), ("a", "b"), ("c",), location="cuda:0"),
             Step("s3", "openvino:cpu", _add(1000), ("c",), ("d",))]
    rt = _runtime(steps, ["d", "c"])
    moves = _recording(rt)
    d, c = rt(torch.zeros(4))
    # a crosses to the GPU once for both readers; b goes from s1 to s2 as it is (same GPU); c comes
    # back once, for s3 and for the output together
    assert moves == [(1.0, "cuda:0"), (112.0, "cpu")]
    assert float(d[0]) == 1112.0 and float(c[0]) == 112.0


def test_an_input_read_on_the_host_is_not_moved_to_the_gpu():
    # TensorRT reads shape tensors on the host: a step may read some inputs elsewhere than it runs
    steps = [Step("s0", "torch:cpu", _add(1), ("x0",), ("a",)),
             Step("s1", "tensorrt:cuda:0", _add(10), ("a", "x1"), ("b",), location="cuda:0",
                  input_locations=("cuda:0", "cpu"))]
    rt = _runtime(steps, ["b"], n_inputs=2)
    moves = _recording(rt)
    rt(torch.zeros(4), torch.zeros(4))
    assert moves == [(1.0, "cuda:0"), (11.0, "cpu")]  # a in, b out; x1 stays on the host


def test_outputs_kept_where_made_skip_the_copy_back():
    steps = [Step("s0", "torch:cuda:0", _add(1), ("x0",), ("a",), location="cuda:0")]
    rt = _runtime(steps, ["a", "x0"], output_device=KEEP)
    moves = _recording(rt)
    rt(torch.zeros(4))
    assert moves == [(0.0, "cuda:0")]  # in only: a stays on the GPU, x0 where the caller had it
    rt.output_device = "cpu"
    moves.clear()
    rt(torch.zeros(4))
    assert moves == [(0.0, "cuda:0"), (1.0, "cpu")]
    rt.output_device = "cuda:1"  # another GPU: both outputs go there
    moves.clear()
    rt(torch.zeros(4))
    assert moves == [(0.0, "cuda:0"), (1.0, "cuda:1"), (0.0, "cuda:1")]


def test_a_host_plan_moves_nothing_and_can_hand_outputs_to_a_gpu():
    steps = [Step("s0", "onnxruntime:cpu", _add(1), ("x0",), ("a",))]
    rt = _runtime(steps, ["a"])
    moves = _recording(rt)
    rt(torch.zeros(4))
    assert moves == []
    rt.output_device = "cuda"
    assert rt.output_device == "cuda:0"
    rt(torch.zeros(4))
    assert moves == [(1.0, "cuda:0")]


def test_copies_are_dropped_with_their_value():
    import gc
    import weakref

    held = {}

    def move(x, location):
        y = x.clone()
        held.setdefault("copies", []).append(weakref.ref(y))
        return y

    def check(*xs):
        gc.collect()
        held["alive"] = [r() is not None for r in held["copies"]]
        return (xs[0] + 1,)

    steps = [Step("s0", "torch:cpu", _add(1), ("x0",), ("a",)),
             Step("s1", "torch:cuda:0", _add(1), ("a",), ("b",), location="cuda:0"),
             Step("s2", "torch:cuda:0", check, ("b",), ("c",), location="cuda:0")]
    rt = _runtime(steps, ["c"], output_device=KEEP)
    rt._move = move
    rt(torch.zeros(4))
    assert held["alive"] == [False]  # a's GPU copy went with a, after s1, its last reader


def test_watch_copies_records_what_crosses():
    steps = [Step("s0", "torch:cuda:0", _add(1), ("x0",), ("a",), location="cuda:0")]
    rt = _runtime(steps, ["a"])
    rt._move = lambda x, location: x.clone()  # stands in for the real copy
    with rt.watch_copies() as copies:
        rt(torch.zeros(4))
    assert copies == [("cuda:0", (4,), 16), ("cpu", (4,), 16)]
    rt(torch.zeros(4))  # outside the block: not recorded
    assert len(copies) == 2


def test_output_device_spellings():
    assert parse_output_device("CPU") == "cpu"
    assert parse_output_device(torch.device("cuda", 2)) == "cuda:2"
    assert parse_output_device("keep") == "keep"
    for bad in ("gpu", "cuda:x", None, 3, "mps"):
        with pytest.raises(InputError, match="output_device must be 'cpu', 'cuda:N'"):
            parse_output_device(bad)


def test_inputs_on_another_kind_of_device_are_refused_with_what_to_do():
    steps = [Step("s0", "torch:cpu", _add(1), ("x0",), ("a",))]
    rt = _runtime(steps, ["a"])
    with pytest.raises(InputError, match="is on meta, but this program takes CPU or CUDA tensors"):
        rt(torch.zeros(4, device="meta"))


def test_compile_and_load_take_output_device(tmp_path):
    import hetcc

    model = LinearReluNorm().eval()
    x = torch.randn(3, 16)
    cm = hetcc.compile(model, (x,), ["torch:cpu"], tune="off", output_device="keep")
    assert cm.output_device == "keep"
    torch.testing.assert_close(cm(x), model(x))
    cm.output_device = "cpu"
    loaded = hetcc.load(cm.save(tmp_path / "b"), output_device="keep")
    assert loaded.output_device == "keep"
    with pytest.raises(InputError, match="output_device"):
        hetcc.compile(model, (x,), ["torch:cpu"], tune="off", output_device="gpu")
    with pytest.raises(InputError, match="output_device"):
        cm.output_device = "elsewhere"


# ---- what the cost model charges --------------------------------------------------------------

def _info(name, memory, bandwidth, latency=0.0, handoff_bandwidth=math.inf, location=None):
    profile = DEFAULT_PROFILES["torch"]
    if handoff_bandwidth != math.inf:
        import dataclasses
        profile = dataclasses.replace(profile, handoff_bandwidth=handoff_bandwidth)
    return TargetInfo(name, None, profile, math.inf, bandwidth, latency, memory=memory, location=location or memory)


def test_the_cost_model_charges_the_copies_the_runtime_makes():
    gpu_a = _info("torch:cuda:0", "cuda:0", 50e9, 10e-6)
    gpu_b = _info("onnxruntime:cuda:0", "cuda:0", 50e9, 10e-6)
    gpu_1 = _info("torch:cuda:1", "cuda:1", 50e9, 10e-6)
    cpu = _info("openvino:cpu", "cpu", math.inf, 0.0, handoff_bandwidth=20e9)
    # one GPU, two runtimes: the same device tensor, no copy
    assert handoff(gpu_a, gpu_b) == (HANDOFF_LATENCY, math.inf)
    # host <-> GPU: one copy over the host link (the slower of link and the CPU runtime's conversion)
    assert handoff(cpu, gpu_a) == (pytest.approx(HANDOFF_LATENCY + 10e-6), 20e9)
    assert handoff(None, gpu_a) == (pytest.approx(HANDOFF_LATENCY + 10e-6), 50e9)
    # two GPUs: a copy that crosses both links
    assert handoff(gpu_a, gpu_1) == (pytest.approx(HANDOFF_LATENCY + 20e-6), 50e9)
    # CPU runtimes share host memory but still convert (their handoff_bandwidth), as before
    assert handoff(cpu, _info("torch:cpu", "cpu", math.inf)) == (HANDOFF_LATENCY, 20e9)
    # a GPU runtime that takes host tensors and copies in itself (MIGraphX, IREE) shares the GPU's
    # memory but not the hand-over: values cross the host link
    mgx = _info("migraphx:rocm:0", "cuda:0", 50e9, 10e-6, location="cpu")
    assert handoff(gpu_a, mgx) == (pytest.approx(HANDOFF_LATENCY + 20e-6), 50e9)


def test_the_compiler_gives_each_target_its_hand_over_location():
    from hetcc.backends.registry import get_backend
    from hetcc.compiler import _location_of

    gpu_targets = {"torch:cuda:1": "cuda:1", "tensorrt:cuda": "cuda:0", "onnxruntime:cuda:0": "cuda:0",
                   "migraphx:rocm:0": "cpu", "iree:cuda:sm_90": "cpu", "torch:cpu": "cpu", "openvino:cpu": "cpu"}
    for name, want in gpu_targets.items():
        t = Target.parse(name)
        assert _location_of(t, get_backend(t.backend)) == want, name


# ---- onnxruntime:cuda -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort_artifact(tmp_path_factory):
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    target = Target.parse("onnxruntime:cpu")
    return seg, OnnxRuntimeBackend().lower(seg, target, tmp_path_factory.mktemp("ort"))


def test_the_iobinding_path_computes_what_the_plain_session_does(ort_artifact):
    seg, artifact = ort_artifact
    plain = OnnxRuntimeBackend().load(artifact, Target.parse("onnxruntime:cpu"))
    bound = BoundExecutable(plain.session, plain.input_names, plain.output_names, "s", device_type="cpu")
    assert bound.location == "cpu"
    for n in (4, 1, 9):
        x = torch.randn(n, 16)
        got, want = bound(x), plain(x)
        assert len(got) == len(want) == 1 and isinstance(got[0], torch.Tensor)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[0], seg.reference(x)[0], rtol=1e-4, atol=1e-5)
    # a view that is not contiguous is bound from a contiguous copy, not misread
    x = torch.randn(16, 5).t()
    torch.testing.assert_close(bound(x)[0], plain(x.contiguous())[0])


def test_the_iobinding_path_is_shared_by_threads(ort_artifact):
    seg, artifact = ort_artifact
    plain = OnnxRuntimeBackend().load(artifact, Target.parse("onnxruntime:cpu"))
    bound = BoundExecutable(plain.session, plain.input_names, plain.output_names, "s", device_type="cpu")
    errors = []

    def work(n):
        try:
            for _ in range(20):
                x = torch.randn(n, 16)
                torch.testing.assert_close(bound(x)[0], seg.reference(x)[0], rtol=1e-4, atol=1e-5)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 3, 7, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_onnxruntime_cuda_without_the_gpu_provider_says_what_to_install(monkeypatch):
    import onnxruntime

    from hetcc.backends import onnxruntime_backend as ortb

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    ortb._available_providers.cache_clear()
    try:
        backend = OnnxRuntimeBackend()
        target = Target.parse("onnxruntime:cuda:0")
        assert not backend.is_available(target)
        why = backend.why_unavailable(target)
        assert "no CUDAExecutionProvider" in why and "onnxruntime-gpu" in why
        assert "TensorrtExecutionProvider" in gpu_problem(target, "tensorrt")
        assert backend.is_available(Target.parse("onnxruntime:cpu"))
    finally:
        ortb._available_providers.cache_clear()


def test_onnxruntime_provider_option():
    assert OnnxRuntimeBackend(provider="tensorrt").provider == "tensorrt"
    with pytest.raises(TargetError, match="provider"):
        OnnxRuntimeBackend(provider="rocm")


def test_onnxruntime_cuda_has_a_gpu_profile():
    from hetcc.cost_model.target_devices import profile_name

    assert profile_name("onnxruntime:cuda:0") == "onnxruntime:cuda" in DEFAULT_PROFILES
    assert profile_name("onnxruntime:cpu") == "onnxruntime"
