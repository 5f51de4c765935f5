"""Capture: torch.export once, decomposed to core ATen up front, plus a reference run.

The reference run executes the captured graph on the example inputs and keeps every value; the
facts pass reads concrete shapes from it, and each segment is later verified against it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from hetcc.errors import ExportError, InputError

log = logging.getLogger(__name__)


@dataclass
class Captured:
    exported: "torch.export.ExportedProgram"
    graph: fx.Graph
    weights: dict[str, torch.Tensor]
    """Placeholder name -> tensor, for parameters, buffers and lifted constants."""
    user_inputs: list[str]
    """Placeholder names of the model's (flattened) tensor inputs, in call order."""
    outputs: list[str | None]
    """Graph value names of the flattened outputs (None for a non-tensor constant output)."""
    const_outputs: dict[int, object]
    """Flattened output index -> constant Python value, for outputs that are not tensors."""
    out_spec: pytree.TreeSpec
    in_spec: pytree.TreeSpec
    values: dict[str, object] = field(default_factory=dict)
    """Every node's value from the reference run on the example inputs."""
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    """Value name -> {axis: symbol} for axes that vary at run time."""
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    _by_name: dict = field(default_factory=dict, repr=False)

    def node(self, name: str) -> fx.Node:
        if not self._by_name:
            self._by_name.update((n.name, n) for n in self.graph.nodes)
        return self._by_name[name]


def capture(model, example_inputs, dynamic_shapes=None, example_kwargs=None) -> Captured:
    """Export ``model`` (a module, or an ExportedProgram that is already exported) and decompose it.

    For an ExportedProgram, ``example_inputs`` may be None when the program carries its own."""
    exported = isinstance(model, torch.export.ExportedProgram)
    if not exported and not isinstance(model, torch.nn.Module):
        raise ExportError(f"hetcc.compile expects a torch.nn.Module or a torch.export.ExportedProgram, "
                          f"got {type(model).__name__}")
    if exported and example_inputs is None:
        if model.example_inputs is None:
            raise ExportError("this ExportedProgram carries no example inputs; pass example_inputs")
        example_inputs, example_kwargs = model.example_inputs
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    try:
        if exported:
            if dynamic_shapes is not None:
                raise ExportError("dynamic_shapes cannot be changed on an ExportedProgram: export the "
                                  "model again with the dynamic shapes you want")
            ep = model
        else:
            ep = torch.export.export(model.eval(), tuple(example_inputs), kwargs=example_kwargs,
                                     dynamic_shapes=dynamic_shapes)
        ep = ep.run_decompositions(decomposition_table())
    except ExportError:
        raise
    except Exception as exc:  # torch raises many types; we explain them in one paragraph
        raise ExportError(explain_export_failure(exc)) from exc
    return _from_exported(ep, tuple(example_inputs), example_kwargs or {}, dynamic_shapes)


PRESERVED = ("scaled_dot_product_attention",)
"""Ops kept whole instead of decomposed: every runtime we target has a fused kernel for attention,
and the cost model needs to see attention as attention (its cost differs most between runtimes)."""


def decomposition_table() -> dict:
    table = torch.export.default_decompositions()
    for op in list(table):
        if any(name in str(op) for name in PRESERVED):
            del table[op]
    return table


def _from_exported(ep, args, kwargs, dynamic_shapes=None) -> Captured:
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    weights, user_inputs = {}, []
    for spec in sig.input_specs:
        name = spec.arg.name
        if spec.kind.name == "USER_INPUT":
            user_inputs.append(name)
        elif spec.target is not None and spec.target in state:
            weights[name] = state[spec.target].detach()
        else:
            raise ExportError(f"input {name!r} of kind {spec.kind.name} is not supported by hetcc yet")
    graph = ep.graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    outputs, consts = [], {}
    for i, a in enumerate(out_node.args[0]):
        if isinstance(a, fx.Node):
            outputs.append(a.name)
        else:
            outputs.append(None)
            consts[i] = a
    cap = Captured(ep, graph, weights, user_inputs, outputs, consts,
                   ep.call_spec.out_spec, ep.call_spec.in_spec)
    flat = _flatten_inputs(cap, args, kwargs)
    cap.values = reference_run(cap, flat)
    cap.dynamic_dims, cap.dim_ranges = _dynamic_dims(ep, _dim_names(ep, user_inputs, dynamic_shapes))
    return cap


def _flatten_inputs(cap: Captured, args, kwargs) -> list:
    leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if len(tensors) != len(cap.user_inputs):
        raise InputError(f"expected {len(cap.user_inputs)} tensor inputs, got {len(tensors)}")
    return tensors


def reference_run(cap: Captured, flat_inputs) -> dict[str, object]:
    env: dict[str, object] = dict(cap.weights)
    env.update(zip(cap.user_inputs, flat_inputs))
    with torch.no_grad():
        for n in cap.graph.nodes:
            if n.op != "call_function":
                continue
            args = fx.node.map_arg(n.args, lambda a: env[a.name])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a.name])
            try:
                env[n.name] = n.target(*args, **kwargs)
            except Exception as exc:  # the model itself fails on these inputs: say where
                raise InputError(
                    f"the model fails on the example inputs at node {n.name} ({n.target}, from "
                    f"{_source(n)}): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                    "Check the example inputs (e.g. token ids beyond the embedding table, a sequence "
                    "longer than the position table) by running the model eagerly on them") from exc
    return env


def _source(node) -> str:
    """Where a node came from: its submodule and the user's line, as torch.export recorded them."""
    import os

    stack = node.meta.get("stack_trace") or ""
    lines = [line.strip() for line in stack.splitlines() if line.strip().startswith("File ")]
    torch_dir = os.path.dirname(torch.__file__)
    mine = [line for line in lines if torch_dir not in line]
    where = (mine or lines or ["an unknown line"])[-1]
    modules = node.meta.get("nn_module_stack") or {}
    path, kind = list(modules.values())[-1] if modules else ("", None)
    if path:
        name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].strip("'>")
        return f"submodule {path} ({name}), {where}"
    return where


def _dim_names(ep, user_inputs, dynamic_shapes) -> dict:
    """Export's symbols (s31) -> the names the user gave their Dims (batch), where we can tell."""
    if not isinstance(dynamic_shapes, (tuple, list)):
        return {}
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    specs = list(dynamic_shapes)
    names = {}
    for name, spec in zip(user_inputs, specs):
        val = placeholders[name].meta.get("val")
        if not isinstance(spec, dict) or not isinstance(val, torch.Tensor):
            continue
        for axis, dim in spec.items():
            size = val.shape[axis]
            label = getattr(dim, "__name__", None)
            if isinstance(size, torch.SymInt) and label and size.node.expr.is_symbol:
                names[size.node.expr] = label
    if len(set(names.values())) != len(names):
        return {}  # two symbols share a name: keep export's own names rather than confuse them
    return names


def _dynamic_dims(ep, names: dict | None = None):
    """Which axes of which values are symbolic, named by the user's Dim names where known."""
    import sympy

    swap = {sym: sympy.Symbol(label) for sym, label in (names or {}).items()}

    def label(expr) -> str:
        return str(expr.xreplace(swap)) if swap else str(expr)

    ranges = {sym_label: (_bound(vr.lower, 1), _bound(vr.upper, 2**31 - 2))
              for sym_label, vr in ((label(sym), vr) for sym, vr in ep.range_constraints.items())}
    dims: dict[str, dict[int, str]] = {}
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            axes = {i: label(s.node.expr) for i, s in enumerate(val.shape)
                    if isinstance(s, torch.SymInt) and not _is_constant(s)}
            if axes:
                dims[n.name] = axes
    return dims, ranges


def _bound(value, default: int) -> int:
    """A range bound as an int; torch's and sympy's infinities (and anything odd) give ``default``."""
    try:
        return int(value) if bool(value.is_finite) else default
    except (AttributeError, TypeError, ValueError):
        return default


def _is_constant(s) -> bool:
    try:
        return s.node.expr.is_number
    except AttributeError:
        return False


_WHERE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def explain_export_failure(exc: BaseException) -> str:
    """One paragraph: what torch.export could not handle, where, and how to fix it."""
    text = str(exc)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    where = ""
    matches = _WHERE.findall(text)
    if matches:
        file, line, func = matches[-1]
        where = f" at {file}:{line} (in {func})"
    name = type(exc).__name__
    if "DataDependent" in name or "data-dependent" in text or "data dependent" in text:
        cause = ("the model branches or sizes a tensor on a tensor's value (data-dependent control "
                 "flow)")
        fix = ("make the branch independent of tensor values, use torch.cond for a real branch, or "
               "compute the value outside the model and pass it in")
    elif "Constraint" in name or "specialized" in text or "dynamic_shapes" in text:
        cause = "the dynamic shapes you asked for do not hold for this model"
        fix = ("check the dims in dynamic_shapes (an example size of 1 specialises a dim; use an "
               "example batch of 2 or more), or drop the dim from dynamic_shapes")
    elif "Unsupported" in name or "not supported" in text.lower():
        cause = "the model uses a Python construct that torch.export cannot trace"
        fix = "rewrite that part in plain tensor operations, or move it outside the model"
    else:
        cause = f"torch.export failed ({name})"
        fix = "run torch.export.export(model, example_inputs) yourself to see the full trace"
    return f"cannot capture the model: {cause}{where}. torch said: {first[:300]}. To fix: {fix}."
