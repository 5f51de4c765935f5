"""End to end: every example on every CPU target alone and on all three together."""
import threading

import pytest
import torch

import cnn
import encoder
import gpt
import hetcc
import mlp
from conftest import CPU_TARGETS

EXAMPLES = {"mlp": mlp, "cnn": cnn, "encoder": encoder, "gpt": gpt}
CONFIGS = [[t] for t in CPU_TARGETS] + [CPU_TARGETS]


@pytest.mark.parametrize("targets", CONFIGS, ids=lambda ts: "+".join(t.split(":")[0] for t in ts))
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_matches_eager(name, targets):
    model, inputs = EXAMPLES[name].build()
    compiled = hetcc.compile(model, inputs, targets=targets)
    with torch.no_grad():
        want = model(*inputs)
    got = compiled(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    used = set(compiled.plan.targets_used())
    assert used <= set(targets) | {"torch:cpu"}
    for seg in compiled.plan.segments:
        assert seg.max_error is not None and seg.max_error <= 1e-4
    # a second call with other values gives their answer, not a cached one
    other = tuple(torch.randint_like(x, 0, 2048) if not x.is_floating_point() else torch.randn_like(x)
                  for x in inputs)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*other), model(*other), rtol=1e-4, atol=1e-4)


class Structured(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, extra):
        h = self.lin(x)
        return {"h": h, "pair": (h.relu(), [extra * 2, h.sum()])}


@pytest.mark.parametrize("targets", [["torch:cpu"], CPU_TARGETS])
def test_outputs_keep_the_model_structure(targets):
    model = Structured().eval()
    x, extra = torch.randn(3, 8), torch.randn(5)
    compiled = hetcc.compile(model, (x, extra), targets=targets)
    got = compiled(x, extra)
    want = model(x, extra)
    assert set(got) == {"h", "pair"} and isinstance(got["pair"], tuple) and isinstance(got["pair"][1], list)
    torch.testing.assert_close(got, want)


def test_dynamic_batch_runs_other_batch_sizes():
    model, (x,) = mlp.build(batch=8)
    batch = torch.export.Dim("batch", min=1, max=256)
    compiled = hetcc.compile(model, (x,), targets=CPU_TARGETS, dynamic_shapes=({0: batch},))
    for n in (1, 3, 8, 100):
        xn = torch.randn(n, x.shape[1])
        with torch.no_grad():
            torch.testing.assert_close(compiled(xn), model(xn), rtol=1e-4, atol=1e-4)


def test_dynamic_batch_on_a_transformer_with_reshapes():
    model, (x,) = encoder.build(batch=2, seq=16)
    batch = torch.export.Dim("batch", min=1, max=64)
    compiled = hetcc.compile(model, (x,), targets=CPU_TARGETS, dynamic_shapes=({0: batch},))
    xn = torch.randn(5, 16, x.shape[2])
    with torch.no_grad():
        torch.testing.assert_close(compiled(xn), model(xn), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("targets", [["openvino:cpu"], ["onnxruntime:cpu"], CPU_TARGETS])
def test_concurrent_calls_from_threads_are_correct(targets):
    model, (x,) = cnn.build(batch=2)
    compiled = hetcc.compile(model, (x,), targets=targets)
    inputs = [torch.randn_like(x) for _ in range(8)]
    with torch.no_grad():
        want = [model(i) for i in inputs]
    errors = []

    def worker(j):
        for _ in range(10):
            got = compiled(inputs[j])
            if not torch.allclose(got, want[j], rtol=1e-4, atol=1e-4):
                errors.append(j)

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_scratch_directory_lives_as_long_as_the_compiled_model(tmp_path):
    import gc
    from pathlib import Path

    model, inputs = mlp.build(batch=2)
    compiled = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"])
    (artifact,) = compiled.artifacts.values()
    scratch = Path(artifact.files["model"]).parents[1]
    assert scratch.name.startswith("hetcc-") and scratch.exists()
    del compiled
    gc.collect()
    assert not scratch.exists()
    # a workdir the user names is theirs: hetcc leaves it in place
    kept = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], workdir=tmp_path / "work")
    del kept
    gc.collect()
    assert any((tmp_path / "work").rglob("model.onnx"))


def test_signature_uses_the_users_dim_names():
    model, (x,) = encoder.build(batch=2, seq=16)
    batch = torch.export.Dim("batch", min=1, max=64)
    compiled = hetcc.compile(model, (x,), targets=["torch:cpu"], dynamic_shapes=({0: batch},))
    assert compiled.signature == "(x: float32[batch, 16, 128])"


def test_an_exported_program_compiles_with_its_own_example_inputs():
    model, inputs = mlp.build(batch=4)
    ep = torch.export.export(model, inputs)
    compiled = hetcc.compile(ep, None, targets=["onnxruntime:cpu"])
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs), rtol=1e-4, atol=1e-4)


def test_inputs_that_are_views_compile():
    # a sliced input carries export symbols with an infinite upper bound
    model, (x,) = mlp.build(batch=8)
    view = x[:4]
    compiled = hetcc.compile(model, (view,), targets=["torch:cpu"])
    with torch.no_grad():
        torch.testing.assert_close(compiled(view.clone()), model(view))
    ids = torch.randint(0, 2048, (2, 16))
    gpt_model, _ = gpt.build()
    compiled = hetcc.compile(gpt_model, (ids[:, :8],), targets=["torch:cpu"])
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids[:, :8].clone()), gpt_model(ids[:, :8]))


def test_a_segment_returns_only_what_is_read_later():
    """torch.export puts an _assert_tensor_metadata node beside every .to(dtype); no segment runs
    it, and the value it reads must not become a segment output (HF T5 returned 12 such values)."""
    class Casts(torch.nn.Module):
        def forward(self, x):
            h = (x * 2).to(torch.float64)
            return (h + 1).to(torch.float32) * 3

    x = torch.randn(4, 8)
    cm = hetcc.compile(Casts(), (x,), targets=["onnxruntime:cpu"], measure=False)
    graph = cm._captured.graph
    assert any("_assert_tensor_metadata" in str(n.target) for n in graph.nodes), "nothing to test"
    assert [len(s.outputs) for s in cm.plan.segments] == [1]
    torch.testing.assert_close(cm(x), Casts()(x))


def test_compiling_shows_no_torch_leafspec_warning():
    """torch.export's decomposition copies the LeafSpecs torch made, and torch 2.13 warns that the
    class is deprecated; hetcc quiets that one message (hetcc/torch_quirks.py) and no other."""
    import warnings

    from hetcc.torch_quirks import leafspec_warning_quieted

    model, (x,) = mlp.build(batch=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # past pytest.ini's own filter for this message
        hetcc.compile(model, (x,), targets=["torch:cpu"], measure=False)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with leafspec_warning_quieted():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_resident_inputs_count_against_memory_and_unknown_names_are_refused():
    """An input that stays on the device (a KV cache) is part of the segment's resident bytes; a
    memory limit it breaks is a placement error, not a plan that cannot hold it."""
    from hetcc.errors import InputError

    model = torch.nn.Linear(64, 64)
    x = torch.randn(32, 64)
    plain = hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], tune="off")
    kept = hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], tune="off", resident_inputs=("inp",))
    assert kept.plan.segments[0].resident_bytes == plain.plan.segments[0].resident_bytes + x.numel() * 4
    with pytest.raises(InputError, match="resident_inputs names \\['cache'\\], which match no model input"):
        hetcc.compile(model, (x,), tune="off", resident_inputs=("cache",))


class CacheStart(torch.nn.Module):
    """Hugging Face's cache starts each layer as ``torch.tensor([])`` and concatenates the first
    keys to it: torch.cat skips a 1-D empty tensor beside 4-D ones, ONNX and OpenVINO refuse it."""

    def forward(self, empty, k, past):
        return torch.cat([empty, past, k], dim=-2) * 2


class CacheStartInside(torch.nn.Module):
    """As Hugging Face does it: the empty tensor is made in forward (a lifted constant, cloned)."""

    def forward(self, k, past):
        return torch.cat([torch.tensor([]), past, k], dim=-2) * 2


@pytest.mark.parametrize("target", ["onnxruntime:cpu", "openvino:cpu"])
def test_a_cat_with_an_empty_1d_input_lowers_where_the_runtime_wants_equal_ranks(target):
    empty, k, past = torch.tensor([]), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    # pinned to the runtime (torch:cpu would take so small a model); without the rewrite its
    # Concat refuses a rank-1 input beside rank-4 ones and no target is left for the cat
    cm = hetcc.compile(CacheStart(), (empty, k, past), targets=[target, "torch:cpu"], tune="off",
                       pins={"cat": target, "mul": target})
    assert [s.target for s in cm.plan.segments] == [target]
    assert torch.equal(cm(empty, k, past), CacheStart()(empty, k, past))
    inside = hetcc.compile(CacheStartInside(), (k, past), targets=[target], tune="off")
    assert torch.equal(inside(k, past), CacheStartInside()(k, past))
    from hetcc.capture import capture

    graph = capture(CacheStartInside(), (k, past)).graph
    (cat,) = [n for n in graph.nodes if n.target is torch.ops.aten.cat.default]
    assert [a.meta["val"].dim() for a in cat.args[0]] == [4, 4]
    assert not any(n.target is torch.ops.aten.clone.default for n in graph.nodes)  # the clone went too


def test_skipping_empty_cat_inputs_leaves_other_cats_alone():
    from hetcc.capture import skip_empty_cat_inputs

    class Cats(torch.nn.Module):
        def forward(self, empty, a, b):
            return torch.cat([empty, a], 0), torch.cat([empty, b], -2), torch.cat([a, a], 0)

    args = (torch.tensor([]), torch.randn(3), torch.randn(2, 4, 4))
    gm = torch.export.export(Cats(), args).graph_module
    assert skip_empty_cat_inputs(gm) == 1  # only the 3-D one: 1-D cats keep their empty input
    cats = [n for n in gm.graph.nodes if n.target is torch.ops.aten.cat.default]
    assert [len(n.args[0]) for n in cats] == [2, 1, 2]
    assert all(torch.equal(g, w) for g, w in zip(gm(*args), Cats()(*args)))


def test_an_empty_cat_input_that_decides_the_dtype_is_kept():
    from hetcc.capture import skip_empty_cat_inputs

    class Promotes(torch.nn.Module):
        def forward(self, empty, ids):
            return torch.cat([empty, ids], -1)  # float32: the empty float input promotes the integers

    args = (torch.tensor([]), torch.arange(6).reshape(2, 3))
    gm = torch.export.export(Promotes(), args).graph_module
    assert skip_empty_cat_inputs(gm) == 0
    assert gm(*args)[0].dtype == Promotes()(*args).dtype == torch.float32
