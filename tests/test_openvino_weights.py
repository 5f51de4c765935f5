"""int8 weight compression of an OpenVINO model (backends/openvino_weights.py): group-wise scales
along the reduction axis, MatMul weights in either layout, embedding tables by row, convolution
weights along in-channels x kernel."""
from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from hetcc.backends import openvino_weights  # noqa: E402
from hetcc.backends.openvino_weights import GROUP, compress_weights  # noqa: E402


def _run(model, *feeds):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    result = compiled([*feeds])
    return result[compiled.outputs[0]]


def _matmul_model(weights, transpose_b: bool):
    x = ops.parameter([4, weights.shape[1] if transpose_b else weights.shape[0]], ov.Type.f32)
    y = ops.matmul(x, ops.constant(weights), transpose_a=False, transpose_b=transpose_b)
    return ov.Model([y], [x])


def _i8_constants(model):
    return [n for n in model.get_ordered_ops()
            if n.get_type_name() == "Constant" and n.get_element_type() == ov.Type.i8]


@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_weights_become_int8_with_a_scale_per_group_along_the_reduction(transpose_b):
    rng = np.random.default_rng(0)
    k, n = 4 * GROUP, 48
    weights = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
    x = rng.standard_normal((4, k)).astype(np.float32)
    model = _matmul_model(weights, transpose_b)
    want = _run(model, x)
    assert compress_weights(model) == {"matmuls": 1, "embeddings": 0, "convolutions": 0}
    (q,) = _i8_constants(model)
    # K/G groups of G along K for every output column, whichever side K is on
    assert list(q.get_output_shape(0)) == ([n, k // GROUP, GROUP] if transpose_b else [k // GROUP, GROUP, n])
    got = _run(model, x)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 1e-4 < rel < 0.01  # rounded, and by about what int8 of a Gaussian loses (~0.5 %)


def test_an_outlier_costs_only_its_own_group(monkeypatch):
    """One large weight sets the scale of its group alone: the column's other groups keep their
    precision, where one scale per column would round all of them 100x coarser."""
    rng = np.random.default_rng(1)
    k, n = 4 * GROUP, 8
    weights = rng.standard_normal((k, n)).astype(np.float32)
    weights[0, :] = 100.0
    x = np.zeros((4, k), dtype=np.float32)
    x[:, GROUP:] = rng.standard_normal((4, k - GROUP))  # reads every group but the outlier's
    model = _matmul_model(weights, transpose_b=False)
    want = _run(model, x)
    compress_weights(model)
    grouped = np.linalg.norm(_run(model, x) - want) / np.linalg.norm(want)

    per_column = _matmul_model(weights, transpose_b=False)
    monkeypatch.setattr(openvino_weights, "GROUP", k)  # one group: a scale per column
    compress_weights(per_column)
    coarse = np.linalg.norm(_run(per_column, x) - want) / np.linalg.norm(want)
    assert grouped < 0.01 < coarse and grouped * 20 < coarse


def test_a_reduction_that_does_not_split_into_groups_gets_one_scale_per_column():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((GROUP + 16, 64)).astype(np.float32)  # K = 48: no whole groups of 32
    model = _matmul_model(weights, transpose_b=False)
    x = rng.standard_normal((4, GROUP + 16)).astype(np.float32)
    want = _run(model, x)
    compress_weights(model)
    (q,) = _i8_constants(model)
    assert list(q.get_output_shape(0)) == [GROUP + 16, 64]
    assert np.linalg.norm(_run(model, x) - want) / np.linalg.norm(want) < 0.01


def test_embedding_tables_are_compressed_by_row_and_small_or_other_weights_are_left():
    rng = np.random.default_rng(3)
    rows = openvino_weights.MIN_TABLE_ROWS
    table = rng.standard_normal((rows, 2 * GROUP)).astype(np.float32)
    positions = rng.standard_normal((rows - 1, 2 * GROUP)).astype(np.float32)  # too few rows
    small = rng.standard_normal((4, 8)).astype(np.float32)  # below MIN_ELEMENTS
    ids = ops.parameter([5], ov.Type.i64)
    axis0 = ops.constant(np.array(0, dtype=np.int64))
    looked_up = ops.gather(ops.constant(table), ids, axis0)
    position = ops.gather(ops.constant(positions), ids, axis0)
    columns = ops.gather(ops.constant(table.T.copy()), ops.constant(np.array([1, 2], dtype=np.int64)),
                         ops.constant(np.array(1, dtype=np.int64)))  # not a row lookup: left as it is
    y = ops.matmul(looked_up, ops.constant(rng.standard_normal((2 * GROUP, 4)).astype(np.float32)), False, False)
    z = ops.matmul(ops.constant(small), ops.constant(small.T.copy()), False, False)
    model = ov.Model([looked_up, columns, y, z, position], [ids])
    feed = np.array([0, 5, rows - 2, 5, 7], dtype=np.int64)
    compiled = ov.Core().compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    want = [compiled([feed])[o] for o in compiled.outputs]
    assert compress_weights(model) == {"matmuls": 0, "embeddings": 1, "convolutions": 0}  # the 64x4 weight is too small
    (q,) = _i8_constants(model)
    assert list(q.get_output_shape(0)) == [rows, 2, GROUP]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = [compiled([feed])[o] for o in compiled.outputs]
    assert np.linalg.norm(got[0] - want[0]) / np.linalg.norm(want[0]) < 0.01
    assert all(np.array_equal(got[i], want[i]) for i in (1, 3, 4))


def test_a_table_tied_to_the_output_projection_is_compressed_once():
    rng = np.random.default_rng(4)
    vocab, width = 2048, 2 * GROUP
    tied = ops.constant(rng.standard_normal((vocab, width)).astype(np.float32))
    ids = ops.parameter([3], ov.Type.i64)
    hidden = ops.gather(tied, ids, ops.constant(np.array(0, dtype=np.int64)))
    logits = ops.matmul(hidden, tied, transpose_a=False, transpose_b=True)  # [3, vocab]
    model = ov.Model([logits], [ids])
    assert compress_weights(model) == {"matmuls": 1, "embeddings": 1, "convolutions": 0}
    (q,) = _i8_constants(model)  # one i8 copy read by both
    assert list(q.get_output_shape(0)) == [vocab, 2, GROUP]
    assert not any(n.get_type_name() == "Constant" and n.get_element_type() == ov.Type.f32
                   and list(n.get_output_shape(0)) == [vocab, width] for n in model.get_ordered_ops())


def test_a_weight_something_else_reads_too_stays_f32():
    rng = np.random.default_rng(5)
    w = ops.constant(rng.standard_normal((4 * GROUP, 16)).astype(np.float32))
    x = ops.parameter([2, 4 * GROUP], ov.Type.f32)
    y = ops.matmul(x, w, False, False)
    also = ops.reduce_sum(w, ops.constant(np.array([0], dtype=np.int64)), keep_dims=False)
    model = ov.Model([y, also], [x])
    assert compress_weights(model) == {"matmuls": 0, "embeddings": 0, "convolutions": 0}
    assert not _i8_constants(model)


def test_the_cpu_plugin_keeps_compressed_weights_int8():
    """The compiled model runs the MatMul as a fully-connected layer that reads the i8 weights and
    the group scales: the decompression is fused into the kernel, not folded back to f32."""
    rng = np.random.default_rng(6)
    k, n = 8 * GROUP, 512
    for transpose_b in (False, True):
        weights = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
        model = _matmul_model(weights, transpose_b)
        compress_weights(model)
        runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
        (fc,) = [node for node in runtime.get_ordered_ops()
                 if node.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
        assert fc.input(1).get_element_type() == ov.Type.i8, transpose_b
        assert list(fc.input(1).get_partial_shape().to_shape()) == [n, k]
        assert list(fc.input(3).get_partial_shape().to_shape()) == [n, k // GROUP]  # a scale per group



def _conv_model(weights, groups: int = 1):
    x = ops.parameter([1, weights.shape[1] * groups, 16, 16], ov.Type.f32)
    if groups == 1:
        y = ops.convolution(x, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1])
    else:
        w = ops.constant(weights.reshape(groups, len(weights) // groups, *weights.shape[1:]))
        y = ops.group_convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    return ov.Model([y], [x])


def test_convolution_weights_are_compressed_by_group_along_what_an_output_sums_over():
    """[out, in, kh, kw] -> groups of 32 along in x kh x kw, reshaped back; a grouped convolution
    stays f32, and so does one too small to matter."""
    rng = np.random.default_rng(8)
    weights = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)  # 288 = 9 groups per output
    x = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
    model = _conv_model(weights)
    want = _run(model, x)
    assert compress_weights(model) == {"matmuls": 0, "embeddings": 0, "convolutions": 1}
    (q,) = _i8_constants(model)
    assert list(q.get_output_shape(0)) == [48, 9, GROUP]
    rel = np.linalg.norm(_run(model, x) - want) / np.linalg.norm(want)
    assert 1e-4 < rel < 0.01

    depthwise = _conv_model(rng.standard_normal((256, 1, 3, 3)).astype(np.float32), groups=256)
    tiny = _conv_model(rng.standard_normal((8, 4, 3, 3)).astype(np.float32))  # below MIN_ELEMENTS
    for model in (depthwise, tiny):
        assert compress_weights(model) == {"matmuls": 0, "embeddings": 0, "convolutions": 0}
        assert not _i8_constants(model)


def test_the_cpu_plugin_unpacks_compressed_convolution_weights():
    """Why the cost model keeps a convolution's resident bytes at fp32 under int8w: the compiled
    model's convolution reads f32 weights; only the file is smaller. Should a later OpenVINO keep
    them int8, this fails, and cost_model/precision.py's int8w can narrow convolutions too."""
    rng = np.random.default_rng(9)
    model = _conv_model(rng.standard_normal((64, 64, 3, 3)).astype(np.float32))
    compress_weights(model)
    runtime = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model()
    (conv,) = [node for node in runtime.get_ordered_ops()
               if node.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert conv.input(1).get_element_type() == ov.Type.f32

# ---- attention masks that mask nothing (backends/openvino_masks.py) ----------------------------


def _attention(mask_values):
    q = ops.parameter([1, 8, 1, 64], ov.Type.f32)
    k, v = ops.parameter([1, 8, 128, 64], ov.Type.f32), ops.parameter([1, 8, 128, 64], ov.Type.f32)
    out = ops.scaled_dot_product_attention(q, k, v, ops.constant(mask_values), ops.constant(np.float32(0.125)),
                                           causal=False)
    return ov.Model([out], [q, k, v])


def _bf16_and_f32(model, feed):
    core = ov.Core()
    return [core.compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": hint})(feed)[0]
            for hint in ("bf16", "f32")]


@pytest.mark.skipif("BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    reason="the CPU computes no bf16")
def test_a_constant_mask_that_masks_nothing_is_dropped_so_bf16_attention_is_right():
    from hetcc.backends.openvino_masks import drop_empty_masks

    rng = np.random.default_rng(7)
    feed = [rng.standard_normal(s).astype(np.float32) for s in ((1, 8, 1, 64), (1, 8, 128, 64), (1, 8, 128, 64))]
    model = _attention(np.ones((1, 1, 1, 128), dtype=bool))
    _, f32 = _bf16_and_f32(model, feed)  # OpenVINO 2026.4's bf16 result here is NaN
    assert drop_empty_masks(model) == 1
    bf16, after = _bf16_and_f32(model, feed)
    assert np.array_equal(after, f32) or np.allclose(after, f32, rtol=1e-6, atol=1e-7)  # the same attention
    assert np.linalg.norm(bf16 - f32) / np.linalg.norm(f32) < 0.02


def test_a_mask_that_masks_something_is_left():
    from hetcc.backends.openvino_masks import drop_empty_masks

    partial = np.ones((1, 1, 1, 128), dtype=bool)
    partial[..., -3:] = False
    assert drop_empty_masks(_attention(partial)) == 0
    assert drop_empty_masks(_attention(np.full((1, 1, 1, 128), -1e4, np.float32))) == 0
    assert drop_empty_masks(_attention(np.zeros((1, 1, 1, 128), np.float32))) == 1
