"""An accuracy budget: how far a compiled model's outputs may move from the fp32 PyTorch reference.

One metric and one bound, measured on the example inputs over every floating-point output (the
worst output counts):

- ``rel_error``: ‖y − y_ref‖ / ‖y_ref‖ at most the bound (e.g. 0.01: 1 %);
- ``cosine``: cosine similarity of y and y_ref, flattened, at least the bound (e.g. 0.999);
- ``top1``: share of rows whose arg-max over the last dimension agrees (a classifier's or an LM's
  logits), at least the bound (e.g. 0.99).

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
TOP1_SEGMENT_LIMIT = 0.05
"""The relative error a lower-precision segment's own outputs may have under a top1 budget (inner
values have no arg-max to agree on); the whole model's agreement is what decides."""


@dataclass(frozen=True)
class AccuracyBudget:
    metric: str
    bound: float

    @classmethod
    def make(cls, value) -> "AccuracyBudget | None":
        """From a budget, a number (a rel_error bound), 'metric=bound', or {metric: bound}."""
        if value is None or isinstance(value, AccuracyBudget):
            return value
        if isinstance(value, str):
            metric, eq, bound = value.partition("=")
            metric, bound = metric.strip().rstrip("<>").strip(), bound.strip()
            if not eq:
                raise _bad(value)
            try:
                number = float(bound)
            except ValueError:
                raise _bad(value) from None
            return cls._checked(metric, number, value)
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
            value = _METRIC[self.metric](g.double(), w.double())
            if value is not None:
                values.append(value)
        if not values:
            if self.metric == "top1":
                raise HetccError("accuracy top1 needs a floating-point output with a last dimension of "
                                 "at least 2 (logits); this model has none: use rel_error or cosine")
            return self.best
        return max(values) if self.metric == "rel_error" else min(values)

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


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float64; inf where ``got`` has NaN or inf that ``want`` has not."""
    got, want = got.double(), want.double()
    both = (torch.isnan(got) & torch.isnan(want)) | (torch.isinf(want) & (got == want))
    if bool((~torch.isfinite(got) & ~both).any()):
        return math.inf
    diff = torch.where(both, 0.0, got - want)
    scale = float(torch.where(torch.isfinite(want), want, 0.0).norm())
    error = float(diff.norm())
    if scale == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / scale


def _cosine(got, want) -> float:
    if not bool(torch.isfinite(got).all()) and not torch.equal(torch.isnan(got), torch.isnan(want)):
        return -math.inf
    g, w = torch.nan_to_num(got.flatten()), torch.nan_to_num(want.flatten())
    gn, wn = float(g.norm()), float(w.norm())
    if gn == 0.0 or wn == 0.0:
        return 1.0 if gn == wn else 0.0
    return float(g @ w) / (gn * wn)


def _top1(got, want) -> float | None:
    if got.dim() == 0 or got.shape[-1] < 2 or want.numel() == 0:
        return None  # no class dimension: this output does not count for top1
    return float((got.argmax(-1) == want.argmax(-1)).double().mean())


_METRIC = {"rel_error": relative_error, "cosine": _cosine, "top1": _top1}


def _bad(value) -> HetccError:
    return HetccError(f"accuracy={value!r} is not a budget: give a relative error (accuracy=0.01), "
                      "'metric=bound' ('rel_error=0.01', 'cosine=0.999', 'top1=0.99') or {metric: bound}")
