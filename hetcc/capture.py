"""Capture: torch.export once, decomposed to core ATen up front, plus a reference run.

The reference run executes the captured graph on the example inputs and keeps every value; the
facts pass reads concrete shapes from it, and each segment is later verified against it.

State: torch.export turns a model's in-place updates (``self.calls += 1``, ``x.add_(1)``, batch
norm's running stats, a KV cache written with ``index_copy_``) into a functional graph whose output
node returns the new values first and the user's outputs after them (graph_signature.output_specs).
Capture keeps the user's outputs as the outputs, and records the rest: a buffer (or parameter) the
graph updates becomes *state*, a value the runtime holds and feeds to the segments each call instead
of a weight baked into them; an updated input is copied back into the caller's tensor.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from hetcc.eager_check import buffers_held, eager_failure, input_error, put_back
from hetcc.errors import ExportError, InputError, InternalError, plain
from hetcc.names import first_line
from hetcc.torch_quirks import fake_tensor_errors_quieted, leafspec_warning_quieted

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
    """Graph value names of the flattened user outputs (None for a non-tensor constant output)."""
    const_outputs: dict[int, object]
    """Flattened user-output index -> constant Python value, for outputs that are not tensors."""
    out_spec: pytree.TreeSpec
    in_spec: pytree.TreeSpec
    values: dict[str, object] = field(default_factory=dict)
    """Every node's value from the reference run on the example inputs."""
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    """Value name -> {axis: symbol} for axes that vary at run time."""
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Placeholder name -> value at capture, for buffers and parameters the graph updates. Not in
    ``weights``: segments read them as inputs, since their value changes from call to call."""
    state_updates: dict[str, str] = field(default_factory=dict)
    """State placeholder name -> graph value name of its new value after a call."""
    state_targets: dict[str, str] = field(default_factory=dict)
    """State placeholder name -> the module's attribute path (fqn), e.g. ``layer.cache``."""
    input_updates: dict[int, str] = field(default_factory=dict)
    """Flattened user-input index -> graph value name that the caller's tensor holds after a call."""
    notes: list[str] = field(default_factory=list)
    """What capture noticed that the plan should say (e.g. outputs a bundle cannot store)."""
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
    if isinstance(example_inputs, Mapping) and example_kwargs is None:
        # a dict of named inputs (a tokenizer's BatchEncoding) is what the model takes by keyword
        example_inputs, example_kwargs = (), dict(example_inputs)
    if example_kwargs is not None and not isinstance(example_kwargs, Mapping):
        raise InputError(f"example_kwargs must be a dict of keyword inputs, got {type(example_kwargs).__name__}")
    if example_kwargs is not None:
        example_kwargs = dict(example_kwargs)
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    held = {} if exported else buffers_held(model)
    try:
        if exported:
            if dynamic_shapes is not None:
                raise ExportError("dynamic_shapes cannot be changed on an ExportedProgram: export the "
                                  "model again with the dynamic shapes you want")
            ep = model
        else:
            # hetcc compiles inference, so a module is exported in eval mode (dropout off, batch
            # norm on its running statistics), what a user who forgot .eval() means; torch.onnx
            # does the same. Training-mode updates survive in a program the user exports in
            # training mode: its running statistics become state like any updated buffer.
            if model.training:
                log.info("exporting %s in eval mode: hetcc compiles inference (dropout off, batch "
                         "norm on its running statistics)", type(model).__name__)
            with fake_tensor_errors_quieted():
                ep = torch.export.export(model.eval(), tuple(example_inputs), kwargs=example_kwargs,
                                         dynamic_shapes=dynamic_shapes)
        with leafspec_warning_quieted():  # torch's own LeafSpecs warn when copied (torch_quirks.py)
            ep = ep.run_decompositions(decomposition_table())
    except ExportError:
        raise
    except Exception as exc:  # torch raises many types; we explain them in one paragraph
        put_back(held)
        # a failure hetcc has no explanation for may be the model's own on these inputs
        eager = None if exported or export_cause(exc) else eager_failure(model, example_inputs, example_kwargs)
        if eager is not None:
            raise input_error(eager) from eager
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


def skip_empty_cat_inputs(gm) -> int:
    """Drop the 1-D empty inputs of each ``aten.cat`` beside inputs of higher rank; returns how
    many cats changed. torch.cat skips such tensors (a legacy rule Hugging Face's cache relies on:
    a layer's cache starts as ``torch.tensor([])`` and is concatenated with the first keys), but
    ONNX's Concat and OpenVINO's refuse inputs of different ranks. Without them the values are the
    same; a cat whose empty input decides the result's dtype (a float one beside integers) is left
    as it is."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        parts = list(node.args[0])
        vals = [p.meta.get("val") if isinstance(p, fx.Node) else None for p in parts]
        if any(not isinstance(v, torch.Tensor) for v in vals) or max(v.dim() for v in vals) < 2:
            continue
        empty = [p for p, v in zip(parts, vals) if v.dim() == 1 and isinstance(v.shape[0], int) and v.shape[0] == 0]
        if not empty or len(empty) == len(parts):
            continue
        out = node.meta.get("val")
        kept = [v.dtype for p, v in zip(parts, vals) if p not in empty]
        if not isinstance(out, torch.Tensor) or functools.reduce(torch.promote_types, kept) != out.dtype:
            continue
        node.args = ([p for p in parts if p not in empty], *node.args[1:])
        for p in empty:  # a clone of the empty constant feeds nothing else now
            if p.op == "call_function" and not p.users:
                gm.graph.erase_node(p)
        changed += 1
    if changed:
        gm.recompile()
        log.debug("dropped the empty 1-D inputs of %d cat(s)", changed)
    return changed


def _from_exported(ep, args, kwargs, dynamic_shapes=None) -> Captured:
    skip_empty_cat_inputs(ep.graph_module)  # ep is run_decompositions' copy, not the user's
    sig = ep.graph_signature
    tensors = dict(ep.state_dict)
    tensors.update(getattr(ep, "constants", {}) or {})
    weights, user_inputs = {}, []
    for spec in sig.input_specs:
        name = spec.arg.name
        if spec.kind.name == "USER_INPUT":
            user_inputs.append(name)
        elif spec.kind.name == "TOKEN":
            raise ExportError(EFFECTS)
        elif spec.target is not None and spec.target in tensors:
            weights[name] = tensors[spec.target].detach()
        else:
            raise ExportError(f"input {name!r} of kind {spec.kind.name} is not supported by hetcc yet")
    graph = ep.graph
    out_node = next(n for n in graph.nodes if n.op == "output")
    mutations, user_outputs = _split_outputs(sig, out_node.args[0])
    outputs, consts = [], {}
    for i, a in enumerate(user_outputs):
        if isinstance(a, fx.Node):
            outputs.append(a.name)
        else:
            outputs.append(None)
            consts[i] = a
    cap = Captured(ep, graph, weights, user_inputs, outputs, consts,
                   ep.call_spec.out_spec, ep.call_spec.in_spec)
    _record_mutations(cap, sig, mutations)
    why = unsaveable(cap.in_spec, cap.out_spec)
    if why:
        log.warning("%s", why)
        cap.notes.append(why)
    flat = _flatten_inputs(cap, args, kwargs)
    cap.values = reference_run(cap, flat)
    cap.dynamic_dims, cap.dim_ranges = _dynamic_dims(ep, _dim_names(ep, user_inputs, dynamic_shapes))
    return cap


def unsaveable(in_spec, out_spec) -> str | None:
    """Why a bundle could not store the model's input or output structure, or None. Asked right
    after capture, so the user hears it before a long compile, not at save."""
    from hetcc.records import StructureError, storable
    from hetcc.structures import structure_problem

    try:
        storable(out_spec, "outputs")
        inputs = json.loads(pytree.treespec_dumps(in_spec))[1]
    except StructureError as exc:
        return str(exc)
    except (NotImplementedError, TypeError):
        inputs = None
    if inputs is None or structure_problem(inputs):
        return ("the model's inputs are in a structure a bundle cannot store (it stores tuples, "
                "lists and dicts with str or int keys); the compiled model runs, but cm.save() will "
                "refuse it: pass tensors, or tuples, lists and dicts of them")
    return None


_STATE_KINDS = ("BUFFER_MUTATION", "PARAMETER_MUTATION")
EFFECTS = ("the model calls an op with side effects that torch.export orders with effect tokens "
           "(aten._print, or a custom op registered as effectful); hetcc compiles pure tensor "
           "programs only: move the side effect out of the model")


def _split_outputs(sig, args) -> tuple[list, list]:
    """(mutation (spec, value) pairs, user output values) from the output node's arguments.

    torch.export lists the mutations first and the user outputs after them, but the specs say which
    is which, so they are read rather than assumed."""
    specs = list(sig.output_specs)
    if len(specs) != len(args):
        raise InternalError(f"torch.export's signature lists {len(specs)} outputs but the graph "
                            f"returns {len(args)}")
    mutations, user = [], []
    for spec, value in zip(specs, args):
        kind = spec.kind.name
        if kind == "USER_OUTPUT":
            user.append(value)
        elif kind in _STATE_KINDS or kind == "USER_INPUT_MUTATION":
            if not isinstance(value, fx.Node):
                raise ExportError(f"the model sets {spec.target!r} in place to a constant "
                                  f"({value!r}), which hetcc cannot run yet; assign a tensor instead")
            mutations.append((spec, value))
        elif kind == "TOKEN":
            raise ExportError(EFFECTS)
        else:  # LOSS_OUTPUT, GRADIENT_TO_*: a joint (training) graph, not an inference program
            raise ExportError(f"the exported program has a {kind} output ({spec.arg.name}); "
                              "hetcc compiles inference programs: pass the module, or a program from "
                              "plain torch.export.export, not a joint forward-backward graph")
    return mutations, user


def _record_mutations(cap: Captured, sig, mutations) -> None:
    """Mutated buffers and parameters become state (moved out of ``weights``); mutated inputs are
    remembered by their position among the flattened user inputs."""
    placeholder_of = {spec.target: spec.arg.name for spec in sig.input_specs
                      if spec.kind.name in ("BUFFER", "PARAMETER")}
    for spec, value in mutations:
        if spec.kind.name == "USER_INPUT_MUTATION":
            cap.input_updates[cap.user_inputs.index(spec.target)] = value.name
            continue
        name = placeholder_of.get(spec.target)
        if name is None or name not in cap.weights:
            raise InternalError(f"torch.export updates {spec.target!r}, which is not among the "
                                "program's buffers and parameters")
        # a copy: the module's own buffer changes when the module runs eagerly, ours must not
        cap.state[name] = cap.weights.pop(name).clone()
        cap.state_updates[name] = value.name
        cap.state_targets[name] = spec.target


def _flatten_inputs(cap: Captured, args, kwargs) -> list:
    from hetcc.runtime import ordered_kwargs

    leaves = pytree.tree_leaves((tuple(args), ordered_kwargs(cap.in_spec, dict(kwargs))))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if len(tensors) != len(cap.user_inputs):
        raise InputError(f"expected {len(cap.user_inputs)} tensor inputs, got {len(tensors)}")
    return tensors


def reference_run(cap: Captured, flat_inputs, inputs: str = "the example inputs") -> dict[str, object]:
    """Every node's value on ``flat_inputs`` (``inputs`` says what they are, for the error)."""
    env: dict[str, object] = dict(cap.weights)
    env.update(cap.state)
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
                    f"the model fails on {inputs} at node {n.name} ({n.target}, from "
                    f"{_source(n)}): {type(exc).__name__}: {first_line(exc)}. "
                    f"Check {inputs} (e.g. token ids beyond the embedding table, a sequence "
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
    if isinstance(dynamic_shapes, dict):  # keyed by argument name, as for keyword inputs
        specs = [dynamic_shapes.get(name) for name in user_inputs]
    elif isinstance(dynamic_shapes, (tuple, list)):
        specs = list(dynamic_shapes)
    else:
        return {}
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
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
    cause, fix = export_cause(exc) or (
        f"torch.export failed ({type(exc).__name__})",
        "run torch.export.export(model, example_inputs) yourself to see the full trace")
    return f"cannot capture the model: {cause}{where}. torch said: {plain(first).rstrip('.')}. To fix: {fix}."


def export_cause(exc: BaseException) -> tuple[str, str] | None:
    """(cause, fix) of an export failure hetcc recognises, or None."""
    text, name = str(exc), type(exc).__name__
    cache = _CACHE_OUTPUT.search(text)
    if cache:
        return (f"the model returns a transformers {cache.group(1)}, which torch.export cannot trace",
                "turn the cache off for a whole-prompt forward (model.config.use_cache = False, or "
                "use_cache=False in the call), or return the cache as tensors, as the DecodeStep "
                "wrapper in examples/hf_models.py does")
    if "DataDependent" in name or "data-dependent" in text or "data dependent" in text:
        return ("the model branches or sizes a tensor on a tensor's value (data-dependent control flow)",
                "make the branch independent of tensor values, use torch.cond for a real branch, or "
                "compute the value outside the model and pass it in")
    if "Constraint" in name or "specialized" in text or "dynamic_shapes" in text:
        return ("the dynamic shapes you asked for do not hold for this model",
                "check the dims in dynamic_shapes (an example size of 1 specialises a dim; use an "
                "example batch of 2 or more), or drop the dim from dynamic_shapes")
    if "Unsupported" in name or "not supported" in text.lower():
        return ("the model uses a Python construct that torch.export cannot trace",
                "rewrite that part in plain tensor operations, or move it outside the model")
    return None


_CACHE_OUTPUT = re.compile(r"Found <class '[\w.]*\.(\w*Cache)'> in output")
