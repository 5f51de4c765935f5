"""The ONNX path every ONNX-consuming backend (ONNX Runtime, TensorRT, MIGraphX) shares: whether
torch's ONNX exporter can translate a node (``exporter_support``), and the export of a segment to
an .onnx file (``export_onnx``). Capability comes from the exporter's own registry (torchlib
translations per ATen overload), plus the exporter's own decompositions for ops without one (checked
by tracing them once per op), so a "yes" means the exporter can translate the node; whether a
runtime then agrees numerically is what hetcc's verify step checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from hetcc.backends._common import is_structural, lowering_error, node_dtypes, quiet
from hetcc.backends.base import YES, Support
from hetcc.names import first_line, op_name

ONNX_OPSET = 20
"""ONNX opset the exporter targets (ONNX Runtime >= 1.17, TensorRT 10 and MIGraphX parse it)."""
ONNX_EMBED_LIMIT = 1_800_000_000
"""Weights above this many bytes go to external data: protobuf caps a single file at 2 GB."""


@dataclass(frozen=True)
class OnnxFile:
    """A segment exported to ONNX in a work directory."""

    files: dict
    """Role -> path: "model" (the .onnx), and "weights" when they went to external data."""
    input_names: list
    """ONNX input name per segment input, in segment order; None where the exporter dropped an
    input that nothing reads (it must then not be fed)."""
    output_names: list
    """ONNX output name per segment output, in segment order."""
    external_data: bool
    meta: dict = field(default_factory=dict)
    """What a later step that rewrote the file records for the artifact's meta (the nodes quantizing
    left in fp32: backends/onnx_quantize.py)."""


def export_onnx(segment, workdir: Path, backend: str, opset: int = ONNX_OPSET,
                embed_limit: int = ONNX_EMBED_LIMIT, filename: str = "model.onnx") -> OnnxFile:
    """``segment.export()`` through torch's dynamo ONNX exporter to ``workdir/filename``.

    The ONNX inputs and outputs carry the segment's names. A failure is a LoweringError naming
    ``backend`` (the segment is saved beside it so it reproduces alone)."""
    import onnx
    import torch

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / filename
    try:
        ep = segment.export()
        # Graph inputs and outputs get names of their own: the exporter names inner values after
        # FX nodes too, and an output renamed to a value name another node already defines made an
        # invalid model ("Duplicate definition of name (add_7)": HF T5 and Llama). Position maps
        # them back (meta onnx_input_names / onnx_output_names).
        in_names, out_names = onnx_io_names(segment)
        with quiet():
            program = torch.onnx.export(
                ep, (), dynamo=True, optimize=True, verbose=False, opset_version=opset,
                input_names=in_names, output_names=out_names,
            )
            external = _initializer_bytes(program, segment) > embed_limit
            program.save(str(path), external_data=external)
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise lowering_error(segment, backend, exc, workdir, step=(
            f"torch.onnx.export(ep, (), dynamo=True, optimize=True, opset_version={opset})")) from exc
    onnx_inputs = _match_names([i.name for i in graph.input], in_names, "inputs", segment)
    onnx_outputs = _match_names([o.name for o in graph.output], out_names, "outputs", segment)
    files = {"model": str(path)}
    data = [p for p in workdir.iterdir() if p.name.startswith(path.name) and p != path]
    if data:
        files["weights"] = str(data[0])
    return OnnxFile(files, onnx_inputs, onnx_outputs, bool(data))


def onnx_io_names(segment) -> tuple[list[str], list[str]]:
    """The ONNX graph's input and output names for a segment: its value names, under a prefix no
    name the exporter gives an inner value has."""
    return ([f"hetcc_in{i}__{n}" for i, n in enumerate(segment.input_names)],
            [f"hetcc_out{j}__{n}" for j, n in enumerate(segment.output_names)])


def _initializer_bytes(program, segment) -> int:
    try:
        return sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                   if v.const_value is not None)
    except Exception:  # older onnx_ir: fall back to the segment's own weights
        return sum(b.numel() * b.element_size() for b in segment.gm.buffers())


def _match_names(onnx_names: list[str], wanted: list[str], kind: str, segment) -> list:
    """ONNX names in the segment's order. The exporter takes our names; where it had to rename
    (an output that is also an input) it keeps the order, so position decides."""
    if list(onnx_names) == list(wanted):
        return list(onnx_names)
    if kind == "inputs":
        present = set(onnx_names)
        if present <= set(wanted):  # unused inputs dropped: feed only the ones that remain
            return [n if n in present else None for n in wanted]
    if len(onnx_names) == len(wanted):
        return list(onnx_names)
    from hetcc.errors import InternalError

    raise InternalError(
        f"segment {segment.name!r}: the ONNX exporter produced {kind} {onnx_names}, which do not "
        f"match the segment's {wanted}"
    )


# ---- what the exporter translates ----

@lru_cache(maxsize=None)
def _registry():
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    with quiet():
        try:
            return ONNXRegistry.from_torchlib(opset_version=ONNX_OPSET)
        except TypeError:  # torch builds whose registry has one fixed opset
            return ONNXRegistry.from_torchlib()


@lru_cache(maxsize=None)
def _decomposition_table():
    from torch.onnx._internal.exporter import _decomp

    registry = _registry()
    return _decomp.create_onnx_friendly_decomposition_table(set(_decomp.get_onnx_implemented_overloads(registry)))


_gaps_cache: dict = {}


def _decomposition_gap(node):
    """None if the exporter has no decomposition for the node's op, "" if the decomposition exports,
    else what stops it. The exporter decomposes untranslated ops itself, so this traces the same
    table on stand-in tensors, once per op and dtypes."""
    import torch
    import torch.fx as fx
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        table = _decomposition_table()
    except Exception:  # a torch without these internals: no claim about decompositions
        return None
    if node.target not in table:
        return None
    key = (node.target, tuple(sorted(str(d) for d in node_dtypes(node))))
    if key in _gaps_cache:
        return _gaps_cache[key]

    def concrete(v):
        if isinstance(v, fx.Node):
            v = v.meta.get("val")
        if isinstance(v, torch.SymInt):
            return v.node.hint if v.node.hint is not None else 2
        if isinstance(v, torch.Tensor):
            shape = [concrete(s) for s in v.shape]
            if v.dtype == torch.bool:
                return torch.zeros(shape, dtype=v.dtype)
            return torch.ones(shape, dtype=v.dtype)
        return v

    try:
        args = fx.node.map_aggregate(node.args, concrete)
        kwargs = fx.node.map_aggregate(node.kwargs, concrete)
        with quiet():
            gm = make_fx(lambda *a: node.target(*a, **kwargs), decomposition_table=table,
                         tracing_mode="fake")(*args)
        registry = _registry()
        gaps = sorted({op_name(n.target) for n in gm.graph.nodes
                       if n.op == "call_function" and not is_structural(n) and not registry.get_decomps(n.target)})
        shown = ", ".join(gaps[:3]) + (f" and {len(gaps) - 3} more" if len(gaps) > 3 else "")
        gap = f"and its decomposition needs {shown}, which {'has' if len(gaps) == 1 else 'have'} none either" \
            if gaps else ""
    except Exception as exc:  # could not check: say no, the torch fallback is always right
        gap = f"and tracing its decomposition failed ({first_line(exc)})"
    _gaps_cache[key] = gap
    return gap


def exporter_support(node) -> Support:
    """Whether torch's ONNX exporter translates the node (directly, or through its own
    decompositions). Every backend that starts from ``export_onnx`` asks this first."""
    if _registry().get_decomps(node.target):
        return YES
    gap = _decomposition_gap(node)
    if gap == "":
        return YES
    reason = f"{op_name(node.target)} has no ONNX translation in torch.onnx (opset {ONNX_OPSET})"
    return Support(False, f"{reason}, {gap}" if gap else reason)
