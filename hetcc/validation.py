"""Validation batches (compile(validation=...)): inputs like the example ones on which the accuracy
budget must hold too (docs/precision.md, "Inputs besides the examples").

The budget is otherwise checked on the example inputs alone, and what is chosen to hold it is
chosen on them: which nodes stay fp32 (backends/onnx_sensitivity.py), which units give a precision
up. A choice fitted to one input can miss on the next: t5 at 1 %, with 13 nodes left in fp32 to
hold 0.97 % on its example, moved 0.94-1.13 % on 16 other inputs, 11 of them beyond 1 %
(benchmarks/bench_validation.py). With batches given, each
lower-precision segment is checked against its limit on every batch as on the example inputs (and
its backend keeps nodes in fp32 by the worst of them), and the stitched model is checked on each:
the worst value over the example inputs and the batches counts.

The batches' own values come from running the captured graph on each once (torch, as the reference
run on the example inputs), keeping what segments read and write."""
from __future__ import annotations

from hetcc.calibration_batches import flattened, read_across_units, reference_values
from hetcc.errors import InternalError


class ValidationBatches:
    def __init__(self, captured, batches: list):
        """``batches`` (from ``check_batches(..., "validation")``), checked and flattened."""
        self.flats = flattened(captured, batches, "validation")
        self._captured = captured
        self._values: list[dict] = []

    def __len__(self) -> int:
        return len(self.flats)

    def run(self, unit_of: dict, members=None) -> None:
        """Run the captured graph on each batch and keep the values a segment of ``members`` (node
        names: the units that may run in a lower precision, the only segments checked on the
        batches; None: every unit's) may read or write, and the model's outputs. A segment holds
        whole units, so what it reads is read across units, and what it returns is read outside
        the unit that makes it (by another unit, the model's outputs, or a state or input update)."""
        captured = self._captured
        keep = read_across_units(captured.graph, unit_of, members) | {o for o in captured.outputs if o is not None}
        for node in captured.graph.nodes:
            unit = unit_of.get(node.name)
            if unit is not None and (members is None or node.name in members) \
                    and any(unit_of.get(user.name) != unit for user in node.users):
                keep.add(node.name)
        self._values = reference_values(captured, self.flats, keep, "validation")

    def for_segment(self, input_names, output_names) -> tuple:
        """Per batch, the segment's inputs and its reference outputs: ((inputs...), (outputs...))."""
        if len(self._values) != len(self.flats):
            raise InternalError("validation batches were not run before a segment asked for them")
        try:
            return tuple((tuple(v[n].contiguous() for n in input_names), tuple(v[n] for n in output_names))
                         for v in self._values)
        except KeyError as exc:
            raise InternalError(f"segment value {exc} is not among those kept for validation") from None

    def worst(self, runtime, budget) -> tuple[float, int]:
        """The budget's metric on the stitched model (a hetcc.runtime.Runtime) over the batches:
        the worst of them, and its batch's index. The model's state is left as it was. A segment
        that fails on a batch raises hetcc.errors.SegmentError naming the batch and the segment."""
        from hetcc.errors import HetccError, SegmentError, readable
        from hetcc.precision import whole_model_error

        if len(self._values) != len(self.flats):
            raise InternalError("validation batches were not run before the whole model was checked")
        measured = []
        for i, (flat, values) in enumerate(zip(self.flats, self._values)):
            try:
                measured.append(whole_model_error(runtime, self._captured, budget, flat, values))
            except HetccError as exc:  # a vendor's error, or one a backend raised itself (TensorRT's shapes)
                segment = getattr(exc, "segment", "")
                if not segment or isinstance(exc, InternalError):
                    raise
                cause = exc.cause if isinstance(exc, SegmentError) and exc.cause else \
                    f"{type(exc).__name__}: {readable(exc)}"
                failed = SegmentError(f"segment {segment} failed on validation batch {i}: {cause}")
                failed.segment, failed.cause = segment, f"on validation batch {i}: {cause}"
                raise failed from exc
        worst = budget.worst_of(measured)
        return worst, measured.index(worst)
