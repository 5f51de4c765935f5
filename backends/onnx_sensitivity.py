"""Which nodes of a segment quantized by ONNX Runtime's ``quantize_dynamic`` to leave in fp32, so
that the segment holds the accuracy budget's limit with as much of it in int8 as possible.

Giving a precision up for whole units (hetcc/precision.py ``give_up``) keeps the first or the last
share of a segment in int8; but int8's error is spread over the segment's matrix products and
tables, each adding a little. Here each quantized node's own share is measured: one ONNX model holds
the fp32 segment with, beside each quantized node, the rounding int8 adds there (its weight
dequantized as stored, and its activations through DynamicQuantizeLinear then DequantizeLinear, as
ONNX Runtime's int8 kernels see them), switched on or off per node by one input. So one session
measures the segment with any set of nodes in int8: each alone, then the smallest set to leave out.
That arithmetic is exactly what the int8 kernels compute (they accumulate in int32 without loss), so
what it measures is what the quantized file gives (bert: 1.091 % simulated and 1.088 % real with the
worst node left out; 0.558 % and 0.558 % with eight).

Nodes are left out in the order of their error per share of what int8 buys there: a product's share
of the segment's quantized weights counts twice (its arithmetic and its bytes), a table's once (a
lookup reads only a few rows: bytes, not time). Errors of independent roundings add as squares, so
the order is by squared error. At most MOST_KEPT of the products' weights go back to fp32; where
more would be needed, nothing is left out and the segment misses its limit as before, so the
placement gives the precision up for some of its units and prices what is left."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

MOST_KEPT = 0.5
"""The largest share of a segment's quantized products (by weight size: the arithmetic int8 speeds
up) left in fp32 to hold its limit. The cost model priced the segment as all int8, so past half it
would no longer say what runs."""
HEADROOM = 0.98
"""The share of the limit the nodes left in int8 may use: the switched model adds float rounding of
its own (bert: 1.091 % measured where the file gave 1.088 %), and the file is checked against the
limit itself afterwards."""
SWITCH = "hetcc_switch"
"""The sensitivity model's input: per quantized node, 1.0 for int8, 0.0 for fp32."""


@dataclass(frozen=True)
class Quantized:
    """A node whose weight the quantized file stores in int8: a matrix product (MatMul, Gemm) that
    quantize_dynamic quantized, or the lookups (Gather) of a table stored by rows
    (backends/onnx_tables.py), as one."""

    node: str
    """Its name in the fp32 file; for a table, its first lookup's, or the table's where that
    lookup has none."""
    weight: str
    product: bool
    size: int
    """Elements of its weight."""
    where: str
    """The module it comes from (``model.encoder.layer.0.output.dense``), else its name."""
    stored: str = ""
    """The name its int8 weight is stored under (``{stored}_quantized``, ``_scale``,
    ``_zero_point``): ``weight``, or the transposed copy quantize_dynamic makes for a Gemm with
    transB."""
    transposed: bool = False
    gemm: bool = False
    """A Gemm, which quantize_dynamic rewrites as a MatMul of its own name."""
    module: str | None = None
    """The module path it comes from as hetcc's FX graph names it ("" for the model itself); None
    where the exporter did not say."""

    @property
    def excluded(self) -> list[str]:
        """The names ``nodes_to_exclude`` takes for it: quantize_dynamic first rewrites a Gemm as a
        MatMul named after it, and excludes by the new name."""
        return [self.node, f"{self.node}_MatMul"] if self.gemm else [self.node]


@dataclass(frozen=True)
class Kept:
    """The nodes to leave in fp32, and what the segment measured."""

    nodes: tuple[Quantized, ...]
    of: int
    """How many nodes were quantized before."""
    error: float
    """The segment's relative error with ``nodes`` in fp32 (the worst output)."""
    all_error: float
    """... and with every node in int8."""
    products_in_module: dict = field(default_factory=dict)
    """Module path -> how many quantized products it holds (hetcc/kept_fp32.py prices the share
    of a module's products left in fp32)."""

    def meta(self) -> dict:
        fp32 = Counter(q.module for q in self.nodes if q.product and q.module is not None)
        return {"nodes": [q.node for q in self.nodes], "where": [q.where for q in self.nodes], "of": self.of,
                "relative_error": self.error, "all_int8_relative_error": self.all_error,
                "fp32_products": dict(fp32), "products_in_module": dict(self.products_in_module)}


PRODUCTS = ("MatMulInteger", "DynamicQuantizeMatMul")
"""The ops quantize_dynamic writes for a matrix product it quantized."""


def quantized_nodes(source, quantized, tied: dict, excluded=()) -> list[Quantized] | None:
    """The nodes of ``source`` (the fp32 model, tables tied to a head untied: backends/onnx_tied.py)
    whose weights ``quantized`` (the file backends/onnx_quantize.quantize_file wrote, with the
    ``excluded`` products left out) stores in int8: each product, and each table stored by rows,
    once for all its lookups (named after the first). The lookups of a table in ``tied`` follow its
    head (they read its int8 copy). None where the switched model could not measure what the file
    computes: a product without a name of its own (nodes_to_exclude goes by name), a graph inside a
    node (If, Loop), a weight a product shares with another reader (the file dequantizes the
    product's int8 copy for it), a stored weight this module cannot read back, or products
    quantized that it did not find."""
    from hetcc.backends.onnx_tables import has_subgraphs

    graph = source.graph
    names = [n.name for n in graph.node]
    if has_subgraphs(graph):
        return None
    stored = {t.name: t for t in quantized.graph.initializer}
    produced = {o for n in quantized.graph.node for o in n.output}
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    skip = set(excluded)
    found, tables = [], set()
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            weight, product = node.input[1], True
        elif node.op_type == "Gather" and node.input:
            weight, product = node.input[0], False
        else:
            continue
        if weight not in sizes or (node.name and node.name in skip) or weight in tables:
            continue
        if weight in produced:  # the file dequantizes a product's int8 copy for its other readers
            return None
        if not product and weight in stored:  # a table still in fp32
            continue
        name, transposed = _stored_as(node, weight, stored)
        if name is None:
            continue
        if not _readable(stored, name, by_rows=not product):
            return None
        if product and (not node.name or names.count(node.name) > 1):
            return None
        if not product:
            tables.add(weight)
        found.append(Quantized(node.name or weight, weight, product, sizes[weight], _where(node), name, transposed,
                               gemm=node.op_type == "Gemm", module=_module(node)))
    products = sum(n.op_type in PRODUCTS for n in quantized.graph.node)
    return found if products == sum(q.product for q in found) else None


def _stored_as(node, weight: str, stored: dict) -> tuple[str | None, bool]:
    """Under which name ``quantized`` stores ``node``'s int8 weight, and whether transposed; None
    where it does not. quantize_dynamic rewrites a Gemm with alpha = beta = 1 and no transA as a
    MatMul, over a transposed copy of its weight (``{weight}_Transposed``, then ``_1``...) where it
    has transB; a Gemm it cannot rewrite stays fp32."""
    import onnx

    if node.op_type != "Gemm":
        return (weight, False) if f"{weight}_quantized" in stored else (None, False)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None, False
    if not attrs.get("transB", 0):
        return (weight, False) if f"{weight}_quantized" in stored else (None, False)
    copies = [n for n in (f"{weight}_Transposed", *(f"{weight}_Transposed_{k}" for k in range(1, 8)))
              if f"{n}_quantized" in stored]
    return (copies[0], True) if len(copies) == 1 else (None, False)


def _module(node) -> str | None:
    """The module a node of torch's exporter comes from: the last scope before the node's own (""
    where the node's own is the only one: the model itself); None without scopes."""
    import ast

    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        scopes = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        scopes = []
    scopes = [s for s in scopes if isinstance(s, str) and s]
    return scopes[-2] if len(scopes) >= 2 else "" if scopes else None


def _where(node) -> str:
    """How a plan names the node: its module, else its own name."""
    return _module(node) or node.name


def _readable(stored: dict, name: str, by_rows: bool = False) -> bool:
    """Whether the weight stored as ``name`` has a scale and zero point this module reads back: one
    number, or one per column (quantize_dynamic's axis for products is the last), or with
    ``by_rows`` one per row (a table: backends/onnx_tables.py). From the shapes alone: the weights
    are dequantized once, when the switched model is built."""
    q, scale, zero = (list(stored[f"{name}_{part}"].dims) for part in ("quantized", "scale", "zero_point"))
    if math.prod(scale) == 1 and math.prod(zero) == 1:
        return True
    along = q[0] if by_rows and len(q) == 2 else q[-1] if not by_rows and q else None
    return len(scale) == 1 and scale[0] == along and list(zero) == scale


def _dequantized(stored: dict, name: str, transposed: bool = False, by_rows: bool = False):
    """The weight stored as ``name`` as the int8 kernels (or a lookup) see it, (q - zero point) x
    scale, in the fp32 weight's layout (``transposed``: stored transposed); its scale is one number,
    one per column, or with ``by_rows`` one per row (``_readable``)."""
    from onnx import numpy_helper

    import numpy as np

    q = numpy_helper.to_array(stored[f"{name}_quantized"]).astype(np.float32)
    scale = numpy_helper.to_array(stored[f"{name}_scale"]).astype(np.float32)
    zero = numpy_helper.to_array(stored[f"{name}_zero_point"]).astype(np.float32)
    if scale.size == 1:
        exact = (q - zero.reshape(())) * scale.reshape(())
    elif by_rows:
        exact = (q - zero[:, None]) * scale[:, None]
    else:
        exact = (q - zero) * scale
    return exact.T if transposed else exact


def switched_model(source, quantized, nodes: list[Quantized], tied: dict):
    """``source`` with, beside each of ``nodes``, int8's rounding, switched on by its entry of the
    input SWITCH (floats, one per node): weight w + s·(dequantized − w), and a product's first input
    a + s·(DequantizeLinear(DynamicQuantizeLinear(a)) − a). A switch of 0 leaves the fp32 value
    exactly. A tied table's lookups share their head's switch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import numpy as np

    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    stored = {t.name: t for t in quantized.graph.initializer}
    fp32 = {t.name: t for t in graph.initializer}
    before: dict[int, list] = {}  # position of a node -> the nodes to add before it
    deltas: dict[str, str] = {}  # weight -> its rounding's initializer, once however many read it
    blended: dict[tuple, str] = {}  # (weight, switch) -> the blended weight's name
    added = []

    def blend(weight: str, delta, switch: str, at: int) -> str:
        if weight not in deltas:
            deltas[weight] = f"{SWITCH}_d{len(deltas)}"
            added.append(numpy_helper.from_array(delta().astype(np.float32), deltas[weight]))
        if (weight, switch) not in blended:
            out = f"{SWITCH}_{len(blended)}_w"
            before.setdefault(at, []).extend([helper.make_node("Mul", [switch, deltas[weight]], [out + "_d"]),
                                              helper.make_node("Add", [weight, out + "_d"], [out])])
            blended[(weight, switch)] = out
        return blended[(weight, switch)]

    positions = {n.name: i for i, n in enumerate(graph.node)}
    heads = {copy: table for table, copy in tied.items()}
    for k, q in enumerate(nodes):
        switch, index = f"{SWITCH}_{k}", f"{SWITCH}_{k}_index"
        added.append(numpy_helper.from_array(np.array(k, dtype=np.int64), index))
        before.setdefault(0, []).append(helper.make_node("Gather", [SWITCH, index], [switch]))

        def delta(q=q):
            return _dequantized(stored, q.stored, q.transposed, by_rows=not q.product) \
                - numpy_helper.to_array(fp32[q.weight])
        if not q.product:  # every lookup of the table: it is stored once
            for i, lookup in enumerate(graph.node):
                if lookup.op_type == "Gather" and lookup.input[0] == q.weight:
                    lookup.input[0] = blend(q.weight, delta, switch, i)
            continue
        at = positions[q.node]
        node = graph.node[at]
        node.input[1] = blend(q.weight, delta, switch, at)
        a, p = node.input[0], f"{SWITCH}_{k}_a"
        before.setdefault(at, []).extend([
            helper.make_node("DynamicQuantizeLinear", [a], [p + "_q", p + "_s", p + "_z"]),
            helper.make_node("DequantizeLinear", [p + "_q", p + "_s", p + "_z"], [p + "_r"]),
            helper.make_node("Sub", [p + "_r", a], [p + "_e"]),
            helper.make_node("Mul", [switch, p + "_e"], [p + "_se"]),
            helper.make_node("Add", [a, p + "_se"], [p])])
        node.input[0] = p
        table = heads.get(q.weight)
        if table in fp32:  # its lookups read the head's int8 copy: rows of the transposed weight
            def rows(q=q, table=table):
                return _dequantized(stored, q.stored, q.transposed).T - numpy_helper.to_array(fp32[table])
            for i, lookup in enumerate(graph.node):
                if lookup.op_type == "Gather" and lookup.input[0] == table:
                    lookup.input[0] = blend(table, rows, switch, i)
    ordered = []
    for i, node in enumerate(graph.node):
        ordered.extend(before.get(i, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(added)
    graph.input.append(helper.make_tensor_value_info(SWITCH, TensorProto.FLOAT, [len(nodes)]))
    return model


def worst_error(got, want) -> float:
    """The segment's relative error as its check measures it (hetcc/verify.py check_relative: the
    worst floating-point output, NaN the worst); inf where the check would fail whatever the limit
    (an integer output that differs at all, a shape or dtype not the reference's)."""
    from hetcc.backends._common import from_numpy
    from hetcc.errors import LoweringError
    from hetcc.verify import check_relative

    try:
        return check_relative("", [""] * len(want), [from_numpy(g) for g in got], want, math.inf)[1]
    except LoweringError:
        return math.inf


def order(nodes: list[Quantized], alone: list[float]) -> list[int]:
    """The order to leave nodes in fp32: squared error per share of what int8 buys there (a
    product's share of the products' weights plus its share of all weights; a table's share of all
    weights), largest first. A node that moved nothing alone is never worth it, and comes last."""
    products = sum(q.size for q in nodes if q.product) or 1
    total = sum(q.size for q in nodes) or 1

    def worth(k):
        q = nodes[k]
        buys = (q.size / products if q.product else 0.0) + q.size / total
        if not math.isfinite(alone[k]):  # it alone breaks the outputs: first
            return math.inf
        return alone[k] ** 2 / buys if buys > 0 else math.inf
    return sorted(range(len(nodes)), key=lambda k: (-worth(k), k))


def leave_out(nodes: list[Quantized], run, limit: float, said: list | None = None) -> Kept | None:
    """The fewest ``nodes`` (in ``order``) to leave in fp32 for ``run(switches)`` (the segment's
    error with node k in int8 where switches[k] is 1) to be within HEADROOM x ``limit``; None where
    all in int8 is within ``limit``, where it takes more than MOST_KEPT of the products' weights or
    every node, or where it cannot be done; ``said`` gets why."""
    import numpy as np

    n = len(nodes)
    said = said if said is not None else []
    everything = run(np.ones(n, dtype=np.float32))
    if everything <= limit or not n:
        said.append(f"the switched model measured {everything:.3g} all in int8, within {limit:.3g}: "
                    "no node is left in fp32")
        return None
    limit *= HEADROOM
    alone = [run(np.eye(1, n, k, dtype=np.float32)[0]) for k in range(n)]
    ranked = order(nodes, alone)
    products = sum(q.size for q in nodes if q.product) or 1
    switches = np.ones(n, dtype=np.float32)
    given_back = 0
    for k in ranked:
        if alone[k] <= 0:
            said.append(
                f"int8 moved the segment by {everything:.3g}; what is still in int8 moves nothing alone, so "
                "no node is left in fp32")
            return None
        given_back += nodes[k].size if nodes[k].product else 0
        if given_back > MOST_KEPT * products:
            said.append(
                f"int8 moved the segment by {everything:.3g}; holding {limit:.3g} would take more than "
                f"{MOST_KEPT:.0%} of its products back to fp32, so none is")
            return None
        switches[k] = 0.0
        if not switches.any():  # nothing would be left in int8, yet the segment priced as int8
            said.append(f"int8 moved the segment by {everything:.3g}; holding {limit:.3g} would leave no node "
                        "in int8, so none is left out")
            return None
        error = run(switches)
        if error <= limit:
            kept = [nodes[j] for j in range(n) if switches[j] == 0.0]
            modules = Counter(q.module for q in nodes if q.product and q.module is not None)
            return Kept(tuple(kept), n, error, everything, dict(modules))
    return None


def sensitivity_session(model):
    """An ONNX Runtime CPU session on ``model``: a ModelProto (serialized in memory: the switched
    model is measured, then dropped) or a file's path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
