"""Choosing the next token from the logits: greedy, or sampled with temperature, top-k and top-p.

The filters follow the order and conventions of transformers' ``generate`` (temperature, then
top-k, then top-p keeping at least one token), so a setting means the same thing in both; the
random draws are hetcc's own (a ``torch.Generator`` seeded per call), so a seed gives the same
tokens on every run of hetcc, not the same tokens as transformers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hetcc.errors import InputError

MIN_TEMPERATURE = 1e-4


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    """0 is greedy (the most likely token, ties to the lowest id, as torch.argmax)."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if not _real(self.temperature) or not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature
                                               < float("inf")):
            raise InputError(f"temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE} up (a "
                             f"smaller one divides the logits past float range), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)
                                       or self.top_k < 1):
            raise InputError(f"top_k must be a whole number of tokens, 1 or more, got {self.top_k!r}")
        if self.top_p is not None and not (_real(self.top_p) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or self.seed < 0):
            raise InputError(f"seed must be a whole number, 0 or more, got {self.seed!r}")
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise InputError("top_k and top_p filter a sampled choice; set a temperature above 0 to "
                             "sample, or drop them for greedy decoding")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator | None:
        """Draws happen on the host, whatever device the logits come from (a generator is tied to
        one device, and the phases' logits may come from two)."""
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """``[B, V]`` logits -> ``[B]`` token ids."""
    if sampling.greedy:
        return logits.argmax(-1)
    scores = logits.float().cpu() / sampling.temperature
    low = torch.finfo(scores.dtype).min
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, low)
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = torch.sort(scores, dim=-1)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[..., -1] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), low)
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
