"""backends/onnx_rounding.py: ONNX Runtime's int8 weights rounded to fit calibration batches
(GPTQ) — the rounding itself on plain arrays, on a hand-built tied head, and end to end through
compile(calibration=...)."""
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hetcc
from hetcc.backends import onnx_rounding
from hetcc.backends.onnx_rounding import fitted

LOW, HIGH = -64, 64  # signed weights in 7 bits, symmetric: as on a CPU without VNNI


def _correlated(rows, width, rank=6, seed=0, directions=0):
    """Inputs that mostly vary along ``rank`` directions (drawn from ``directions``), as a layer's
    activations do; ``seed`` draws the rows."""
    mix = np.random.default_rng(directions).standard_normal((rank, width))
    rng = np.random.default_rng(1000 + seed)
    return rng.standard_normal((rows, rank)) @ mix + 0.05 * rng.standard_normal((rows, width))


def _symmetric(weight):
    scale = np.abs(weight).max(axis=0) * 2 / (HIGH - LOW)
    return scale, np.zeros(weight.shape[1])


def _nearest(weight, scale, zero, low=LOW, high=HIGH):
    return np.clip(np.round(weight / scale) + zero, low, high)


def _moved(x, weight, steps, scale, zero):
    return np.linalg.norm(x @ (weight - (steps - zero) * scale))


def test_uncorrelated_inputs_of_equal_size_round_to_nearest():
    # with H a multiple of the identity no error has anywhere to go: GPTQ is rounding to nearest
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((40, 12))
    scale, zero = _symmetric(weight)
    steps = fitted(weight, 7.0 * np.eye(40), scale, zero, LOW, HIGH)
    assert np.array_equal(steps, _nearest(weight, scale, zero))


@pytest.mark.parametrize("unsigned", [False, True])
def test_fitted_steps_move_the_outputs_less_than_the_nearest_ones(unsigned):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((64, 24)) * 0.1
    if unsigned:  # uint8 with a zero point per column, as int8u stores them
        low, high = 0, 255
        lo, hi = np.minimum(weight.min(axis=0), 0), np.maximum(weight.max(axis=0), 0)
        scale = (hi - lo) / (high - low)
        zero = np.round(-lo / scale)
    else:
        low, high = LOW, HIGH
        scale, zero = _symmetric(weight)
    seen = _correlated(512, 64, seed=3)
    steps = fitted(weight, seen.T @ seen, scale, zero, low, high)
    nearest = _nearest(weight, scale, zero, low, high)
    assert steps.min() >= low and steps.max() <= high and steps.dtype == np.int64
    assert not np.array_equal(steps, nearest)
    # on the inputs it was fitted to, and on others from the same distribution
    assert _moved(seen, weight, steps, scale, zero) < 0.6 * _moved(seen, weight, nearest, scale, zero)
    fresh = _correlated(256, 64, seed=4)
    assert _moved(fresh, weight, steps, scale, zero) < 0.8 * _moved(fresh, weight, nearest, scale, zero)


def test_an_input_the_batches_never_saw_keeps_its_nearest_steps():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((32, 8))
    scale, zero = _symmetric(weight)
    x = _correlated(200, 32, seed=6)
    x[:, 7] = 0.0  # never nonzero on the batches: nothing says how it co-varies with the others
    steps = fitted(weight, x.T @ x, scale, zero, LOW, HIGH)
    nearest = _nearest(weight, scale, zero)
    assert np.array_equal(steps[7], nearest[7])
    assert not np.array_equal(steps, nearest)


def test_a_head_whose_rows_a_tied_table_reads_is_left_as_rounded(tmp_path):
    from hetcc.backends.onnx_quantize import quantize_file
    from hetcc.backends.onnx_tied import untie

    from tests.test_onnx_tied import _model

    source, target = tmp_path / "tied.onnx", tmp_path / "tied_int8.onnx"
    _model(source)
    model = onnx.load(str(source))
    tied = untie(model, source)
    assert tied  # the head got its own copy, which quantize_dynamic stores in int8
    quantize_file(source, target, tables=list(tied), tied=tied)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(target)).graph.initializer}
    ids = [(np.arange(16).reshape(1, 16),)]
    moments = onnx_rounding.second_moments(model, ["rows"], ["ids"], ids)
    assert moments["rows"].shape == (16, 16)
    assert onnx_rounding.fit(target, model, tied, moments, reduce_range=False, unsigned=False) == (0, 1)
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(target)).graph.initializer}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_a_weight_two_products_read_is_fitted_once_to_both_inputs(tmp_path):
    from onnx import TensorProto, helper

    from hetcc.backends.onnx_quantize import quantize_file

    rng = np.random.default_rng(8)
    weight = (0.1 * rng.standard_normal((32, 12))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["ya"], name="first"),
             helper.make_node("MatMul", ["b", "w"], ["yb"], name="second")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 32])
                                                for n in ("a", "b")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ya", "yb")],
                              [numpy_helper.from_array(weight, "w")])
    source, target = tmp_path / "shared.onnx", tmp_path / "shared_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_file(source, target, reduce_range=True)
    model = onnx.load(str(source))
    # the two readers see inputs that vary along different directions
    batches = [(_correlated(64, 32, seed=s, directions=1).astype(np.float32),
                _correlated(64, 32, seed=s, directions=2).astype(np.float32)) for s in range(3)]
    moments = onnx_rounding.second_moments(model, ["a", "b"], ["a", "b"], batches)
    a = np.concatenate([b[0] for b in batches]).astype(np.float64)
    np.testing.assert_allclose(moments["a"], a.T @ a, rtol=1e-5)
    assert onnx_rounding.fit(target, model, {}, moments, reduce_range=True, unsigned=False) == (1, 1)
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(target)).graph.initializer}
    scale, zero = stored["w_scale"].astype(np.float64), stored["w_zero_point"].astype(np.float64)
    want = fitted(weight, moments["a"] + moments["b"], scale, zero, LOW, HIGH)
    assert np.array_equal(stored["w_quantized"], want)
    assert stored["w_quantized"].min() >= LOW and stored["w_quantized"].max() <= HIGH


# ---- end to end ------------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(48, 96), nn.Linear(96, 16)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


MIX = torch.randn(6, 48, generator=torch.Generator().manual_seed(7))


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(64, 6, generator=g) @ MIX + 0.05 * torch.randn(64, 48, generator=g),)


def _compile(tmp_path, calibration=None):
    torch.manual_seed(0)
    model = Mlp().eval()
    cm = hetcc.compile(model, _inputs(0), ["onnxruntime:cpu@int8"], accuracy=0.2, tune="off",
                       calibration=calibration, workdir=tmp_path)
    return model, cm


def _weights(cm):
    (artifact,) = cm.artifacts.values()
    return artifact, {t.name: numpy_helper.to_array(t) for t in onnx.load(artifact.files["model"]).graph.initializer}


def _held_out_error(model, cm):
    worst = 0.0
    with torch.no_grad():
        for seed in range(20, 26):
            (x,) = _inputs(seed)
            want = model(x)
            worst = max(worst, float((cm(x) - want).norm() / want.norm()))
    return worst


def test_calibration_batches_fit_the_int8_weights_and_the_plan_says_so(tmp_path, caplog, monkeypatch, cpu):
    from hetcc.backends.onnx_quantize import reduced_range

    # 7-bit weights, as on a CPU without VNNI, on any machine: there the weights' rounding is most
    # of the error, which is what the fit reduces (with 8-bit weights on an AMX Xeon the inputs'
    # own per-call rounding is most of it, and the fit moved the held-out error 0.016 -> 0.0145)
    cpu(vnni=False)

    seen = []
    measured = onnx_rounding.second_moments

    def spy(model, names, input_names, batches):
        seen.append([b[0] for b in batches])
        return measured(model, names, input_names, batches)

    monkeypatch.setattr(onnx_rounding, "second_moments", spy)
    model, nearest = _compile(tmp_path / "nearest")
    assert not seen  # without batches nothing is fitted
    with caplog.at_level(logging.INFO, logger="hetcc"):
        _, cm = _compile(tmp_path / "fitted", calibration=[_inputs(s) for s in range(1, 5)])
    # fitted to the four batches, never to the example inputs the budget is measured on
    (given,) = seen
    assert len(given) == 4 and all(torch.equal(torch.as_tensor(x), _inputs(s)[0]) for x, s in zip(given, range(1, 5)))
    artifact, weights = _weights(cm)
    assert artifact.meta["fitted_rounding"] == {"method": "gptq", "weights": 2, "of": 2, "batches": 4}
    assert "2 of 2 int8 weights rounded to fit 4 calibration batches (GPTQ)" in caplog.text
    assert cm.plan.accuracy["fitted_batches"] == 4 and "calibration_batches" not in cm.plan.accuracy
    assert "int8 weights rounded to fit 4 calibration batch(es)" in cm.plan.summary()
    plain_artifact, plain = _weights(nearest)
    assert "fitted_rounding" not in (plain_artifact.meta or {})
    assert "fitted_batches" not in nearest.plan.accuracy
    # the same file but for which step each weight takes: same names, same scales
    assert weights.keys() == plain.keys()
    quantized = [k for k in weights if k.endswith("_quantized")]
    assert len(quantized) == 2
    low, high = (-64, 64) if reduced_range() else (-127, 127)
    for k in weights:
        if k.endswith("_quantized"):
            assert weights[k].dtype == plain[k].dtype and not np.array_equal(weights[k], plain[k])
            assert low <= weights[k].min() and weights[k].max() <= high
        else:
            assert np.array_equal(weights[k], plain[k]), k
    # and the model moves less on inputs neither saw
    assert _held_out_error(model, cm) < 0.8 * _held_out_error(model, nearest)


def test_the_fitted_batches_survive_a_bundle(tmp_path):
    _, cm = _compile(tmp_path / "fitted", calibration=[_inputs(s) for s in range(1, 4)])
    cm.save(tmp_path / "m.bundle")
    loaded = hetcc.load(tmp_path / "m.bundle")
    assert loaded.plan.accuracy["fitted_batches"] == 3
    assert "int8 weights rounded to fit 3 calibration batch(es)" in loaded.plan.summary()
    (x,) = _inputs(30)
    assert torch.equal(loaded(x), cm(x))


def test_a_fit_that_fails_leaves_rounding_to_nearest_and_says_why(tmp_path, monkeypatch, caplog):
    calls = []
    rounding = onnx_rounding.fitted

    def broken(*args, **kwargs):  # the first weight fits, the second fails: half way through the file
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("no luck")
        return rounding(*args, **kwargs)

    monkeypatch.setattr(onnx_rounding, "fitted", broken)
    monkeypatch.setattr(onnx_rounding, "_fits", {})  # fits of earlier tests would not call it
    model, nearest = _compile(tmp_path / "nearest")
    with caplog.at_level(logging.INFO, logger="hetcc"):
        _, cm = _compile(tmp_path / "failed", calibration=[_inputs(1)])
    artifact, weights = _weights(cm)
    assert "fitted_rounding" not in (artifact.meta or {}) and "fitted_batches" not in cm.plan.accuracy
    assert caplog.text.count("int8 weights rounded to nearest: fitting them failed (ValueError: no luck)") == 1
    assert len(calls) == 2
    plain = _weights(nearest)[1]
    assert all(np.array_equal(weights[k], plain[k]) for k in plain)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(48, 96), nn.Linear(96, 96), nn.Linear(96, 96), nn.Linear(96, 16)

    def forward(self, x):
        gelu = torch.nn.functional.gelu
        return self.d(gelu(self.c(gelu(self.b(gelu(self.a(x)))))))


def test_nodes_left_in_fp32_to_hold_the_limit_leave_the_rest_fitted(tmp_path, caplog):
    torch.manual_seed(0)
    model = Deep().eval()
    batches = [_inputs(s) for s in range(1, 5)]

    def compiled(accuracy, where):
        cm = hetcc.compile(model, _inputs(0), ["onnxruntime:cpu@int8"], accuracy=accuracy, tune="off",
                           calibration=batches, workdir=tmp_path / where)
        (artifact,) = cm.artifacts.values()
        return cm, artifact

    cm, artifact = compiled(0.2, "all")
    assert artifact.meta["fitted_rounding"]["weights"] == 4 and "kept_fp32" not in artifact.meta
    # a budget all four in int8 miss: some stay fp32, and the file quantized again without them is
    # fitted again, the note said once
    with caplog.at_level(logging.INFO, logger="hetcc"):
        cm, artifact = compiled(0.7 * cm.plan.accuracy["measured"], "kept")
    kept = artifact.meta["kept_fp32"]["nodes"]
    assert 1 <= len(kept) < 4
    assert artifact.meta["fitted_rounding"] == {"method": "gptq", "weights": 4 - len(kept), "of": 4 - len(kept),
                                                "batches": 4}
    assert caplog.text.count("int8 weights rounded to fit 4 calibration batches") == 1
    assert len([k for k in _weights(cm)[1] if k.endswith("_quantized")]) == 4 - len(kept)
