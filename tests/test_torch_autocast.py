"""torch:cuda@fp16 / @bf16 (backends/torch_autocast.py): autocast with the weights it would narrow
on every call held narrow once. The mechanism is device-generic and runs here on the CPU in bf16
(CPU autocast); what needs a GPU is marked and skipped without one."""
import copy

import pytest
import torch
from torch import nn

import hetcc
from hetcc.backends import torch_autocast as ta
from hetcc.backends import torch_backend as tb
from hetcc.backends.registry import resolve
from hetcc.errors import BundleError, TargetError
from hetcc.error_budget import relative_error
from hetcc.target import Target
from test_backends import make_segment


class Mixed(nn.Module):
    """A tied embedding/head (read by a gather too), a linear and a norm. No convolution: CPU
    autocast leaves aten.convolution in fp32 and then fails on the bf16 activations it is handed
    (on CUDA it narrows it)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(300, 64)
        self.lin = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 300, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.norm(torch.relu(self.lin(self.emb(ids)))))


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 16))
    _, seg = make_segment(Mixed().eval(), (ids,))
    return seg, ids


def test_autocast_is_asked_which_ops_it_casts():
    # on the CPU autocast leaves aten.convolution in fp32: a weight cast ahead for it would fail
    ops = ta.cast_ops("cpu", "bf16")
    aten = torch.ops.aten
    assert {aten.mm.default, aten.addmm.default, aten.bmm.default} <= ops
    assert aten.convolution.default not in ops


def test_only_weights_that_reach_cast_ops_alone_are_cast_ahead(mixed):
    seg, _ = mixed
    ep = copy.deepcopy(seg.export())  # cast in place; the segment keeps its own
    names = ta.weights_to_cast(ep, ta.cast_ops("cpu", "bf16"))
    # the linear's weight (permuted into an addmm) and its bias (autocast casts the addmm's every
    # operand); not the tied table, which a gather reads too, nor the norm's weights
    assert names == {"p_lin_weight", "p_lin_bias"}, names
    ta.cast_weights(ep, "bf16", "cpu")
    assert ta.declared_dtypes(ep) == [torch.float32]
    assert {n for n, t in ep.state_dict.items() if t.dtype == torch.bfloat16} == names


def _run(seg, ids, prepared: bool):
    """The segment as torch:cuda's load prepares it (tb.autocast_program: cast, moved, widened),
    here on the CPU; or as plain autocast would run it."""
    ep = copy.deepcopy(seg.export())
    if prepared:
        ep, out_dtypes = tb.autocast_program(ep, "bf16", torch.device("cpu"))
    else:
        out_dtypes = [torch.float32]
    with torch.no_grad():
        return ta.autocast_call(tb._direct_call(ep, 1), "cpu", "bf16", out_dtypes)(ids)[0], ep


def test_weights_cast_ahead_give_plain_autocasts_result_in_the_declared_dtypes(mixed):
    seg, ids = mixed
    got, ep = _run(seg, ids, prepared=True)
    plain, _ = _run(seg, ids, prepared=False)  # autocast casting the fp32 weights itself
    assert ep.state_dict["p_lin_weight"].dtype == torch.bfloat16  # the call read the cast copy
    assert got.dtype == torch.float32
    assert torch.equal(got, plain)  # the same rounding of the same weights
    assert 1e-4 < relative_error(got, seg.reference(ids)[0]) < 3e-2  # it did run in bf16, and stayed close
    ep.state_dict["p_lin_weight"].zero_()  # and what the call reads is that copy
    with torch.no_grad():
        changed = ta.autocast_call(tb._direct_call(ep, 1), "cpu", "bf16", [torch.float32])(ids)[0]
    assert not torch.equal(changed, got)


class Widened(nn.Module):
    """A softmax, a log_softmax and a group norm after a linear, and a float64 weight."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.norm = nn.GroupNorm(4, 16)
        self.wide = nn.Linear(16, 4).double()

    def forward(self, x):
        h = self.lin(x)
        h = self.norm(torch.softmax(h, -1) + torch.log_softmax(h, -1))
        return h, self.wide(x.double())


def test_decomposed_fp32_ops_get_fp32_inputs_and_float64_weights_stay(tmp_path):
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    x = torch.randn(8, 16)
    _, seg = make_segment(Widened().eval(), (x,))
    ep = copy.deepcopy(seg.export())
    aten = torch.ops.aten
    assert {aten._softmax.default, aten._log_softmax.default, aten.native_group_norm.default} <= \
        {n.target for n in ep.graph.nodes}  # the core forms, which autocast does not widen
    # as torch:cuda's load does: the move's verifier runs before the graph calls the widening
    ep, out_dtypes = tb.autocast_program(ep, "bf16", torch.device("cpu"))
    assert out_dtypes == [torch.float32, torch.float64]
    assert all(t.dtype in (torch.float32, torch.float64) for n, t in ep.state_dict.items() if "wide" in n)

    seen = {}

    class Dtypes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ta.FP32_CORE_OPS:
                seen[func] = args[0].dtype
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Dtypes():
        got = ta.autocast_call(tb._direct_call(ep, 1), "cpu", "bf16", out_dtypes)(x)
    assert seen == {aten._softmax.default: torch.float32, aten._log_softmax.default: torch.float32,
                    aten.native_group_norm.default: torch.float32}
    assert [g.dtype for g in got] == [torch.float32, torch.float64]
    want = seg.reference(x)
    assert relative_error(got[0], want[0]) < 3e-2 and torch.allclose(got[1], want[1])


def test_an_output_without_a_declared_float_dtype_is_left_as_it_comes(mixed):
    seg, ids = mixed
    ep = seg.export()
    for declared in ([None], [torch.int64], []):
        with torch.no_grad():
            assert ta.autocast_call(tb._direct_call(ep, 1), "cpu", "bf16", declared)(ids)[0].dtype == torch.bfloat16


def test_the_artifacts_precision_is_checked_at_load():
    assert ta.precision_of({}, "s") is None and ta.precision_of({"precision": "fp32"}, "s") is None
    assert ta.precision_of({"precision": "bf16"}, "s") == "bf16"
    for bad in ("int4", [], {}, 3, "x" * 500):
        with pytest.raises(BundleError, match=r"which torch:cuda does not run.*recompile it"):
            ta.precision_of({"precision": bad}, "s")


@pytest.mark.parametrize("listed, meta, offered, error", [
    ("torch:cuda:0@fp16", {"precision": "bf16"}, ("fp16", "bf16"), "listed for torch:cuda:0@fp16 but its artifact runs bf16"),
    ("torch:cuda:0@fp16", {}, ("fp16", "bf16"), "artifact runs fp32"),
    ("torch:cuda:0@bf16", {"precision": "bf16"}, ("fp16",), "does not compute in here \\(it offers fp16\\)"),
    ("torch:cuda:0", {"precision": "fp16"}, ("fp16",), None),  # the precision option, not the target
])
def test_loading_checks_the_precision_against_the_target_and_the_gpu(monkeypatch, listed, meta, offered, error):
    backend = tb.TorchBackend()
    monkeypatch.setattr(backend, "precisions", lambda target: offered)
    if error is None:
        assert backend._precision_here(meta, Target.parse(listed), "s") == meta["precision"]
        return
    with pytest.raises((BundleError, TargetError), match=error):
        backend._precision_here(meta, Target.parse(listed), "s")


def test_lowering_for_a_gpu_records_the_precision(mixed, tmp_path):
    seg, _ = mixed
    artifact = tb.TorchBackend(precision="fp16").lower(seg, Target.parse("torch:cuda:0"), tmp_path)
    assert artifact.meta["precision"] == "fp16"
    plain = tb.TorchBackend().lower(seg, Target.parse("torch:cuda:0"), tmp_path / "plain")
    assert "precision" not in plain.meta


def test_the_precision_option_reaches_torch_cuda_only():
    assert tb.TorchBackend(precision="bf16").precision == "bf16" and tb.TorchBackend().precision == "fp32"
    with pytest.raises(TargetError, match="precision must be one of fp32, fp16, bf16"):
        tb.TorchBackend(precision="int8")
    assert tb.TorchBackend().precisions(Target.parse("torch:cpu")) == ()
    with pytest.raises(TargetError, match="torch does not run fp16 on cpu"):
        resolve(Target.parse("torch:cpu@fp16"))
    model, x = nn.Linear(4, 4).eval(), torch.randn(2, 4)
    with pytest.raises(TargetError, match="changes only torch:cuda.*reference every other runtime"):
        hetcc.compile(model, (x,), targets=["torch:cpu"], backend_options={"torch": {"precision": "fp16"}})


@pytest.mark.parametrize("bf16, offered", [(True, ("fp16", "bf16")), (False, ("fp16",))])
def test_a_gpu_offers_bf16_only_where_it_computes_in_it(monkeypatch, bf16, offered):
    import contextlib

    asked = []
    monkeypatch.setattr(tb, "cuda_problem", lambda target: None)
    monkeypatch.setattr(torch.cuda, "device", lambda index: asked.append(index) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 and not including_emulation)
    assert tb.TorchBackend().precisions(Target.parse("torch:cuda:1")) == offered
    assert asked == [1]


HAVE_CUDA = torch.cuda.is_available()


class GpuMix(nn.Module):
    """A convolution (CUDA autocast casts it), a group norm and a softmax (widened to fp32)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)
        self.lin = nn.Linear(8 * 6 * 6, 32)

    def forward(self, x):
        return torch.softmax(self.lin(self.norm(self.conv(x)).flatten(1)), -1)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_in_half_precision_compiles_verifies_and_bundles(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU does not compute in bf16")
    torch.manual_seed(0)
    model, x = GpuMix().eval(), torch.randn(4, 3, 8, 8)
    assert torch.ops.aten.convolution.default in ta.cast_ops("cuda:0", precision)
    cm = hetcc.compile(model, (x,), targets=[f"torch:cuda:0@{precision}"], accuracy=0.02, measure=False)
    assert cm.plan.targets_used() == [f"torch:cuda:0@{precision}"], cm.plan.summary()
    got = cm(x)
    assert got.dtype == torch.float32
    with torch.no_grad():
        assert 0 < relative_error(got.cpu(), model(x)) < 0.02
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    torch.testing.assert_close(loaded(x), got)
