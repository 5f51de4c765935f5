"""An embedding table tied to an output head (GPT-2's, and any model with ``tie_word_embeddings``),
stored once in int8 for both, in an exported ONNX file quantized by ONNX Runtime's quantize_dynamic.

The exporter writes the tied table once, read by the embedding's Gather and, through a Transpose,
by the head's MatMul. quantize_dynamic quantizes a MatMul only when its weight is an initializer,
and a table only when nothing but lookups reads it, so a tied table stays fp32 whole: the largest
single weight in a small LM (gpt2 kept 0.45x of its fp32 bytes in int8). So, around it:

- ``untie`` (before quantizing) gives the head its own transposed copy of the table, an
  initializer quantize_dynamic quantizes per column: one int8 scale per vocabulary entry;
- ``retie`` (after) points the lookups at that int8 copy, dequantizing the rows they read with
  their own entries' scales, and drops the fp32 table.

One int8 table is left, read by both. Files with external data (over 2 GiB) are left as they are:
rewriting them in place would append to the data file."""
from __future__ import annotations

from pathlib import Path

from hetcc.cost_model.precision import SMALLEST_TABLE


def _consumers(graph) -> dict:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attribute(node, name: str, default):
    import onnx

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def untie(path: Path) -> dict[str, str]:
    """In the ONNX file at ``path`` (rewritten in place), give each output head tied to an
    embedding table its own transposed copy of the table. Returns {table: the head's copy}."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    tied: dict[str, str] = {}
    inputs = {i.name for i in graph.input}  # an initializer listed as an input may be fed anew
    for name, table in initializers.items():
        readers = consumers.get(name, [])
        if len(table.dims) != 2 or table.dims[0] < SMALLEST_TABLE or name in inputs:
            continue
        lookups = [n for n in readers if n.op_type == "Gather" and n.input[0] == name
                   and _attribute(n, "axis", 0) == 0]
        flips = [n for n in readers if n.op_type == "Transpose" and list(_attribute(n, "perm", [])) == [1, 0]]
        if not lookups or not flips or len(lookups) + len(flips) != len(readers):
            continue
        heads = [m for t in flips for m in consumers.get(t.output[0], [])]
        if not all(m.op_type == "MatMul" and m.input[1] in {t.output[0] for t in flips} and m.input[0] != m.input[1]
                   for m in heads) or any(t.output[0] in {o.name for o in graph.output} for t in flips):
            continue
        copy = f"{name}_head"
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(table).T.copy(), copy))
        for head in heads:
            head.input[1] = copy
        for flip in flips:
            graph.node.remove(flip)
        tied[name] = copy
    if tied:
        onnx.save(model, str(path))
    return tied


def retie(path: Path, tied: dict[str, str]) -> list[str]:
    """In the quantized ONNX file at ``path`` (rewritten in place), point each lookup of a table in
    ``tied`` at its head's int8 copy and drop the fp32 table. Returns the tables retied (a table
    whose head quantize_dynamic did not quantize per column keeps its fp32 copy)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    done = []
    for table, copy in tied.items():
        quantized, scale, zero = (initializers.get(f"{copy}_{s}") for s in ("quantized", "scale", "zero_point"))
        if table not in initializers or quantized is None or scale is None or zero is None or \
                list(scale.dims) != [quantized.dims[1]] or list(zero.dims) != [quantized.dims[1]]:
            continue
        width = int(quantized.dims[0])
        lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]
        for lookup in lookups:
            at = list(graph.node).index(lookup)
            ids, out = lookup.input[1], lookup.output[0]
            tag = f"{lookup.name or out}_int8"  # names of the new values, unique per lookup
            width_name = f"{tag}_width"
            graph.initializer.append(numpy_helper.from_array(np.array([width], dtype=np.int64), width_name))
            flat_shape = f"{tag}_flat_shape"
            graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), flat_shape))
            nodes = [
                helper.make_node("Reshape", [ids, flat_shape], [f"{tag}_ids"]),
                # columns of the head's [width, vocab] copy are the table's rows
                helper.make_node("Gather", [quantized.name, f"{tag}_ids"], [f"{tag}_cols"], axis=1),
                helper.make_node("Transpose", [f"{tag}_cols"], [f"{tag}_rows"], perm=[1, 0]),
                helper.make_node("Cast", [f"{tag}_rows"], [f"{tag}_rows_f"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Gather", [zero.name, f"{tag}_ids"], [f"{tag}_zero"], axis=0),
                helper.make_node("Cast", [f"{tag}_zero"], [f"{tag}_zero_f"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Unsqueeze", [f"{tag}_zero_f", f"{tag}_axis"], [f"{tag}_zero_col"]),
                helper.make_node("Sub", [f"{tag}_rows_f", f"{tag}_zero_col"], [f"{tag}_centred"]),
                helper.make_node("Gather", [scale.name, f"{tag}_ids"], [f"{tag}_scale"], axis=0),
                helper.make_node("Unsqueeze", [f"{tag}_scale", f"{tag}_axis"], [f"{tag}_scale_col"]),
                helper.make_node("Mul", [f"{tag}_centred", f"{tag}_scale_col"], [f"{tag}_values"]),
                helper.make_node("Shape", [ids], [f"{tag}_ids_shape"]),
                helper.make_node("Concat", [f"{tag}_ids_shape", width_name], [f"{tag}_shape"], axis=0),
                helper.make_node("Reshape", [f"{tag}_values", f"{tag}_shape"], [out]),
            ]
            graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), f"{tag}_axis"))
            graph.node.remove(lookup)
            for offset, node in enumerate(nodes):
                graph.node.insert(at + offset, node)
        graph.initializer.remove(initializers[table])
        done.append(table)
    if done:
        onnx.save(model, str(path))
    return done
