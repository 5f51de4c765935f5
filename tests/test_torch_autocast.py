"""torch:cuda@fp16 / @bf16 (backends/torch_autocast.py): autocast with the weights it would narrow
on every call held narrow once. The mechanism is device-generic and runs here on the CPU in bf16
(CPU autocast); what needs a GPU is marked and skipped without one."""
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


def test_autocast_is_asked_which_ops_it_narrows():
    # on the CPU autocast leaves aten.convolution in fp32: a weight narrowed for it would fail
    ops = ta.narrowed_ops("cpu", "bf16")
    aten = torch.ops.aten
    assert {aten.mm.default, aten.addmm.default, aten.bmm.default} <= ops
    assert aten.convolution.default not in ops


def test_only_weights_that_reach_narrowed_ops_alone_are_held_narrow(mixed):
    seg, _ = mixed
    ep = seg.export()
    names = ta.narrowable(ep, ta.narrowed_ops("cpu", "bf16"))
    # the linear's weight (permuted into an addmm) and its bias (autocast narrows the addmm's every
    # operand); not the tied table, which a gather reads too, nor the norm's weights
    assert names == {"p_lin_weight", "p_lin_bias"}, names
    narrowed = ta.narrow_state(ep, "bf16", "cpu")
    assert set(narrowed) == names and all(t.dtype == torch.bfloat16 for t in narrowed.values())


def test_narrowed_weights_give_plain_autocasts_result_in_the_declared_dtypes(mixed):
    seg, ids = mixed
    ep = seg.export()
    run = ta.autocast_call(tb._direct_call(ep, 1, ta.narrow_state(ep, "bf16", "cpu")), "cpu", "bf16",
                           [torch.float32])
    with torch.no_grad():
        got = run(ids)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = tb._direct_call(ep, 1)(ids)
    plain = (plain[0] if isinstance(plain, (tuple, list)) else plain)
    fp32 = seg.reference(ids)[0]
    assert got.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.equal(got, plain.float())  # the same rounding of the same weights
    assert 1e-4 < relative_error(got, fp32) < 3e-2  # it did run in bf16, and stayed close


def test_an_output_without_a_declared_dtype_is_left_as_it_comes(mixed):
    seg, ids = mixed
    ep = seg.export()
    run = ta.autocast_call(tb._direct_call(ep, 1), "cpu", "bf16", [None])
    assert run(ids)[0].dtype == torch.bfloat16


def test_the_artifacts_precision_and_output_dtypes_are_checked_at_load():
    assert ta.precision_of({}, "s") is None and ta.precision_of({"precision": "fp32"}, "s") is None
    assert ta.precision_of({"precision": "bf16"}, "s") == "bf16"
    with pytest.raises(BundleError, match=r"precision 'int4', which torch:cuda does not run.*recompile"):
        ta.precision_of({"precision": "int4"}, "s")
    meta = {"output_names": ["a", "b"]}
    assert ta.out_dtypes_of({**meta, "output_dtypes": ["float32", None]}, "s") == [torch.float32, None]
    for bad in (None, ["float32"], ["float32", "Tensor"], ["float32", 3], "float32"):
        with pytest.raises(BundleError, match="not a dtype name per output"):
            ta.out_dtypes_of({**meta, "output_dtypes": bad}, "s")


def test_lowering_for_a_gpu_records_the_precision_and_the_outputs_dtypes(mixed, tmp_path):
    seg, _ = mixed
    artifact = tb.TorchBackend(precision="fp16").lower(seg, Target.parse("torch:cuda:0"), tmp_path)
    assert artifact.meta["precision"] == "fp16" and artifact.meta["output_dtypes"] == ["float32"]
    plain = tb.TorchBackend().lower(seg, Target.parse("torch:cuda:0"), tmp_path / "plain")
    assert "precision" not in plain.meta and "output_dtypes" not in plain.meta


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


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_in_half_precision_compiles_verifies_and_bundles(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU does not compute in bf16")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.LayerNorm(64)).eval()
    x = torch.randn(8, 64)
    cm = hetcc.compile(model, (x,), targets=[f"torch:cuda:0@{precision}"], accuracy=0.02, measure=False)
    assert cm.plan.targets_used() == [f"torch:cuda:0@{precision}"], cm.plan.summary()
    got = cm(x)
    assert got.dtype == torch.float32
    with torch.no_grad():
        assert 0 < relative_error(got.cpu(), model(x)) < 0.02
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    torch.testing.assert_close(loaded(x), got)
