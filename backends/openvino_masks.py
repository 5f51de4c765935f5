"""Attention masks that mask nothing, rewritten before OpenVINO compiles a model.

OpenVINO 2026.4's CPU plugin, in bf16 inference precision, returns NaN from a single-query
ScaledDotProductAttention (a decode step) whose mask input is a constant: a boolean mask, even one
that is all True, or a float mask with any masked (negative) entry. The same op is exact in f32,
and correct in bf16 with the mask as a model input, without a mask, or with a zero float mask
(measured here with a [1, 8, 1, 64] query over 128 keys). A Hugging Face decode step with a full
static cache has exactly such a mask: computed from shapes only, all True, folded to a constant by
the converter; its logits came out 138 % off in bf16. Such a mask changes nothing, so it becomes a
scalar zero, which is the same attention in every precision. A mask that does mask something is
left as it is: in bf16 hetcc's accuracy check then refuses the segment."""
from __future__ import annotations


def drop_empty_masks(model) -> int:
    """Replace each constant attention mask of ``model`` (an openvino.Model) that masks nothing
    (boolean all True, float all zero) by a scalar f32 zero; returns how many it replaced."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    done = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ScaledDotProductAttention" or node.get_input_size() < 4:
            continue
        mask = node.input_value(3).get_node()
        if mask.get_type_name() != "Constant":
            continue
        values = mask.get_data()
        empty = bool(values.all()) if mask.get_element_type() == ov.Type.boolean else not values.any()
        if empty and values.size:
            node.input(3).replace_source_output(ops.constant(np.float32(0.0)).output(0))
            done += 1
    if done:
        model.validate_nodes_and_infer_types()
    return done
