"""int8 weight compression of an OpenVINO model, in the form OpenVINO's CPU plugin runs compressed:
a MatMul's constant weight becomes an i8 Constant, a Convert to f32 and a Multiply by one scale per
output column (the pattern NNCF's ``compress_weights`` emits in INT8_SYM mode). The plugin fuses the
pattern into its fully-connected kernel, so the weights stay int8 in memory and are dequantized in
the kernel, and it quantizes the activations per call (its dynamic quantization): the bytes a
MatMul reads drop to a quarter and its products run on int8 dot products.

Embedding tables stay f32: a Gather reads only the rows it looks up, so compressing them saves
memory but no time. In a one-off run with bench_precision.py's bert compressed this way, gathers
included (per-row scales, f32 arithmetic), its output moved 1.03 % from fp32, past a 1 % budget;
with MatMul weights alone hetcc's plan stays within it (0.74 %, int8w-bf16, docs/benchmarks.md)."""
from __future__ import annotations

MIN_ELEMENTS = 1024
"""Smaller weights stay f32: their bytes do not matter, and a few rows lose the most to rounding."""


def compress_weights(model) -> int:
    """Rewrite ``model`` (an openvino.Model) in place; returns how many MatMul weights it compressed."""
    import openvino as ov

    done = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        if source.get_type_name() != "Constant" or source.get_element_type() != ov.Type.f32:
            continue
        weights = source.get_data()
        if weights.ndim != 2 or weights.size < MIN_ELEMENTS:
            continue
        # the reduction runs over K: rows of a [K, N] weight, columns of an [N, K] one (transpose_b)
        reduce_axis = 1 if node.get_attributes().get("transpose_b") else 0
        node.input(1).replace_source_output(_dequantized(weights, reduce_axis))
        done += 1
    model.validate_nodes_and_infer_types()
    return done


def _dequantized(weights, reduce_axis: int):
    """The output of Multiply(Convert(i8 weights), f32 scales): symmetric, one scale per slice."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    scale = np.abs(weights).max(axis=reduce_axis, keepdims=True).astype(np.float32) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale)).output(0)
