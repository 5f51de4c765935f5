"""An accuracy budget: how far a compiled model's outputs may move from the fp32 PyTorch reference.

One metric and one bound, measured on the example inputs over every floating-point output (the
worst output counts):

- ``rel_error``: ‖y − y_ref‖ / ‖y_ref‖ at most the bound (e.g. 0.01: 1 %);
- ``cosine``: cosine similarity of y and y_ref, flattened, at least the bound (e.g. 0.999);
- ``top1``: share of rows whose arg-max over the last dimension agrees (a classifier's or an LM's
  logits: outputs of at least two dimensions count, each row one prediction), at least the bound
  (e.g. 0.99).

Integer and boolean outputs must match exactly under every metric. compile(accuracy=...) checks the
budget on the whole model, and each lower-precision segment against ``segment_limit`` on its own
outputs (docs/precision.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hetcc.errors import HetccError

METRICS = {
    "rel_error": "relative error ‖y − y_ref‖ / ‖y_ref‖, at most the bound",
    "cosine": "cosine similarity of the outputs and the reference, at least the bound",
    "top1": "share of rows whose arg-max over the last dimension agrees, at least the bound",
}
TOP1_NEEDS = ("accuracy top1 needs an output of rows of classes (logits: floating point, at least two "
              "dimensions, the last of size 2 or more); this model has none: use rel_error or cosine")
TOP1_SEGMENT_LIMIT = 0.05
"""The relative error a lower-precision segment's own outputs may have under a top1 budget (inner
values have no arg-max to agree on); the whole model's agreement is what decides."""


@dataclass(frozen=True)
class AccuracyBudget:
    metric: str
    bound: float

    @classmethod
    def make(cls, value) -> "AccuracyBudget | None":
        """From a budget, a number or numeric string (a rel_error bound), 'metric=bound', or
        {metric: bound}."""
        if value is None or isinstance(value, AccuracyBudget):
            return value
        if isinstance(value, str) and _number(value) is not None:
            return cls._checked("rel_error", _number(value), value)  # "0.01", as a number
        if isinstance(value, str):
            metric, eq, bound = value.partition("=")
            number = _number(bound) if eq else None
            if number is None:
                raise _bad(value)
            return cls._checked(metric.strip().rstrip("<>").strip(), number, value)
        if isinstance(value, dict) and len(value) == 1:
            (metric, bound), = value.items()
            return cls._checked(metric, bound, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls._checked("rel_error", value, value)
        raise _bad(value)

    @classmethod
    def _checked(cls, metric, bound, given) -> "AccuracyBudget":
        if metric not in METRICS:
            raise HetccError(f"accuracy metric {metric!r} is not one hetcc measures; use one of: "
                             + "; ".join(f"{m} ({what})" for m, what in METRICS.items()))
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise _bad(given)
        lo, hi = (0.0, math.inf) if metric == "rel_error" else (-1.0 if metric == "cosine" else 0.0, 1.0)
        if not lo <= bound <= hi or (metric == "rel_error" and bound <= 0):
            raise HetccError(f"accuracy {metric} bound {bound} is out of range: "
                             + ("a relative error above 0, e.g. 0.01 for 1 %" if metric == "rel_error"
                                else f"between {lo} and {hi}, e.g. {0.999 if metric == 'cosine' else 0.99}"))
        return cls(metric, float(bound))

    @property
    def segment_limit(self) -> float:
        """The relative error one lower-precision segment may show on its own outputs."""
        if self.metric == "rel_error":
            return self.bound
        if self.metric == "cosine":  # for vectors of equal norm, ‖a − b‖/‖a‖ = sqrt(2 (1 − cos))
            return math.sqrt(max(0.0, 2.0 * (1.0 - self.bound)))
        return TOP1_SEGMENT_LIMIT

    def measure(self, got, want) -> float:
        """The metric over outputs ``got`` against ``want`` (same order; worst output counts)."""
        values = []
        for g, w in zip(got, want):
            if not isinstance(w, torch.Tensor):
                continue
            g = torch.as_tensor(g).cpu() if not isinstance(g, torch.Tensor) else g.detach().cpu()
            if tuple(g.shape) != tuple(w.shape):
                return self.worst
            if not w.is_floating_point():
                if not torch.equal(g.to(w.dtype), w):
                    return self.worst
                continue
            g, w = g.double(), w.double()
            if bool(_off_the_reference(g, w).any()):
                return self.worst  # a NaN or infinity the reference does not have breaks any budget
            value = _METRIC[self.metric](g, w)
            if value is not None:
                values.append(value)
        if not values:
            if self.metric == "top1":
                raise HetccError(TOP1_NEEDS)
            return self.best
        return self.worst_of(values)

    def worst_of(self, values) -> float:
        """The worst of measured values: the largest relative error, the smallest cosine or top-1
        agreement."""
        values = list(values)
        return max(values) if self.metric == "rel_error" else min(values)

    def share_within(self, value: float, margin: float = 0.8) -> float:
        """The share of a lower-precision segment to keep when the whole model measured ``value``
        beyond the budget, if error grew in proportion to it: ``margin`` times budget over measured
        excess (0 when the value is not a number, or nothing measurable is left)."""
        if self.metric == "rel_error":
            excess, allowed = value, self.bound
        else:
            excess, allowed = 1.0 - value, 1.0 - self.bound
        if not math.isfinite(excess) or excess <= 0 or allowed <= 0:
            return 0.0
        return max(0.0, min(1.0, margin * allowed / excess))

    def segment_share(self, relative: float) -> float:
        """``share_within`` for one segment whose own outputs moved by ``relative``, against the
        segment limit."""
        return AccuracyBudget("rel_error", self.segment_limit).share_within(relative)

    def check_outputs(self, outputs) -> None:
        """HetccError, before anything is lowered, when the metric cannot be measured on these
        reference outputs (top1 on a model without logits)."""
        if self.metric == "top1" and not any(counts_for_top1(o) for o in outputs):
            raise HetccError(TOP1_NEEDS)

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.metric == "rel_error" else value >= self.bound

    @property
    def worst(self) -> float:
        return math.inf if self.metric == "rel_error" else -math.inf

    @property
    def best(self) -> float:
        return 0.0 if self.metric == "rel_error" else 1.0

    def __str__(self) -> str:
        return f"{self.metric} {'<=' if self.metric == 'rel_error' else '>='} {self.bound:g}"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "bound": self.bound}


def _off_the_reference(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Where one side is not finite and the two differ (NaN against NaN, and an infinity against
    the same one, agree)."""
    same = (torch.isnan(got) & torch.isnan(want)) | (got == want)
    return (~torch.isfinite(got) | ~torch.isfinite(want)) & ~same


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float64 over the finite elements; inf where either side has a NaN
    or infinity the other has not."""
    got, want = got.double(), want.double()
    if bool(_off_the_reference(got, want).any()):
        return math.inf
    finite = torch.isfinite(want)
    error = float(torch.where(finite, got - want, 0.0).norm())
    scale = float(torch.where(finite, want, 0.0).norm())
    if scale == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / scale


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, 0.0)


def _cosine(got, want) -> float:
    g, w = _finite(got.flatten()), _finite(want.flatten())  # both agree where either is not finite
    gn, wn = float(g.norm()), float(w.norm())
    if gn == 0.0 or wn == 0.0:
        return 1.0 if gn == wn else 0.0
    return float(g @ w) / (gn * wn)


def _top1(got, want) -> float | None:
    if not counts_for_top1(want):
        return None  # no rows of classes: this output does not count for top1
    return float((got.argmax(-1) == want.argmax(-1)).double().mean())


def counts_for_top1(value) -> bool:
    """An output whose arg-max over the last dimension is a prediction per row: floating point,
    at least two dimensions (rows of classes), at least two classes, and not empty."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2
            and value.shape[-1] >= 2 and value.numel() > 0)


_METRIC = {"rel_error": relative_error, "cosine": _cosine, "top1": _top1}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _bad(value) -> HetccError:
    return HetccError(f"accuracy={value!r} is not a budget: give a relative error (accuracy=0.01), "
                      "'metric=bound' ('rel_error=0.01', 'cosine=0.999', 'top1=0.99') or {metric: bound}")
