"""The CPU backends on their real runtimes: lower a segment, load it, compare with torch.

Never skipped: torch, ONNX Runtime and OpenVINO are test dependencies on every CPU machine."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import threading

import pytest
import torch
import torch.fx as fx

from hetcc.backends.base import Artifact
from hetcc.backends.registry import resolve
from hetcc.errors import LoweringError, TargetError
from hetcc.program import build_program
from hetcc.target import Target

BACKENDS = ["torch", "onnxruntime", "openvino"]


# --------------------------------------------------------------------------------------------
# helpers: a segment out of a real export


def make_segment(model, args, dynamic_shapes=None, select=None, name="seg"):
    """Export ``model``, decompose to core ATen, and build a SegmentProgram from the call_function
    nodes that ``select`` keeps (all by default). Returns (exported program, segment)."""
    ep = torch.export.export(model.eval(), args, dynamic_shapes=dynamic_shapes).run_decompositions()
    sig = ep.graph_signature
    weights = {}
    for spec in sig.input_specs:
        if spec.target is not None:
            tensor = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            weights[spec.arg.name] = tensor
    user_args = iter(args)
    flat = [weights[s.arg.name] if s.target is not None else next(user_args) for s in sig.input_specs]

    values: dict[str, object] = {}

    class Record(fx.Interpreter):
        def run_node(self, n):
            values[n.name] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Record(ep.graph_module).run(*flat)

    graph = ep.graph
    nodes = [n.name for n in graph.nodes if n.op == "call_function"]
    if select is not None:
        nodes = select(nodes)
    dynamic = {}
    for n in graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            dims = {i: str(s) for i, s in enumerate(val.shape) if isinstance(s, torch.SymInt)}
            if dims:
                dynamic[n.name] = dims
    ranges = {str(sym): (int(vr.lower), int(vr.upper) if vr.upper.is_finite else 2**31 - 2)
              for sym, vr in ep.range_constraints.items()}
    keep = [n.name for n in graph.output_node().all_input_nodes]
    return ep, build_program(name, graph, nodes, weights, values, dynamic, ranges, keep_outputs=keep)


def lower_and_load(name, segment, tmp_path):
    target = Target(name, "cpu")
    backend = resolve(target)
    artifact = backend.lower(segment, target, tmp_path / name)
    # Load from what a bundle would store: the artifact must survive JSON.
    artifact = Artifact(**json.loads(json.dumps(dataclasses.asdict(artifact))))
    for path in artifact.files.values():
        assert (tmp_path / name).joinpath(path).exists(), path
    return artifact, backend.load(artifact, target)


def assert_matches(got, want, atol=1e-4, rtol=1e-4):
    assert isinstance(got, tuple) and len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.is_floating_point:
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol)
        else:
            assert torch.equal(g, w)


# --------------------------------------------------------------------------------------------
# models


class LinearReluNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.out = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.out(self.norm(torch.relu(self.fc(x))))


class PostNorm(torch.nn.Module):
    """A residual add then LayerNorm, as after each block of BERT: ONNX Runtime's CPU session fuses
    the pair into SkipLayerNormalization unless told not to."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)
        self.norm = torch.nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(x + self.fc(x))


class RMSNorm(torch.nn.Module):
    """A linear layer then an RMS norm as T5 and Llama write it (rsqrt of the mean square)."""

    def __init__(self, rescale: bool = False):
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)
        self.weight = torch.nn.Parameter(torch.rand(32) + 0.5)
        self.rescale = rescale

    def forward(self, x):
        h = self.fc(x)
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        out = self.weight * (h * r)
        return (out, r) if self.rescale else out  # the rsqrt read twice: nothing to fuse


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Lookup(torch.nn.Module):
    """int64 indices and a bool mask in; a 0-d sum, a bool, an int64 and a float tensor out."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask.unsqueeze(-1).to(torch.float32)
        return h.sum(), h > 0, h.argmax(-1), ids * 2 + 1, h


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(12, 24)
        self.a = torch.nn.Linear(24, 4)
        self.b = torch.nn.Linear(24, 6)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.a(h), torch.softmax(self.b(h), -1), h.mean()


class Eigh(torch.nn.Module):
    def forward(self, x):
        w, v = torch.linalg.eigh(x @ x.transpose(-1, -2))
        return w + 1.0, v


class Misc(torch.nn.Module):
    def forward(self, x, y):
        return torch.lgamma(x.abs() + 1.0), torch.fft.rfft(x).abs(), y * 2.0


def node(ep, target):
    return next(n for n in ep.graph.nodes if n.op == "call_function" and n.target == target)


# --------------------------------------------------------------------------------------------
# lowering and running


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


def test_linear_relu_layernorm_from_mid_graph(backend_name, tmp_path):
    torch.manual_seed(0)
    # Skip the first node (the weight transpose) and the first matmul: the segment then starts at a
    # value produced elsewhere, like most segments of a real plan.
    _, seg = make_segment(LinearReluNorm(), (torch.randn(5, 16),), select=lambda names: names[2:])
    assert seg.input_names == ["addmm"]
    _, run = lower_and_load(backend_name, seg, tmp_path)
    x = torch.randn(5, 32)
    assert_matches(run(x), seg.reference(x))


def test_conv_batchnorm_eval(backend_name, tmp_path):
    torch.manual_seed(1)
    _, seg = make_segment(ConvBN(), (torch.randn(2, 3, 10, 10),))
    _, run = lower_and_load(backend_name, seg, tmp_path)
    x = torch.randn(2, 3, 10, 10)
    assert_matches(run(x), seg.reference(x))


def test_dynamic_batch(backend_name, tmp_path):
    torch.manual_seed(2)
    batch = torch.export.Dim("batch", min=1, max=64)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    assert seg.dynamic_dims[0], "batch should stay symbolic"
    _, run = lower_and_load(backend_name, seg, tmp_path)
    for n in (7, 1, 4):
        x = torch.randn(n, 16)
        assert_matches(run(x), seg.reference(x))


def test_int64_bool_and_scalar_outputs(backend_name, tmp_path):
    torch.manual_seed(3)
    ids = torch.randint(0, 50, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    _, seg = make_segment(Lookup(), (ids, mask))
    artifact, run = lower_and_load(backend_name, seg, tmp_path)
    assert artifact.meta["output_names"] == seg.output_names
    ids2, mask2 = torch.randint(0, 50, (3, 5)), torch.rand(3, 5) > 0.5
    got = run(ids2, mask2)
    assert_matches(got, seg.reference(ids2, mask2))
    kinds = {(t.dtype, t.dim()) for t in got}  # outputs come in graph order, not return order
    assert {(torch.float32, 0), (torch.bool, 3), (torch.int64, 2)} <= kinds


def test_multiple_outputs_and_no_buffer_reuse(backend_name, tmp_path):
    torch.manual_seed(4)
    # Trunk, head a and the mean, without head b: the trunk's tanh is read by head b outside the
    # segment, so it becomes an output next to the two model outputs computed here.
    _, seg = make_segment(TwoHeads(), (torch.randn(3, 12),), select=lambda names: names[:5] + names[-1:])
    assert seg.output_names == ["tanh", "addmm_1", "mean"]
    _, run = lower_and_load(backend_name, seg, tmp_path)
    a, b = torch.randn(3, 12), torch.randn(3, 12)
    first = run(a)
    kept = tuple(t.clone() for t in first)
    second = run(b)
    assert_matches(first, seg.reference(a))
    assert_matches(second, seg.reference(b))
    for f, k in zip(first, kept):  # results of one call survive the next call
        assert torch.equal(f, k)


def test_thread_safety(backend_name, tmp_path):
    torch.manual_seed(5)
    batch = torch.export.Dim("batch", min=1, max=64)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    _, run = lower_and_load(backend_name, seg, tmp_path)
    n_threads, n_calls = 8, 20
    # Each thread has its own inputs, with its own batch size, and its own expected results.
    inputs = [[torch.randn(1 + (t + i) % 5, 16) for i in range(n_calls)] for t in range(n_threads)]
    expected = [[seg.reference(x) for x in xs] for xs in inputs]
    errors: list[str] = []
    barrier = threading.Barrier(n_threads)

    def work(t):
        barrier.wait()
        for i, x in enumerate(inputs[t]):
            try:
                assert_matches(run(x), expected[t][i])
            except Exception as exc:  # collected, so one failure does not hide the rest
                errors.append(f"thread {t} call {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]


# --------------------------------------------------------------------------------------------
# capability


def test_supports_answers(backend_name):
    target = Target(backend_name, "cpu")
    backend = resolve(target)
    ep, _ = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    aten = torch.ops.aten
    for op in (aten.addmm.default, aten.relu.default, aten.native_layer_norm.default):
        assert backend.supports(node(ep, op), target), op
    for n in ep.graph.nodes:  # structural nodes never block a placement
        if n.op != "call_function" or "getitem" in str(n.target):
            assert backend.supports(n, target)

    eigh_ep, _ = make_segment(Eigh(), (torch.randn(4, 4),))
    misc_ep, _ = make_segment(Misc(), (torch.randn(8), torch.randn(3, dtype=torch.float64)))
    eigh = node(eigh_ep, aten._linalg_eigh.default)
    lgamma = node(misc_ep, aten.lgamma.default)
    rfft = node(misc_ep, aten._fft_r2c.default)
    double = next(n for n in misc_ep.graph.nodes if n.target == aten.mul.Tensor)
    answers = {n: backend.supports(n, target) for n in (eigh, lgamma, rfft, double)}
    if backend_name == "torch":
        assert all(answers.values())
        return
    for n in (eigh, lgamma, rfft):
        assert not answers[n], n
        assert answers[n].reason
    assert "aten._linalg_eigh.default" in answers[eigh].reason
    assert "aten.lgamma.default" in answers[lgamma].reason
    assert "complex" in answers[rfft].reason
    if backend_name == "onnxruntime":
        assert "no ONNX translation" in answers[eigh].reason
        assert "prims.lgamma" in answers[lgamma].reason  # the exporter's decomposition stops there
        assert answers[double]
    else:
        assert "OpenVINO" in answers[eigh].reason
        assert not answers[double] and "float64" in answers[double].reason


def test_onnx_supports_ops_it_decomposes():
    target = Target("onnxruntime", "cpu")
    backend = resolve(target)

    class VarMean(torch.nn.Module):
        def forward(self, x):
            v, m = torch.var_mean(x, dim=1)
            return v + m

    ep, _ = make_segment(VarMean(), (torch.randn(3, 5),))
    op = torch.ops.aten.var_mean.correction
    assert backend.supports(node(ep, op), target)


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_lowering_failure_is_a_lowering_error(name, tmp_path):
    _, seg = make_segment(Eigh(), (torch.randn(4, 4),), name="seg_eigh")
    target = Target(name, "cpu")
    with pytest.raises(LoweringError) as info:
        resolve(target).lower(seg, target, tmp_path)
    message = str(info.value)
    assert "seg_eigh" in message and name in message
    assert info.value.__cause__ is not None
    assert (tmp_path / "failed_segment.pt2").exists()
    assert str(tmp_path / "failed_segment.pt2") in message
    assert len(message.splitlines()) == 1


def test_unknown_and_unusable_targets():
    with pytest.raises(TargetError) as info:
        resolve(Target("nosuch", "cpu"))
    for name in BACKENDS:
        assert name in str(info.value)
    with pytest.raises(TargetError) as info:
        resolve(Target("onnxruntime", "cuda"))
    assert "cpu" in str(info.value) and "torch:cpu" in str(info.value)


def test_backends_are_available_here():
    for name in BACKENDS:
        target = Target(name, "cpu")
        backend = resolve(target)
        assert backend.is_available(target), backend.why_unavailable(target)
        assert backend.versions()


def test_onnx_external_data_when_large(tmp_path, monkeypatch):
    from hetcc.backends import onnxruntime_backend

    monkeypatch.setattr(onnxruntime_backend, "_EMBED_LIMIT", 0)  # as if the weights were > 2 GB
    torch.manual_seed(6)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    artifact, run = lower_and_load("onnxruntime", seg, tmp_path)
    assert artifact.meta["external_data"] and "weights" in artifact.files
    x = torch.randn(2, 16)
    assert_matches(run(x), seg.reference(x))


class _LogicalAnd(torch.nn.Module):
    def forward(self, x):
        return torch.logical_and(x > 0, x < 1).float() * x


class _Sdpa(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("model,inputs", [
    (_LogicalAnd(), (torch.randn(4, 8),)),
    (_Sdpa(), tuple(torch.randn(2, 4, 16, 8) for _ in range(3))),
], ids=["logical_and", "sdpa"])
def test_openvino_converts_the_ops_listed_beyond_its_table(model, inputs):
    import hetcc
    from hetcc.backends.openvino_backend import CONVERTED_BEYOND_TABLE

    cm = hetcc.compile(model, inputs, targets=["openvino:cpu"])
    assert cm.plan.targets_used() == ["openvino:cpu"] and cm.plan.attempts == 1
    ops = {f"torch.ops.{op}" for s in cm.plan.segments for op in s.ops}
    assert ops & CONVERTED_BEYOND_TABLE
    torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def test_openvino_config_is_allow_listed_so_a_bundle_cannot_direct_file_writes(tmp_path):
    from hetcc.backends.openvino_backend import OpenVinoBackend

    with pytest.raises(TargetError, match="CACHE_DIR"):
        OpenVinoBackend(config={"CACHE_DIR": str(tmp_path)})
    ok = OpenVinoBackend(config={"NUM_STREAMS": 1})
    assert ok.config == {"NUM_STREAMS": "1"}
    forged = Artifact("openvino:cpu", {"model": str(tmp_path / "m.xml")},
                      {"input_names": ["x"], "config": {"CACHE_DIR": str(tmp_path / "cache")}})
    with pytest.raises(TargetError, match="not allowed"):
        ok.load(forged, Target("openvino", "cpu"))
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------------
# options: what a user sets reaches the runtime, and a bundle keeps it


def _ort_session_settings(run) -> tuple:
    options = run.session.get_session_options()
    return (options.intra_op_num_threads, options.graph_optimization_level.name,
            options.get_session_config_entry("session.intra_op.allow_spinning"),
            options.get_session_config_entry("session.inter_op.allow_spinning"))


def test_onnxruntime_options_reach_the_session_and_the_artifact(tmp_path):
    torch.manual_seed(7)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    target = Target("onnxruntime", "cpu")
    backend = resolve(target, {"threads": 1, "optimization": "basic", "spinning": "on"})
    artifact = backend.lower(seg, target, tmp_path / "a")
    artifact = Artifact(**json.loads(json.dumps(dataclasses.asdict(artifact))))  # as a bundle stores it
    assert {k: artifact.meta[k] for k in ("threads", "optimization", "spinning", "skip_layernorm")} == \
        {"threads": 1, "optimization": "basic", "spinning": "on", "skip_layernorm": "split"}
    run = backend.load(artifact, target)
    assert _ort_session_settings(run) == (1, "ORT_ENABLE_BASIC", "1", "1")
    x = torch.randn(2, 16)
    assert_matches(run(x), seg.reference(x))
    # any backend object loads it the same way: the settings travel in the artifact
    assert _ort_session_settings(resolve(target).load(artifact, target)) == (1, "ORT_ENABLE_BASIC", "1", "1")

    def load(**meta):
        return _ort_session_settings(resolve(target).load(
            Artifact(artifact.target, artifact.files, {**artifact.meta, **meta}), target))

    # spinning: on/off are fixed; auto follows the plan (meta runs_alone, set by the compiler)
    assert load(spinning="off", runs_alone=True)[2:] == ("0", "0")
    assert load(spinning="auto", runs_alone=True)[2:] == ("1", "1")
    assert load(spinning="auto", runs_alone=False)[2:] == ("0", "0")
    # an artifact from before these options runs with their defaults
    old = {k: v for k, v in artifact.meta.items()
           if k not in ("threads", "optimization", "spinning", "skip_layernorm")}
    assert _ort_session_settings(resolve(target).load(Artifact(artifact.target, artifact.files, old), target)) \
        == (0, "ORT_ENABLE_ALL", "0", "0")
    with pytest.raises(TargetError, match="threads must be integer from 0 to 1024, got 100000"):
        load(threads=100000)  # a bundle cannot make ONNX Runtime start a hundred thousand threads


def _fused_ops(path, disabled) -> list[str]:
    """The ops of ``path`` as an ONNX Runtime CPU session optimizes it, with ``disabled`` optimizers."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path) + ".optimized.onnx"
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(disabled) or None)
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_onnxruntime_leaves_add_and_layernorm_split_on_the_cpu(tmp_path, monkeypatch):
    import onnxruntime as ort

    from hetcc.backends import onnxruntime_backend

    torch.manual_seed(3)
    _, seg = make_segment(PostNorm(), (torch.randn(2, 4, 32),))  # fused only on [batch, seq, hidden]
    target = Target("onnxruntime", "cpu")
    artifact = resolve(target).lower(seg, target, tmp_path / "a")
    assert artifact.meta["skip_layernorm"] == "split"
    # the optimizer named is the one that fuses this export in the ONNX Runtime installed (it
    # ignores a name it does not know, so a rename would silently bring the slow kernel back)
    model = artifact.files["model"]
    assert "SkipLayerNormalization" in _fused_ops(model, ())
    split = _fused_ops(model, onnxruntime_backend.SPLIT_FUSIONS)
    assert "SkipLayerNormalization" not in split and "LayerNormalization" in split

    # and load hands it to the session: split by default, fused when asked, fused for an artifact
    # from before the option (as it was verified)
    made = []

    class Recording(ort.InferenceSession):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("disabled_optimizers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    x = torch.randn(2, 4, 32)
    for meta, disabled in (({}, ["SkipLayerNormFusion"]), ({"skip_layernorm": "fused"}, None)):
        run = resolve(target).load(Artifact(artifact.target, artifact.files, {**artifact.meta, **meta}), target)
        assert made[-1] == disabled
        assert_matches(run(x), seg.reference(x))
    old = {k: v for k, v in artifact.meta.items() if k != "skip_layernorm"}
    resolve(target).load(Artifact(artifact.target, artifact.files, old), target)
    assert made[-1] is None
    fused = resolve(target, {"skip_layernorm": "fused"}).lower(seg, target, tmp_path / "b")
    assert fused.meta["skip_layernorm"] == "fused"
    # the command that reproduces a failed load opens the session the same way, and runs
    command = resolve(target).load_command(artifact)
    assert 'disabled_optimizers=["SkipLayerNormFusion"]' in command
    assert "disabled_optimizers" not in resolve(target).load_command(fused)
    assert subprocess.run(command, shell=True, capture_output=True).returncode == 0


def test_onnxruntime_gets_rms_norms_it_fuses(tmp_path):
    import onnx

    torch.manual_seed(3)
    x = torch.randn(2, 4, 32)
    _, seg = make_segment(RMSNorm(), (x,))
    target = Target("onnxruntime", "cpu")
    artifact = resolve(target).lower(seg, target, tmp_path / "a")
    assert artifact.meta["rsqrt_as_div"] == 1
    ops = [n.op_type for n in onnx.load(artifact.files["model"]).graph.node]
    assert "Reciprocal" not in ops and "Div" in ops
    # the form ONNX Runtime's own fusion matches: the norm is one kernel in the session
    assert "SimplifiedLayerNormalization" in _fused_ops(artifact.files["model"], ())
    assert_matches(resolve(target).load(artifact, target)(x), seg.reference(x))

    # an rsqrt with another reader stays as it is
    _, seg = make_segment(RMSNorm(rescale=True), (x,))
    artifact = resolve(target).lower(seg, target, tmp_path / "b")
    assert "rsqrt_as_div" not in artifact.meta
    assert "Reciprocal" in [n.op_type for n in onnx.load(artifact.files["model"]).graph.node]
    assert_matches(resolve(target).load(artifact, target)(x), seg.reference(x))


@pytest.mark.parametrize("options,message", [
    ({"thread": 2}, "has no option 'thread'; it takes threads"),
    ({"threads": -1}, "threads must be integer from 0 to 1024"),
    ({"threads": True}, "threads must be integer"),
    ({"optimization": "max"}, "optimization must be one of disable, basic, extended, all"),
    ({"spinning": "sometimes"}, "spinning must be one of auto, on, off"),
    ({"skip_layernorm": "off"}, "skip_layernorm must be one of split, fused"),
])
def test_onnxruntime_bad_options_are_named(options, message):
    with pytest.raises(TargetError, match=message):
        resolve(Target("onnxruntime", "cpu"), options)


def _ov_precision(run) -> str:
    from hetcc.backends.openvino_backend import _precision_name

    return _precision_name(run.compiled.get_property("INFERENCE_PRECISION_HINT"))


def test_openvino_records_the_precision_that_ran(tmp_path, caplog):
    from hetcc.backends.openvino_backend import _precision_run_for

    torch.manual_seed(8)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    target = Target("openvino", "cpu")
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        backend = resolve(target, {"precision": "f16", "threads": 1})  # OpenVINO's own, older spelling
    assert backend.precision == "fp16" and "precision='f16' is a deprecated spelling; write 'fp16'" in caplog.text
    artifact = backend.lower(seg, target, tmp_path / "a")
    run = backend.load(artifact, target)
    # whatever this CPU does with fp16 (bf16 on AVX-512 BF16 without FP16, fp32 on older x86),
    # the artifact says what the plugin runs, not what was asked for
    assert artifact.meta["requested_precision"] == "fp16"
    assert artifact.meta["precision"] == _ov_precision(run) == _precision_run_for("fp16")
    assert run.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    default = resolve(target).lower(seg, target, tmp_path / "b")
    assert default.meta["precision"] == "fp32" and _ov_precision(resolve(target).load(default, target)) == "fp32"
    # a bundle written before the one spelling loads as it was verified, without a warning
    caplog.clear()
    old = Artifact(default.target, default.files, {**default.meta, "precision": "f32"})
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        assert _ov_precision(resolve(target).load(old, target)) == "fp32"
    assert not caplog.text


def test_openvino_warns_when_the_cpu_lacks_the_precision(tmp_path, caplog, monkeypatch):
    from hetcc.backends import openvino_backend

    # as on a CPU without bf16: the plugin resolves the bf16 hint to fp32
    monkeypatch.setattr(openvino_backend, "_precision_run_for", lambda p: "fp32" if p == "bf16" else p)
    torch.manual_seed(9)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    target = Target("openvino", "cpu")
    backend = resolve(target, {"precision": "bf16"})
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        first = backend.lower(seg, target, tmp_path / "a")
        second = backend.lower(seg, target, tmp_path / "b")
    assert caplog.text.count("precision bf16 was asked for, but this CPU's OpenVINO plugin runs fp32") == 1
    assert "OPTIMIZATION_CAPABILITIES" in caplog.text
    for artifact in (first, second):  # verified, and later loaded, in what ran
        assert (artifact.meta["requested_precision"], artifact.meta["precision"]) == ("bf16", "fp32")
    assert _ov_precision(backend.load(first, target)) == "fp32"


def test_openvino_load_warns_when_this_cpu_runs_another_precision(tmp_path, caplog):
    from hetcc.backends.openvino_backend import _precision_run_for

    torch.manual_seed(10)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(2, 16),))
    target = Target("openvino", "cpu")
    artifact = resolve(target).lower(seg, target, tmp_path / "a")
    # as if verified in fp16 on a CPU with fp16 arithmetic; this one runs what its plugin picks
    moved = Artifact(artifact.target, artifact.files, {**artifact.meta, "precision": "fp16"})
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        ran = _ov_precision(resolve(target).load(moved, target))
    assert ran == _precision_run_for("fp16")
    warned = f"segment {artifact.meta['segment']} was verified in fp16, but OpenVINO's CPU plugin runs it in {ran}"
    assert (warned in caplog.text) == (ran != "fp16")


def test_openvino_properties_with_an_option_are_set_by_the_option():
    from hetcc.backends.openvino_backend import OpenVinoBackend

    for key, option in (("INFERENCE_PRECISION_HINT", "precision"), ("INFERENCE_NUM_THREADS", "threads")):
        with pytest.raises(TargetError, match=f"{key} has an option of its own: write openvino.{option}="):
            OpenVinoBackend(config={key: "1"})
    with pytest.raises(TargetError, match="openvino option precision must be one of fp32, fp16, bf16"):
        OpenVinoBackend(precision="f64")


def test_the_plan_says_which_precision_ran(tmp_path):
    """OpenVINO runs another precision where the CPU lacks the one asked for: the plan records what
    ran (and a note says so), also after a bundle round trip."""
    import hetcc
    import mlp
    from backends.openvino_backend import _precision_run_for

    model, inputs = mlp.build(batch=2)
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu"], measure=False, rtol=0.1, atol=0.1,
                       backend_options={"openvino": {"precision": "fp16"}})
    ran = _precision_run_for("fp16")  # what this CPU's plugin does for fp16: fp16, bf16 or fp32
    assert [s.precision for s in cm.plan.segments if s.target == "openvino:cpu"] == [ran]
    said = [n for n in cm.plan.notes if "fp16 was asked for" in n]
    assert said == ([] if ran == "fp16" else [f"seg0 on openvino:cpu ran in {ran}: fp16 was asked for, "
                                               f"and this machine's openvino runs {ran} for it; verified in {ran}"])
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    assert [s.precision for s in loaded.plan.segments] == [ran]
    plain = hetcc.compile(model, inputs, targets=["openvino:cpu"], measure=False)
    assert [s.precision for s in plain.plan.segments] == ["fp32"] and not plain.plan.notes


def test_openvino_named_options_win_over_a_bundles_config_and_the_load_command_runs(tmp_path):
    """A bundle's config must not undo the thread cap or the precision it was verified in; the
    command a failed load prints loads the model as load does."""
    import subprocess

    import hetcc
    import mlp
    from backends.openvino_backend import _load_config
    from hetcc.backends.registry import get_backend

    meta = {"config": {"INFERENCE_NUM_THREADS": "100000", "INFERENCE_PRECISION_HINT": "bf16",
                       "NUM_STREAMS": "1"}}
    assert _load_config(meta, "fp32", 0) == {"NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    assert _load_config(meta, "fp32", 2)["INFERENCE_NUM_THREADS"] == "2"

    model, inputs = mlp.build(batch=2)
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu"], tune="off")
    command = get_backend("openvino").load_command(cm.artifacts["seg0"])
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- the base class owns the template ----

def _builtin_backend_classes():
    import importlib

    from hetcc.backends.registry import BUILTIN

    return {name: getattr(importlib.import_module(spec.partition(":")[0]), spec.partition(":")[2])
            for name, spec in BUILTIN.items()}


def test_every_builtin_backend_fills_in_the_template_and_overrides_none_of_it():
    from hetcc.backends.base import Backend

    owned = ("unavailable", "is_available", "why_unavailable", "supports", "banned")
    for name, cls in _builtin_backend_classes().items():
        assert issubclass(cls, Backend), name
        own = cls.__mro__[:cls.__mro__.index(Backend)]
        overridden = [m for m in owned if any(m in vars(k) for k in own)]
        assert not overridden, f"{name} overrides {overridden}, which the base class owns"
        assert cls.name == name and cls.devices


def test_backends_import_no_sibling_backend():
    """Shared helpers live in modules of their own (onnx_export, _common, hetcc.gpus)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "backends"
    backend_modules = {p.stem for p in root.glob("*_backend.py")}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "hetcc.backends":
                modules = [a.name for a in node.names]  # from hetcc.backends import torch_backend
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hetcc.backends."):
                modules = [node.module.split(".")[2]]
            elif isinstance(node, ast.Import):
                modules = [a.name.split(".")[2] for a in node.names if a.name.startswith("hetcc.backends.")]
            else:
                continue
            for imported in modules:
                assert imported not in backend_modules or imported == path.stem, \
                    f"{path.name} imports {imported}: move what it needs into a shared module"


def _doc_backend_source() -> str:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "backends.md").read_text()
    section = doc.split("### A whole backend", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_backend_in_the_docs_compiles_a_model(tmp_path):
    import hetcc
    from hetcc.backends.registry import register_backend

    namespace: dict = {}
    exec(compile(_doc_backend_source(), "docs/backends.md", "exec"), namespace)
    register_backend("numpy", namespace["NumpyBackend"])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x, y):
            return torch.tanh(torch.relu(x) * y + y), self.fc(x)

    model, args = Model().eval(), (torch.randn(4, 8), torch.randn(4, 8))
    # the cost model has no profile for numpy, so the ops are pinned to it by node name
    cm = hetcc.compile(model, args, ["numpy:cpu", "torch:cpu"], tune="off",
                       pins=dict.fromkeys(("relu", "mul", "add", "tanh"), "numpy:cpu"))
    on_numpy = [s for s in cm.plan.segments if s.target == "numpy:cpu"]
    assert on_numpy and "torch:cpu" in cm.plan.targets_used()  # the Linear is refused, with its reason
    for got, want in zip(cm(*args), model(*args)):
        torch.testing.assert_close(got, want)
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    torch.testing.assert_close(loaded(*args)[0], model(*args)[0])
    backend = namespace["NumpyBackend"]()
    node = next(n for n in torch.export.export(Model(), args).run_decompositions().graph.nodes
                if n.op == "call_function" and "addmm" in str(n.target))
    answer = backend.supports(node, hetcc.Target.parse("numpy:cpu"))
    assert not answer and "aten.addmm.default is not one of the numpy backend's ufuncs" in answer.reason
    half = backend.supports(next(n for n in torch.export.export(Model().half(), tuple(a.half() for a in args))
                                 .run_decompositions().graph.nodes if n.op == "call_function"
                                 and "relu" in str(n.target)), hetcc.Target.parse("numpy:cpu"))
    assert not half and "float16 tensors: kept to float32 and float64" in half.reason


def test_openvino_copies_small_inputs_into_its_request_and_shares_large_ones(tmp_path):
    from hetcc.backends import openvino_backend

    torch.manual_seed(6)
    small, large = torch.randn(5, 16), torch.randn(1100, 16)  # 320 B, then 70 KB > COPY_IN_BYTES
    assert large.numel() * 4 > openvino_backend.COPY_IN_BYTES
    for x in (small, large):
        _, seg = make_segment(LinearReluNorm(), (x,))
        _, run = lower_and_load("openvino", seg, tmp_path / str(len(x)))
        xs = [torch.randn_like(x) for _ in range(3)]
        results = [run(v) for v in xs]  # each call sees its own input, not the previous one's
        for v, got in zip(xs, results):
            assert_matches(got, seg.reference(v))
        copied = run._request()[1][0] is not None
        assert copied == (x is small)
        if copied:
            # the request reads its own buffer: changing the caller's tensor after a call changes
            # nothing, and the next call reads the new values
            v = torch.randn_like(x)
            first = run(v)
            v.add_(1.0)
            assert_matches(run(v), seg.reference(v))
            assert not torch.equal(first[0], run(v)[0])


class AddTwo(torch.nn.Module):
    def forward(self, x, y):
        return x + y, x * y


def test_openvino_keeps_a_large_inputs_contiguous_copy_alive_through_the_call(tmp_path):
    # a non-contiguous input (a transpose, a permute handed over mid-model) is copied to contiguous
    # memory that the request then shares: that copy must live until inference returns. It did
    # not, and OpenVINO read freed memory: 8 of 65536 elements of a Llama's RoPE add were wrong.
    from hetcc.backends import openvino_backend

    torch.manual_seed(9)
    x, y = torch.randn(256, 300).t(), torch.randn(256, 300).t()
    assert not x.is_contiguous() and x.numel() * 4 > openvino_backend.COPY_IN_BYTES
    _, seg = make_segment(AddTwo(), (x.contiguous(), y.contiguous()))
    _, run = lower_and_load("openvino", seg, tmp_path)
    for _ in range(5):
        a, b = torch.randn(256, 300).t(), torch.randn(256, 300).t()
        got = run(a, b)
        assert torch.equal(got[0], a + b) and torch.equal(got[1], a * b)


def test_openvino_reads_fixed_shape_outputs_from_the_requests_own_buffers(tmp_path):
    # a fixed-shape output is copied out of a view of the request's buffer kept from the first
    # call; a dynamic one is asked of the request each call (it may reallocate it)
    torch.manual_seed(8)
    batch = torch.export.Dim("batch", min=1, max=64)
    for dynamic in (None, ({0: batch},)):
        _, seg = make_segment(LinearReluNorm(), (torch.randn(4, 16),), dynamic_shapes=dynamic)
        _, run = lower_and_load("openvino", seg, tmp_path / str(bool(dynamic)))
        xs = [torch.randn(4 if not dynamic else 2 + i, 16) for i in range(3)]
        results = [run(v) for v in xs]
        for v, got in zip(xs, results):  # each result is its own call's, and survives the next
            assert_matches(got, seg.reference(v))
        views = run._request()[2]
        assert (views[0] is None) == bool(dynamic), views


def test_openvino_input_of_another_layout_drops_the_copy_and_stays_right(tmp_path):
    torch.manual_seed(7)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(5, 16),))
    _, run = lower_and_load("openvino", seg, tmp_path)
    x = torch.randn(5, 16)
    assert_matches(run(x), seg.reference(x))
    assert run._request()[1][0] is not None
    wide = torch.randn(5, 16, dtype=torch.float64)  # not the buffer's dtype: set, not copied
    with pytest.raises(Exception):
        run(wide)  # OpenVINO refuses f64 for an f32 input, in its own words
    assert run._request()[1][0] is None  # from now on the request reads the set tensor
    y = torch.randn(5, 16)
    assert_matches(run(y), seg.reference(y))


def test_openvino_copy_in_is_per_thread(tmp_path):
    torch.manual_seed(8)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(5, 16),))
    _, run = lower_and_load("openvino", seg, tmp_path)
    inputs = [[torch.randn(5, 16) for _ in range(30)] for _ in range(6)]
    errors: list[str] = []
    barrier = threading.Barrier(len(inputs))

    def work(t):
        barrier.wait()
        for i, x in enumerate(inputs[t]):
            try:
                assert_matches(run(x), seg.reference(x))
            except Exception as exc:
                errors.append(f"thread {t} call {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
