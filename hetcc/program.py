"""A segment as a standalone torch program: the unit every backend lowers.

The segment's nodes are copied out of the captured (core ATen) graph into a fresh fx graph whose
placeholders are the values the segment reads from elsewhere and whose weights are buffers of a
small root module, so the program can be run, re-exported, or handed to a vendor exporter alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from hetcc.passes.units import is_tensor_node


@dataclass
class SegmentProgram:
    name: str
    gm: fx.GraphModule
    """Core-ATen graph; weights are buffers of the root module."""
    input_names: list[str]
    output_names: list[str]
    example_inputs: tuple
    """Real tensors for the inputs, taken from the reference run on the example inputs."""
    dynamic_dims: tuple[dict[int, str], ...]
    """Per input: dimension index -> symbol name, for dimensions that vary at run time."""
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Symbol name -> (min, max) allowed at run time."""
    expected: dict = field(default_factory=dict, repr=False)
    """Output name -> value from the reference run, for verification."""
    calibration: tuple = field(default=(), repr=False)
    """Per calibration batch, the inputs' values (hetcc/calibration_batches.py): set where the segment
    runs in static int8, whose activation scales a backend fixes from them; else empty."""
    validation: tuple = field(default=(), repr=False)
    """Per validation batch (hetcc/validation.py), the inputs' values and the reference outputs:
    ((inputs...), (outputs...)); set where the segment runs in a lower precision and the user gave
    batches, on each of which it is checked against its accuracy limit as on the example inputs."""
    accuracy_limit: float | None = None
    """The relative error the segment may have on its outputs where it runs in a lower precision
    (the accuracy budget's segment limit); a backend that can keep part of a segment in fp32 keeps
    what it needs to hold it (backends/onnx_sensitivity.py). None: no budget, or fp32."""
    _exported: Any = field(default=None, repr=False)

    def reference_value(self, name: str):
        return self.expected[name]

    def export(self) -> "torch.export.ExportedProgram":
        """The segment re-exported with its dynamic dimensions (cached)."""
        if self._exported is None:
            dims: dict[str, torch.export.Dim] = {}
            shapes = []
            for per_input in self.dynamic_dims:
                spec = {}
                for axis, sym in per_input.items():
                    if sym not in dims:
                        lo, hi = self.dim_ranges.get(sym, (1, 2**31 - 2))
                        dims[sym] = torch.export.Dim(_ident(sym), min=lo, max=hi)
                    spec[axis] = dims[sym]
                shapes.append(spec or None)
            dynamic = tuple(shapes) if any(s for s in shapes) else None
            self._exported = torch.export.export(self.gm, tuple(self.example_inputs), dynamic_shapes=dynamic)
        return self._exported

    def reference(self, *inputs) -> tuple:
        with torch.no_grad():
            out = self.gm(*inputs)
        return tuple(out)


def _is_sink(node: fx.Node) -> bool:
    """A node that reads a value and makes none that anything reads: torch.export's metadata
    assertions (``aten._assert_tensor_metadata`` beside every ``.to(dtype)``). No segment runs
    them, so a value they read is no reason to return it from its segment (HF T5 returned 12
    intermediates nobody used)."""
    return node.op == "call_function" and not node.users and node.meta.get("val") is None


def dim_order(t: torch.Tensor) -> tuple[int, ...]:
    """Dimensions from outermost to innermost in memory (ties broken by position)."""
    return tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d), d)))


def with_dim_order(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``t`` as a dense tensor laid out in ``order``; no copy if it already is.

    A segment is traced with its inputs in one layout, and some ops in it (``view``, and the
    layout ``scaled_dot_product_attention`` picks for its output) hold only for that layout, while
    another runtime hands the tensor over contiguous. So torch segments get their traced layout back.
    """
    if t.is_contiguous() and order == tuple(range(t.dim())):
        return t
    if dim_order(t) == order and _is_dense(t):
        return t
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return t.permute(order).contiguous().permute(inverse)


def _is_dense(t: torch.Tensor) -> bool:
    expected = 1
    for d in reversed(dim_order(t)):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def _dense(value):
    """A segment's example input: dense in its own layout, and a tensor of its own. A view of
    another value (a cut right after a ``view``) would make torch.export guard on its ``_base``,
    which a saved torch segment must not hold (backends/torch_archive.py refuses such guards)."""
    if isinstance(value, torch.Tensor) and value.dim():
        value = with_dim_order(value, dim_order(value))
        if value._base is not None:
            own = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
            value = own.copy_(value)
    return value


def _ident(sym: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in sym) or "d"


def build_program(name, graph: fx.Graph, node_names, weights: dict[str, torch.Tensor],
                  example_values: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]],
                  dim_ranges: dict[str, tuple[int, int]], keep_outputs=()) -> SegmentProgram:
    """Copy ``node_names`` (call_function nodes of ``graph``) into a standalone program.

    ``weights`` maps placeholder names of parameters/buffers/constants to tensors; every other value
    read from outside the segment becomes an input. Outputs are the segment's values used outside
    it, plus ``keep_outputs`` (names that must be returned anyway, e.g. model outputs).
    """
    members = set(node_names)
    order = [n for n in graph.nodes if n.name in members]
    g = fx.Graph()
    root = torch.nn.Module()
    env: dict[str, fx.Node] = {}
    inputs: list[str] = []

    def bring(a: fx.Node) -> fx.Node:
        if a.name in env:
            return env[a.name]
        if a.op == "call_function" and not is_tensor_node(a):
            # a size computed elsewhere: recompute it here from this segment's own inputs
            for b in a.all_input_nodes:
                bring(b)
            env[a.name] = g.node_copy(a, lambda b: env[b.name])
            return env[a.name]
        if a.name in weights:
            root.register_buffer(a.name, weights[a.name])
            env[a.name] = g.get_attr(a.name)
        else:
            env[a.name] = g.placeholder(a.name)
            env[a.name].meta = dict(a.meta)
            inputs.append(a.name)
        return env[a.name]

    for n in order:
        for a in n.all_input_nodes:
            if a.name not in members:
                bring(a)
        env[n.name] = g.node_copy(n, lambda a: env[a.name])
    outputs = [n.name for n in order
               if n.name in keep_outputs or any(u.name not in members and not _is_sink(u) for u in n.users)]
    g.output(tuple(env[o] for o in outputs))
    gm = fx.GraphModule(root, g)
    return SegmentProgram(
        name=name, gm=gm, input_names=inputs, output_names=outputs,
        # dense copies in the reference's layout: what a runtime hands over is dense
        example_inputs=tuple(_dense(example_values[i]) for i in inputs),
        dynamic_dims=tuple(dynamic_dims.get(i, {}) for i in inputs),
        dim_ranges=dict(dim_ranges),
        expected={o: example_values[o] for o in outputs},
    )
