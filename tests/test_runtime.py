"""The stitching runtime on hand-made steps: order, freeing, output structure."""
import gc
import weakref

import pytest
import torch
import torch.utils._pytree as pytree

from hetcc.runtime import Runtime, Step, TensorSpec


def _runtime(steps, outputs):
    specs = [TensorSpec("x", (4,), torch.float32)]
    _, in_spec = pytree.tree_flatten(((torch.zeros(4),), {}))
    _, out_spec = pytree.tree_flatten(tuple(range(len(outputs))))
    return Runtime(steps, specs, outputs, {}, in_spec, out_spec, {})


def test_intermediates_are_freed_after_their_last_reader():
    seen = {}

    def make(name):
        def run(*xs):
            out = xs[0] + 1
            seen[name] = weakref.ref(out)
            return (out,)
        return run

    def check_a_is_gone(*xs):
        gc.collect()
        seen["a_alive_during_c"] = seen["a"]() is not None
        return (xs[0] * 2,)

    steps = [Step("s0", "t", make("a"), ("x",), ("a",)),
             Step("s1", "t", make("b"), ("a",), ("b",)),
             Step("s2", "t", check_a_is_gone, ("b",), ("c",))]
    rt = _runtime(steps, ["c", "b"])
    assert steps[0].frees == ("x",) and steps[1].frees == ("a",)
    assert "b" not in steps[2].frees  # an output is never freed
    c, b = rt(torch.zeros(4))
    assert seen["a_alive_during_c"] is False
    torch.testing.assert_close(c, torch.full((4,), 4.0))
    torch.testing.assert_close(b, torch.full((4,), 2.0))


def test_model_inputs_can_be_outputs_and_steps_run_in_order():
    order = []

    def adder(i):
        def run(x):
            order.append(i)
            return (x + i,)
        return run

    steps = [Step(f"s{i}", "t", adder(i), (src,), (dst,))
             for i, (src, dst) in enumerate([("x", "a"), ("a", "b")])]
    rt = _runtime(steps, ["b", "x"])
    b, x = rt(torch.ones(4))
    assert order == [0, 1]
    torch.testing.assert_close(b, torch.full((4,), 2.0))
    torch.testing.assert_close(x, torch.ones(4))


def test_a_number_where_a_tensor_belongs_in_a_structure_is_refused_not_misaligned():
    import hetcc
    from hetcc.errors import InputError

    class Summed(torch.nn.Module):
        def forward(self, d):
            return d["a"] + d["b"]

    cm = hetcc.compile(Summed(), ({"a": torch.ones(2), "b": torch.ones(2)},), tune="off")
    with pytest.raises(InputError, match="got 1 tensor"):
        cm({"a": torch.ones(2), "b": 3.0})
