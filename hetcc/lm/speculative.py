"""Speculative decoding, greedy: a small draft model proposes ``k`` tokens one by one, the target
model checks all of them in one call of its verify graph (hetcc/lm/graphs.py ExtendGraph with
every position's logits), and the longest run of proposals that the target would have chosen
itself is kept, plus the target's own next token. The output is the target's greedy output, token
for token; what speculation changes is how many target calls it takes (docs/generation.md).

Each model keeps its own cache on its own targets. Rejected proposals are given back in both: the
target's verify chunk keeps only its accepted slots (the next write overwrites the rest), the
draft rolls back to its last accepted token. Batch 1: sequences of a batch accept different
numbers of tokens, so their caches would stop sharing one write slot.
"""
from __future__ import annotations

import time

import torch

from hetcc.errors import InputError


def check(lm, draft, sampling) -> None:
    from hetcc.lm.model import CompiledLM

    if not isinstance(draft, CompiledLM):
        raise InputError(f"draft must be a CompiledLM (hetcc.compile_lm of a small model), got "
                         f"{type(draft).__name__}")
    if lm.verify is None:
        raise InputError("this model was compiled without speculative decoding; compile it with "
                         "speculate=k (the number of draft tokens checked per call)")
    if not sampling.greedy:
        raise InputError("speculative decoding here is greedy only (its output is the target's greedy "
                         "output); drop temperature, top_k and top_p, or the draft")
    if lm.shape.batch != 1:
        raise InputError(f"speculative decoding runs one sequence at a time; compile the target with "
                         f"batch=1 (it has batch {lm.shape.batch})")
    if draft.shape.vocab != lm.shape.vocab:
        raise InputError(f"the draft's vocabulary has {draft.shape.vocab} tokens and the target's "
                         f"{lm.shape.vocab}; a draft must share the target's tokenizer")


def generate_one(lm, draft, row, limit, stops, out, first: bool) -> list[int]:
    start = time.perf_counter()
    logits, cache = lm._prefill([row], out)
    _, draft_cache = draft._prefill([row], _Scratch())
    made = [int(logits[0].argmax())]
    if first:
        out.ttft_s = time.perf_counter() - start
    k = lm.shape.speculate
    width = k + 1
    while len(made) < limit and made[-1] not in stops:
        tick = time.perf_counter()
        token = made[-1]
        if cache.next_slot + width > cache.slots or draft_cache.next_slot + k > draft_cache.slots:
            # too near the end of either cache for a whole round: plain decode steps from here
            stepped = lm.decode(_ids([token]), cache.position, *cache.inputs())
            cache.append(stepped[1:])
            made.append(int(stepped[0][0].argmax()))
            out.step_seconds.append(time.perf_counter() - tick)
            continue
        proposals = _propose(draft, draft_cache, token, k)
        slot = cache.next_slot
        position = cache.position + torch.arange(width, device=cache.position.device)
        ones = torch.ones(1, width, dtype=torch.long)
        checked = lm.verify(_ids([token, *proposals]), ones, position, *cache.inputs())
        best = checked[0][0].argmax(-1).tolist()
        kept = 0
        while kept < k and proposals[kept] == best[kept]:
            kept += 1
        accepted = torch.zeros(1, width, dtype=torch.long)
        accepted[:, :kept + 1] = 1
        cache.write_chunk(checked[1:], accepted, slot, cache.position + kept + 1, next_slot=slot + kept + 1)
        if kept == k:  # the draft never fed its last proposal: feed it, so both caches agree
            _step(draft, draft_cache, proposals[-1])
        else:
            draft_cache.rollback(draft_cache.next_slot - (k - 1 - kept))
        out.draft_proposed += k
        out.draft_accepted += kept
        added = 0
        for t in [*proposals[:kept], best[kept]]:
            made.append(t)
            added += 1
            if t in stops or len(made) == limit:
                break
        # a round's time spread over the tokens it gave: time per output token, comparable to decode's
        out.step_seconds += [(time.perf_counter() - tick) / added] * added
    return made


def _propose(draft, cache, token: int, k: int) -> list[int]:
    proposals = []
    for _ in range(k):
        token = _step(draft, cache, token)
        proposals.append(token)
    return proposals


def _step(draft, cache, token: int) -> int:
    # a draft compiled for a batch runs the sequence in row 0; its other rows repeat it unread
    stepped = draft.decode(_ids([token], draft.shape.batch), cache.position, *cache.inputs())
    cache.append(stepped[1:])
    return int(stepped[0][0].argmax())


def _ids(tokens, batch: int = 1) -> torch.Tensor:
    return torch.tensor([tokens] * batch, dtype=torch.long)


class _Scratch:
    """Where the draft's prefill puts its hand-over figures: not the target's."""
    handover_s = 0.0
    handover_bytes = 0
