"""Embedding tables stored in uint8 with one scale and zero point per row, in an ONNX file quantized
for ONNX Runtime's dynamic int8: each lookup reads the uint8 rows and dequantizes the few it read.

Why not quantize_dynamic's own: it quantizes a lookup's table with one scale for the whole table,
so every row rounds as coarsely as the table's largest entry allows. A row's own scale follows its
own largest entry. On bert's word table (8000 x 512, random weights) the table alone moved the
outputs 0.61 % with one scale and 0.38 % with one per row (benchmarks/bench_tables.py; a trained
table, whose rows differ more, gains more). One scale per row is also what OpenVINO's int8 weight
compression gives a table, and what a table tied to the output head already had (its head's
per-column scales: backends/onnx_tied.py). A row costs five bytes more (a float scale, a uint8
zero point): 1 % of a 512-wide row. The lookup adds an elementwise Cast, Sub and Mul on the rows
it read, which is the cost of dequantizing them at all.

Which tables: 2-D float initializers of SMALLEST_TABLE rows or more that only lookups (Gather
along axis 0) read, and that are neither graph inputs nor outputs, in a graph without subgraphs
(If, Loop: a reader inside one would lose its table) at opset 14 or later (the lookup's Reshape
keeps an empty dimension with ``allowzero``). A smaller table (positions, token types) is read by
every token and its bytes do not matter. A table with an entry that is not finite stays fp32: its
row would read back as NaN."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("hetcc")

LEVELS = 255
"""uint8's steps: a row's range (with 0 in it, so that 0 is exact) over them is its scale."""


OPSET = 14
"""The first opset whose Reshape has ``allowzero``."""


def has_subgraphs(graph) -> bool:
    """Whether a node of ``graph`` holds a graph (If, Loop, Scan): readers a rewrite of the top
    level would not see."""
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute)


def plain(model) -> bool:
    """Whether a table's lookups can be rewritten in ``model``: no subgraphs, and an opset with
    Reshape's ``allowzero`` (OPSET)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return opset >= OPSET and not has_subgraphs(model.graph)


def quantizable_tables(model, tied=()) -> list[str]:
    """The names of the initializers of ``model`` (an ONNX ModelProto) to store by rows (see the
    module's docstring), in the order its graph holds them; a table in ``tied`` is stored as its
    head's copy instead."""
    import onnx

    from hetcc.cost_model.precision import SMALLEST_TABLE

    graph = model.graph
    if not plain(model):
        return []
    exposed = {i.name for i in graph.input} | {o.name for o in graph.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def lookup(node, name):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return node.op_type == "Gather" and node.input[0] == name and name not in node.input[1:] and axis == 0
    return [t.name for t in graph.initializer
            if len(t.dims) == 2 and t.dims[0] >= SMALLEST_TABLE and t.data_type == onnx.TensorProto.FLOAT
            and t.name not in exposed and t.name not in tied and readers.get(t.name)
            and all(lookup(n, t.name) for n in readers[t.name])]


def by_rows(table):
    """``table`` (a 2-D float array) in uint8 per row: (quantized, scale, zero point), with
    table ≈ (quantized - zero[:, None]) * scale[:, None]. Each row's range takes in 0, so a zero
    entry stays exactly zero; a row of zeros gets scale 1."""
    import numpy as np

    table = np.asarray(table, dtype=np.float32)
    low = np.minimum(table.min(axis=1), 0.0).astype(np.float64)  # a range past float32's max fits
    high = np.maximum(table.max(axis=1), 0.0).astype(np.float64)
    scale = ((high - low) / LEVELS).astype(np.float32)
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-low / scale), 0, LEVELS)
    quantized = np.clip(np.round(table / scale[:, None]) + zero[:, None], 0, LEVELS)
    return quantized.astype(np.uint8), scale, zero.astype(np.uint8)


def dequantized(quantized, scale, zero):
    """What a lookup reads: the rows of ``by_rows``' result as floats."""
    import numpy as np

    return (quantized.astype(np.float32) - zero.astype(np.float32)[:, None]) * scale[:, None]


def store_by_rows(path: Path, tables: list[str]) -> list[str]:
    """In the ONNX file at ``path`` (rewritten in place, external data included), store each of
    ``tables`` in uint8 by rows as ``{table}_quantized``, ``_scale`` and ``_zero_point`` (the names
    quantize_dynamic gives a weight, which backends/onnx_sensitivity.py reads back) and point its
    lookups at them. Returns the tables stored so. A table whose names are taken stays fp32."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if not tables:
        return []
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    if external:
        onnx.load_external_data_for_model(model, str(path.parent))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = taken_names(graph)
    done = []
    for name in tables:
        parts = [f"{name}_{part}" for part in ("quantized", "scale", "zero_point")]
        if name not in initializers or taken & set(parts):
            log.info("the table %s stays fp32: its int8 names are taken in the ONNX file", name)
            continue
        table = numpy_helper.to_array(initializers[name])
        if not np.isfinite(table).all():
            log.info("the table %s stays fp32: it holds entries that are not finite", name)
            continue
        arrays = by_rows(table)
        stored = [numpy_helper.from_array(array, part) for array, part in zip(arrays, parts)]
        graph.initializer.extend(stored)
        for lookup in [n for n in graph.node if n.op_type == "Gather" and n.input[0] == name]:
            dequantizing_lookup(graph, lookup, *stored, columns=False)
        graph.initializer.remove(initializers[name])
        done.append(name)
    if done:
        _save(model, path, external)
    return done


def _save(model, path: Path, external: list[str]) -> None:
    """Write ``model`` (its weights loaded) to ``path``; where they were apart (``external``: the
    files they came from), apart again, in ``{path.name}.data``: that file is removed first (its
    weights are in memory, and onnx appends to a data file that exists); any other file they came
    from is left as it is, for another model may read it."""
    import onnx

    if not external:
        onnx.save(model, str(path))
        return
    (path.parent / f"{path.name}.data").unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{path.name}.data")


def dequantizing_lookup(graph, lookup, quantized, scale, zero, columns: bool) -> None:
    """Replace ``lookup`` (a Gather of an fp32 table) by a Gather of ``quantized``'s rows, or with
    ``columns`` its columns (a head's transposed copy, [width, vocabulary]: backends/onnx_tied.py),
    dequantized with each entry's ``scale`` and ``zero`` point, in the lookup's result's shape."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    at = list(graph.node).index(lookup)
    ids, out = lookup.input[1], lookup.output[0]
    tag = unused_name(graph, f"{out}_int8")  # prefix of the new values
    width = int(quantized.dims[0] if columns else quantized.dims[1])
    for suffix, value in (("width", [width]), ("flat", [-1]), ("axis", [1])):
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), f"{tag}_{suffix}"))
    if columns:
        picked = [helper.make_node("Gather", [quantized.name, f"{tag}_ids"], [f"{tag}_cols"], axis=1),
                  helper.make_node("Transpose", [f"{tag}_cols"], [f"{tag}_rows"], perm=[1, 0])]
    else:
        picked = [helper.make_node("Gather", [quantized.name, f"{tag}_ids"], [f"{tag}_rows"], axis=0)]
    nodes = [
        helper.make_node("Reshape", [ids, f"{tag}_flat"], [f"{tag}_ids"]),
        *picked,
        helper.make_node("Cast", [f"{tag}_rows"], [f"{tag}_rows_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [zero.name, f"{tag}_ids"], [f"{tag}_zero"], axis=0),
        helper.make_node("Cast", [f"{tag}_zero"], [f"{tag}_zero_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{tag}_zero_f", f"{tag}_axis"], [f"{tag}_zero_col"]),
        helper.make_node("Sub", [f"{tag}_rows_f", f"{tag}_zero_col"], [f"{tag}_centred"]),
        helper.make_node("Gather", [scale.name, f"{tag}_ids"], [f"{tag}_scale"], axis=0),
        helper.make_node("Unsqueeze", [f"{tag}_scale", f"{tag}_axis"], [f"{tag}_scale_col"]),
        helper.make_node("Mul", [f"{tag}_centred", f"{tag}_scale_col"], [f"{tag}_values"]),
        helper.make_node("Shape", [ids], [f"{tag}_ids_shape"]),
        helper.make_node("Concat", [f"{tag}_ids_shape", f"{tag}_width"], [f"{tag}_shape"], axis=0),
        # allowzero: ids with an empty dimension (a batch of no tokens) give an empty result
        helper.make_node("Reshape", [f"{tag}_values", f"{tag}_shape"], [out], allowzero=1),
    ]
    graph.node.remove(lookup)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)


def taken_names(graph) -> set[str]:
    """The names of ``graph``'s initializers, values, inputs and outputs."""
    return {t.name for t in graph.initializer} | {v for n in graph.node for v in (*n.input, *n.output)} \
        | {i.name for i in graph.input} | {o.name for o in graph.output}


def unused_name(graph, wanted: str) -> str:
    """``wanted``, or ``wanted_1``, ``_2``...: a name no value or initializer of ``graph`` has."""
    taken = taken_names(graph)
    name, k = wanted, 1
    while name in taken:
        name, k = f"{wanted}_{k}", k + 1
    return name
