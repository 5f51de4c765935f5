"""An embedding table tied to an output head (GPT-2's), stored once in int8 for both, in an exported
ONNX file quantized by ONNX Runtime's quantize_dynamic.

torch's exporter writes a tied table once, read by the embedding's Gather and, through a
Transpose, by the head's MatMul (a head over [batch, tokens, width] activations; a 2-D head
exports as Gemm, which is left alone). quantize_dynamic quantizes a MatMul only when its weight is
an initializer, and a table is stored in int8 only when nothing but lookups reads it
(backends/onnx_tables.py), so a tied table stays fp32 whole: the largest single weight in a small LM (gpt2 kept 0.45x of its fp32 bytes in int8). So,
around it:

- ``untie`` (before quantizing) gives the head its own transposed copy of the table, an
  initializer quantize_dynamic quantizes per column: one int8 scale per vocabulary entry;
- ``retie`` (after) points the lookups at that int8 copy, dequantizing the rows they read with
  their own entries' scales, and drops the fp32 table. Where the head was not quantized after all,
  it points the head back at the table and drops the copy: never two fp32 tables.

Left alone: files with external data (their weights are not in the file ``untie`` rewrites), a file
the copy would take past protobuf's 2 GiB, graphs with subgraphs (If, Loop: readers ``untie`` would
not see), opsets before 14 and tables not in fp32."""
from __future__ import annotations

import logging
from pathlib import Path

from hetcc.backends.onnx_tables import dequantizing_lookup, plain, unused_name
from hetcc.cost_model.precision import SMALLEST_TABLE

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
"""Bytes a serialised ONNX model may take with its weights inside."""


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


def untie(model, path: Path) -> dict[str, str]:
    """In ``model``, loaded from the ONNX file at ``path`` with its weights (both changed in place,
    and only where something is tied), give each output head tied to an embedding table its own
    transposed copy of the table. Returns {table: the head's copy}."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    if not plain(model):
        return {}
    size = model.ByteSize()
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    # an initializer listed as an input may be fed anew; one that is an output is read outside
    exposed = {i.name for i in graph.input} | {o.name for o in graph.output}
    tied: dict[str, str] = {}
    for name, table in initializers.items():
        readers = consumers.get(name, [])
        if len(table.dims) != 2 or table.dims[0] < SMALLEST_TABLE or name in exposed or \
                table.data_type != onnx.TensorProto.FLOAT:
            continue
        lookups = [n for n in readers if n.op_type == "Gather" and n.input[0] == name
                   and _attribute(n, "axis", 0) == 0]
        flips = [n for n in readers if n.op_type == "Transpose" and list(_attribute(n, "perm", [])) == [1, 0]]
        if not lookups or not flips or len(lookups) + len(flips) != len(readers):
            continue
        flipped = {t.output[0] for t in flips}
        heads = [m for t in flips for m in consumers.get(t.output[0], [])]
        if not all(m.op_type == "MatMul" and m.input[1] in flipped and m.input[0] not in flipped for m in heads) \
                or flipped & exposed:
            continue
        added = 4 * table.dims[0] * table.dims[1]
        if size + added > PROTOBUF_LIMIT - (64 << 20):  # room for what quantizing adds
            log.info("the table %s tied to the output head stays fp32: a copy would take the ONNX file "
                     "past protobuf's 2 GiB", name)
            continue
        size += added
        copy = unused_name(graph, f"{name}_head")
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
    ``tied`` at its head's int8 copy and drop the fp32 table. Returns the tables retied; a table
    whose head quantize_dynamic left in fp32 gets its head back instead (one fp32 table)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    done, changed = [], False
    for table, copy in tied.items():
        if table not in initializers:
            continue
        quantized, scale, zero = (initializers.get(f"{copy}_{s}") for s in ("quantized", "scale", "zero_point"))
        columns = quantized is not None and len(quantized.dims) == 2 and scale is not None and zero is not None \
            and list(scale.dims) == [quantized.dims[1]] and list(zero.dims) == [quantized.dims[1]]
        if not columns:
            changed = _untied_back(graph, table, copy, initializers) or changed
            continue
        for lookup in [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]:
            dequantizing_lookup(graph, lookup, quantized, scale, zero, columns=True)
        graph.initializer.remove(initializers[table])
        done.append(table)
        changed = True
    if changed:
        onnx.save(model, str(path))
    return done


def _untied_back(graph, table: str, copy: str, initializers: dict) -> bool:
    """Point the readers of ``copy``, still an fp32 initializer, back at ``table`` through one
    Transpose, and drop it. False where ``copy`` is not that (left as it is)."""
    from onnx import helper

    if copy not in initializers or initializers[copy].data_type != initializers[table].data_type:
        log.warning("the table %s tied to the output head was not retied and its head's copy %s is not "
                    "fp32: both stay in the file", table, copy)
        return False
    flipped = unused_name(graph, f"{table}_transposed")
    readers = [n for n in graph.node if copy in n.input]
    first = min(list(graph.node).index(n) for n in readers) if readers else 0
    graph.node.insert(first, helper.make_node("Transpose", [table], [flipped], perm=[1, 0]))
    for node in readers:
        for i, name in enumerate(node.input):
            if name == copy:
                node.input[i] = flipped
    graph.initializer.remove(initializers[copy])
    return True
