"""Calibration batches for static int8 (``onnxruntime:cpu@int8s``, ``openvino:cpu@int8s``):
inputs like the example ones, from which a runtime fixes each activation's int8 scale ahead of
time (docs/precision.md, "Static int8"), and to which ONNX Runtime's int8 weights are rounded
(``@int8``, ``@int8u``: backends/onnx_rounding.py).

The user gives batches of the model's inputs; a segment needs its own inputs, which are values in
the middle of the model. ``CalibrationBatches`` runs the captured graph on each batch once, before
placement (torch, as the reference run on the example inputs does), keeps the values a segment
could read (those read across placement units), and hands each segment its own. The example inputs
are not among the batches: every segment is checked on them, and a check on inputs the ranges (or
the fit) were taken from would be optimistic."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from hetcc.errors import InputError, InternalError

MAX_BATCHES = 64
"""More batches add little to min/max ranges and hold the values segments read of each."""

SHAPES = ("each batch given as the example inputs are: a tuple of tensors for positional inputs, a "
          "dict for keyword inputs, or a pair (tuple, dict) for both")


WITHOUT = {"calibration": "static int8 is then not offered, and int8 weights are rounded to nearest",
           "validation": "the budget is then checked on the example inputs alone"}
"""What leaving each kind of batches out means, for the error on an empty list."""


def check_batches(batches, what: str = "calibration") -> list:
    """``batches`` (compile's ``calibration=`` or ``validation=``, named by ``what``) as a list, or
    InputError; what can be checked before capture."""
    if isinstance(batches, (torch.Tensor, Mapping, str, bytes)) or not hasattr(batches, "__iter__"):
        raise InputError(f"{what} must be a list of input batches, {SHAPES}; e.g. "
                         f"{what}=[(x1,), (x2,)]")
    batches = list(batches)
    if not batches:
        raise InputError(f"{what} is an empty list: give one or more input batches like the "
                         f"example inputs, or leave it out ({WITHOUT[what]})")
    if len(batches) > MAX_BATCHES:
        raise InputError(f"{what} has {len(batches)} batches; give at most {MAX_BATCHES}: the values "
                         "segments read are kept for each batch while compiling"
                         + (", and a few representative batches fix min-max ranges as well as many"
                            if what == "calibration" else ""))
    return batches


def flattened(captured, batches: list, what: str = "calibration") -> list[list]:
    """``batches`` (from ``check_batches``) flattened as the example inputs were, each checked
    against them: dtype, device, the static dimensions, and the dynamic ones within their ranges
    and equal wherever they share a name."""
    from hetcc.capture import _flatten_inputs

    want = [captured.values[n] for n in captured.user_inputs]
    flats = []
    for i, batch in enumerate(batches):
        args, kwargs = _split(batch)
        try:
            flat = _flatten_inputs(captured, args, kwargs)
        except (InputError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{what} batch {i}: does not match the example inputs ({exc}); "
                             f"give {SHAPES}") from None
        sizes: dict[str, tuple[str, int]] = {}
        for name, got, example in zip(captured.user_inputs, flat, want):
            _check(f"{what} batch {i}", name, got, example, captured.dynamic_dims.get(name, {}),
                   captured.dim_ranges, sizes)
        flats.append([x.detach() for x in flat])
    return flats


class CalibrationBatches:
    def __init__(self, captured, batches: list):
        """``batches`` (from ``check_batches``), checked and flattened (``flattened``)."""
        self.flats = flattened(captured, batches)
        self._captured = captured
        self._values: list[dict] = []

    def __len__(self) -> int:
        """Batches the scales and fits come from: the user's alone. The example inputs are not
        among them: every segment is checked on those, and a check on inputs the scales were taken
        from is optimistic (t5 in static int8 moved its examples 1.7 % and other inputs 6.9 %)."""
        return len(self.flats)

    def run(self, unit_of: dict, readers=None) -> None:
        """Run the captured graph on each batch and keep the values a segment may read (one of
        whose nodes is in ``readers``, if given)."""
        captured = self._captured
        keep = read_across_units(captured.graph, unit_of, readers)
        self._values = reference_values(captured, self.flats, keep, "calibration")

    def for_segment(self, input_names) -> tuple:
        """Each batch's values of ``input_names`` (a segment's inputs), as a tuple per batch."""
        if not self._values:
            raise InternalError("calibration batches were not run before a segment asked for them")
        try:
            return tuple(tuple(values[n].contiguous() for n in input_names) for values in self._values)
        except KeyError as exc:
            raise InternalError(f"segment input {exc} is not among the values kept for calibration") from None


def reference_values(captured, flats: list, keep: set, what: str) -> list[dict]:
    """Per batch of ``flats`` (``what``'s: calibration, validation), the values named in ``keep``
    from running the captured graph on it (torch, as the reference run on the example inputs)."""
    from hetcc.capture import reference_run

    out = []
    for i, flat in enumerate(flats):
        env = reference_run(captured, flat, inputs=f"{what} batch {i}")
        out.append({k: env[k] for k in keep if k in env})
    return out


def units_allowing(units, candidates, targets) -> set:
    """The node names of the placement units that may run on any of ``targets`` (indices)."""
    return {m for u, unit in enumerate(units) if any(candidates.allowed[u][t] for t in targets)
            for m in unit.members}


def read_across_units(graph, unit_of: dict, readers=None) -> set:
    """Names of the tensors some node (of ``readers``, if given) reads from another placement
    unit (or from outside every unit: inputs, state): every segment input is one, since a segment
    holds whole units. A size computed outside the units is looked through to the tensors it is
    computed from, as a segment recomputes it from those (hetcc/program.py)."""
    found: dict = {}

    def sources(node):
        if node.name in unit_of or node.op != "call_function":
            return [node]
        if node.name not in found:  # sizes computed from sizes: each walked once
            found[node.name] = [s for a in node.all_input_nodes for s in sources(a)]
        return found[node.name]

    keep = set()
    for n in graph.nodes:
        if n.name not in unit_of or (readers is not None and n.name not in readers):
            continue
        for a in n.all_input_nodes:
            for s in sources(a):
                if unit_of.get(s.name) != unit_of[n.name]:
                    keep.add(s.name)
    return keep


def _split(batch) -> tuple[tuple, dict]:
    if isinstance(batch, Mapping):
        args, kwargs = (), batch
    elif (isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], (tuple, list))
            and isinstance(batch[1], Mapping)):
        args, kwargs = batch
    elif isinstance(batch, (tuple, list)):
        args, kwargs = batch, {}
    else:
        args, kwargs = (batch,), {}
    return tuple(_tensor(x) for x in args), {k: _tensor(v) for k, v in kwargs.items()}


def _tensor(x):
    """A numpy array given for a tensor input becomes one (as hetcc run's .npz inputs do)."""
    if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
        return torch.from_numpy(x)
    return x


def _check(batch: str, name: str, got, example, dynamic: dict, ranges: dict, sizes: dict) -> None:
    where = f"{batch}: input {name!r}"
    if got.dtype != example.dtype:
        raise InputError(f"{where} is {got.dtype}, the example input {example.dtype}; give each batch in "
                         "the example's dtypes")
    if got.device != example.device:
        raise InputError(f"{where} is on {got.device}, the example input on {example.device}; give each "
                         "batch where the example inputs are")
    fixed = [a for a in range(example.dim()) if a not in dynamic]
    if got.dim() != example.dim() or any(got.shape[a] != example.shape[a] for a in fixed):
        raise InputError(f"{where} has shape {tuple(got.shape)}, the example input {tuple(example.shape)}; "
                         "a batch may differ only in the dimensions compiled as dynamic (dynamic_shapes)")
    for axis, symbol in dynamic.items():
        size = int(got.shape[axis])
        low, high = ranges.get(symbol, (0, None))
        if size < low or (high is not None and size > high):
            raise InputError(f"{where} has {size} along dimension {axis} ({symbol}), outside the range "
                             f"{low}..{high} it was compiled for")
        if symbol in sizes and sizes[symbol][1] != size:
            raise InputError(f"{where} has {size} along dimension {axis} ({symbol}), but "
                             f"{sizes[symbol][0]!r} has {sizes[symbol][1]}; inputs that share {symbol} "
                             "must agree on it, as in a call")
        sizes.setdefault(symbol, (name, size))
