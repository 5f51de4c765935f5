"""int8 weight compression of an OpenVINO model, in the form OpenVINO's CPU plugin runs compressed:
a constant weight becomes an i8 Constant, a Convert to f32 and a Multiply by one scale per group of
``GROUP`` consecutive elements along the reduction axis, reshaped back (the decompression pattern
NNCF's ``compress_weights`` writes for its group-wise modes; one scale per output column where the
axis does not split into groups, as its INT8 modes write). The plugin fuses the pattern into its
fully-connected kernel, so a MatMul's weights stay int8 in memory and are dequantized in the
kernel, and it quantizes the activations per call (its dynamic quantization): the bytes a MatMul
reads drop to about a quarter and its products run on int8 dot products
(tests/test_openvino_weights.py checks the compiled model keeps them int8).

Why groups rather than one scale per column: a column's scale is set by its largest element, and
the smaller a group the closer its largest element sits to the rest (bert: 0.73 % from fp32 against
0.94 %, at the same speed; docs/precision.md). The f32 scales add 4 bytes per 32 weights: 1.125
bytes per weight, 0.28x of fp32.

Embedding tables (a Gather of rows from a constant of at least ``MIN_TABLE_ROWS`` rows) are
compressed too, with groups along a row: a lookup reads only its rows, so this saves memory and
file bytes but no time; without them a model with a large vocabulary keeps half its bytes in f32.

2-D convolution weights [out, in, kh, kw] are compressed in the file only (1-D and 3-D ones stay f32), with groups along what one
output sums over (in x kernel, flattened): the CPU plugin has no kernel that reads int8 convolution
weights without int8 activations, so it folds the decompression to f32 when it compiles (memory and
time as fp32; the cost model prices them so, ``Scheme.narrows``). Without them a convolutional
model's IR stays at fp32 size (resnet 1.0x), and a ViT's patch embedding keeps 4 % of its bytes.
Grouped (depthwise) convolutions stay f32: a few weights per channel, where rounding costs most."""
from __future__ import annotations

from hetcc.cost_model.precision import SMALLEST_NARROWED, SMALLEST_TABLE

MIN_ELEMENTS = SMALLEST_NARROWED
"""Smaller weights stay f32: their bytes do not matter, and a few rows lose the most to rounding
(the cost model prices them so: cost_model/precision.py)."""

MIN_TABLE_ROWS = SMALLEST_TABLE
"""A table of fewer rows (positions, token types, a lookup table of constants) stays f32: a
vocabulary is what takes the bytes, and a small table's rows are read by every token, so their
rounding reaches every output."""

GROUP = 32
"""Elements per scale along the reduction axis (the axis a MatMul sums over; a table's row)."""


def compress_weights(model) -> dict[str, int]:
    """Rewrite ``model`` (an openvino.Model) in place; returns how many MatMul weights and embedding
    tables it compressed (``{"matmuls": n, "embeddings": m}``). A constant read by several of them
    (a table tied to the output projection) is compressed once for all; one that something else
    reads too stays f32, since compressing it would keep both copies. ``convolutions`` counts the
    convolution weights it compressed (in the file only; the module docstring says why)."""
    found: dict[tuple, tuple] = {}
    """a constant's output -> (that output, its data, [(reader, port, axis, kind)])"""
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind == "MatMul":
            # the reduction runs over K: rows of a [K, N] weight, columns of an [N, K] one (transpose_b)
            port, axis = 1, 1 if node.get_attributes().get("transpose_b") else 0
        elif kind == "Gather" and _gathers_rows(node):
            port, axis = 0, 1
        elif kind == "Convolution":
            port, axis = 1, 1  # of the weights seen as [out, in x kernel]
        else:
            continue
        weights = _f32_constant(node, port)
        if weights is None or weights.ndim != (4 if kind == "Convolution" else 2) or weights.size < MIN_ELEMENTS:
            continue
        if kind == "Gather" and weights.shape[0] < MIN_TABLE_ROWS:
            continue
        source = node.input_value(port)
        key = (source.get_node().get_friendly_name(), source.get_index())
        found.setdefault(key, (source, weights, []))[2].append((node, port, axis, kind))
    done = {"matmuls": 0, "embeddings": 0, "convolutions": 0}
    counted = {"MatMul": "matmuls", "Gather": "embeddings", "Convolution": "convolutions"}
    for source, weights, uses in found.values():
        # a 4-D constant can only be a convolution's, so one axis means one kind of reader
        if len(source.get_target_inputs()) != len(uses) or len({axis for _, _, axis, _ in uses}) != 1:
            continue
        axis = uses[0][2]
        compressed = _dequantized(weights.reshape(len(weights), -1) if weights.ndim == 4 else weights, axis,
                                  weights.shape)
        for node, port, _, kind in uses:
            node.input(port).replace_source_output(compressed)
            done[counted[kind]] += 1
    model.validate_nodes_and_infer_types()
    return done


def _f32_constant(node, port: int):
    """The data of input ``port`` when it is an f32 Constant, else None."""
    import openvino as ov

    source = node.input_value(port).get_node()
    if source.get_type_name() != "Constant" or source.get_element_type() != ov.Type.f32:
        return None
    return source.get_data()


def _gathers_rows(node) -> bool:
    """A Gather along axis 0 (an embedding lookup): then a row is what each index reads whole."""
    axis = node.input_value(2).get_node()
    return axis.get_type_name() == "Constant" and axis.get_data().size == 1 and int(axis.get_data().ravel()[0]) == 0


def _dequantized(weights, axis: int, shape):
    """The f32 output of the compressed 2-D ``weights``, in ``shape``: symmetric int8, one scale
    per ``GROUP`` elements along ``axis`` (per slice where that axis has no more than one group)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    size = weights.shape[axis]
    grouped, reduce = weights, axis
    if size % GROUP == 0 and size > GROUP:
        # [K, N] -> [K/G, G, N]; [N, K] -> [N, K/G, G]: the scales reduce over the group's axis
        if axis == 0:
            grouped, reduce = weights.reshape(size // GROUP, GROUP, weights.shape[1]), 1
        else:
            grouped, reduce = weights.reshape(weights.shape[0], size // GROUP, GROUP), 2
    scale = np.abs(grouped).max(axis=reduce, keepdims=True).astype(np.float32) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(grouped / scale), -127, 127).astype(np.int8)
    out = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
    if grouped.shape != tuple(shape):
        out = ops.reshape(out, ops.constant(np.array(shape, dtype=np.int64)), special_zero=False)
    return out.output(0)
