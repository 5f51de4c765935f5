"""Starting a batch from stored prefixes instead of a prefill (docs/generation.md, "Prefix reuse").

Layout of a row started this way: its stored prefix in slots ``0..c-1``, the rest of its prompt
(at most ``C`` tokens, left-padded) in slots ``P-C..P-1``, run by the extend graph against the
prefix, and generation from slot ``P`` on, as after a prefill. A prefix longer than ``P - C`` is cut
to ``P - C`` (the extra tokens are recomputed in the chunk), so every prompt of at most ``P``
tokens fits, and a row needs a chunk of at most ``C`` tokens to be started this way.
"""
from __future__ import annotations

import time

import torch

from hetcc.lm.kv import KVCache
from hetcc.lm.prefix import PrefixStore


def find(store: PrefixStore, rows, prompt_len: int, chunk: int):
    """Per row (entry, prefix length) when every row can start from a stored prefix, else None."""
    found = []
    for row in rows:
        entry, length = store.longest(row)
        length = min(length, len(row) - 1, prompt_len - chunk)
        if entry is None or length < 1 or len(row) - length > chunk:
            return None
        found.append((entry, length))
    return found


def start(extend, store: PrefixStore, rows, found, shape, device: str, out) -> tuple[torch.Tensor, KVCache]:
    """Load the prefixes, run the extend graph on the rest of each prompt; the last logits and the
    cache ready for decode. Adds the prefix copies to the hand-over figures."""
    cache = KVCache([tuple(c) for c in shape.cache], shape.torch_dtype, device)
    tick = time.perf_counter()
    copied = sum(cache.load_prefix(i, entry.kv, length) for i, (entry, length) in enumerate(found))
    for entry, _ in found:
        store.touch(entry)
    out.handover_s += time.perf_counter() - tick
    out.handover_bytes += copied
    width = shape.chunk
    ids = torch.full((shape.batch, width), shape.pad, dtype=torch.long)
    chunk_mask = torch.zeros(shape.batch, width, dtype=torch.long)
    position = torch.zeros(shape.batch, width, dtype=torch.long)
    after = torch.ones(shape.batch, 1, dtype=torch.long)
    for i, (row, (_, length)) in enumerate(zip(rows, found)):
        rest = row[length:]
        ids[i, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
        chunk_mask[i, width - len(rest):] = 1
        position[i, width - len(rest):] = torch.arange(length, len(row))
        after[i] = len(row)
    chunk_mask[len(rows):, -1] = 1  # rows that fill the batch: one token, never read back
    ran = extend(ids, chunk_mask, position, *cache.inputs())
    cache.write_chunk(ran[1:], chunk_mask, shape.prompt_len - width, after)
    out.prefix_hits += len(rows)
    out.reused_tokens += sum(length for _, length in found)
    return ran[0], cache


def remember(store: PrefixStore, rows, made, cache: KVCache) -> None:
    """Store each sequence: its prompt and generated tokens but the last (never fed back)."""
    for i, (row, new) in enumerate(zip(rows, made)):
        tokens = [*row, *new[:-1]]
        store.add(tokens, cache.sequence(i, len(tokens)))
