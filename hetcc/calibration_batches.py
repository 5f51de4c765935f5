"""Calibration batches for static int8 (``onnxruntime:cpu@int8s``): inputs like the example ones,
from which a runtime fixes each activation's int8 scale ahead of time (docs/precision.md, "Static
int8").

The user gives batches of the model's inputs; a segment needs its own inputs, which are values in
the middle of the model. ``CalibrationBatches`` runs the captured graph on each batch once, when the first
segment asks (torch, as the reference run on the example inputs does), and hands each segment the
values it reads. It keeps every batch's values while compile runs, so a few batches are enough:
the scales come from the range of values seen, and the example inputs are always among them."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from hetcc.errors import InputError

MAX_BATCHES = 64
"""More batches add little to min/max ranges and hold every intermediate value of each in memory."""


class CalibrationBatches:
    def __init__(self, captured, batches):
        from hetcc.capture import _flatten_inputs

        if isinstance(batches, (torch.Tensor, Mapping)) or not hasattr(batches, "__iter__"):
            raise InputError("calibration must be a list of input batches, each given as the example "
                             "inputs are (a tuple of tensors, or a dict of keyword inputs), e.g. "
                             "calibration=[(x1,), (x2,)]")
        batches = list(batches)
        if not batches:
            raise InputError("calibration is an empty list: give one or more input batches like the "
                             "example inputs, or leave it out (static int8 is then not offered)")
        if len(batches) > MAX_BATCHES:
            raise InputError(f"calibration has {len(batches)} batches; give at most {MAX_BATCHES}: each "
                             "batch's intermediate values are held while compiling, and a few "
                             "representative batches fix the int8 ranges as well as many")
        want = [captured.values[n] for n in captured.user_inputs]
        # the example inputs come first: the segments are checked on them, so their ranges count
        self.flats = [list(want)]
        for i, batch in enumerate(batches):
            args, kwargs = (((), dict(batch)) if isinstance(batch, Mapping) else
                            (tuple(batch) if isinstance(batch, (tuple, list)) else (batch,), {}))
            try:
                flat = _flatten_inputs(captured, args, kwargs)
            except InputError as exc:
                raise InputError(f"calibration batch {i}: {exc}; give each batch as the example inputs "
                                 "are given") from None
            for name, got, example in zip(captured.user_inputs, flat, want):
                _check(i, name, got, example, captured.dynamic_dims.get(name, {}))
            self.flats.append([x.detach() for x in flat])
        self._captured = captured
        self._envs = None

    def __len__(self) -> int:
        """Batches the scales come from: the user's and the example inputs."""
        return len(self.flats)

    def for_segment(self, input_names) -> tuple:
        """Each batch's values of ``input_names`` (a segment's inputs), as a tuple per batch."""
        if self._envs is None:
            from hetcc.capture import reference_run

            self._envs = [self._captured.values] + [reference_run(self._captured, flat)
                                                    for flat in self.flats[1:]]
        return tuple(tuple(env[n].contiguous() for n in input_names) for env in self._envs)


def _check(i: int, name: str, got, example, dynamic: dict) -> None:
    if not isinstance(got, torch.Tensor):
        raise InputError(f"calibration batch {i}: input {name} is a {type(got).__name__}, not a tensor")
    if got.dtype != example.dtype:
        raise InputError(f"calibration batch {i}: input {name} is {got.dtype}, the example input "
                         f"{example.dtype}; give each batch in the example's dtypes")
    fixed = [a for a in range(example.dim()) if a not in dynamic]
    if got.dim() != example.dim() or any(got.shape[a] != example.shape[a] for a in fixed):
        raise InputError(f"calibration batch {i}: input {name} has shape {tuple(got.shape)}, the example "
                         f"input {tuple(example.shape)}; a batch may differ only in the dimensions "
                         "compiled as dynamic (dynamic_shapes)")
