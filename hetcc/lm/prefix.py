"""Prefix reuse: the keys and values of sequences already run, kept so that a later prompt that
starts the same way skips recomputing that start (docs/generation.md, "Prefix reuse").

Each entry is one sequence's tokens (its prompt and what was generated after it, but the last
token, which was never fed back) and, per cached tensor, its keys or values ``[kv_heads, n,
head_dim]`` in position order, on the device the cache lives on. A lookup finds the entry sharing
the longest prefix with a prompt; the first token that differs ends the match, since every key
after it saw a different past. Entries are evicted least recently used first beyond ``max_bytes``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    tokens: tuple[int, ...]
    kv: tuple[torch.Tensor, ...]
    nbytes: int


class PrefixStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompt) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and that prefix's length."""
        best, length = None, 0
        for entry in self._entries.values():
            n = _common(entry.tokens, prompt)
            if n > length:
                best, length = entry, n
        return best, length

    def touch(self, entry: Entry) -> None:
        """Mark ``entry`` used now (least recently used goes first)."""
        if entry.tokens in self._entries:
            self._entries.move_to_end(entry.tokens)

    def add(self, tokens, kv) -> None:
        tokens = tuple(tokens)
        if tokens in self._entries:
            self._entries.move_to_end(tokens)
            return
        size = sum(t.numel() * t.element_size() for t in kv)
        if size > self.max_bytes:
            return
        self._entries[tokens] = Entry(tokens, tuple(kv), size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
