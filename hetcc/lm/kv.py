"""The decode phase's KV cache: allocated for each batch on the device the decode graph reads it
from, filled once from the prefill's keys and values (the hand-over), then one slot per step in
place.

Layout (docs/generation.md): per layer a key and a value tensor ``[B, kv_heads, S, head_dim]``;
slots ``0..P-1`` hold the left-padded prompt, slot ``P + t`` the ``t``-th generated token. ``valid``
``[B, S]`` marks the slots that hold a token; ``position`` ``[B, 1]`` is each sequence's next position
(its real prompt length plus the tokens generated), which need not equal the slot.
"""
from __future__ import annotations

import time

import torch


class KVCache:
    def __init__(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: str):
        """``shapes``: each cached tensor's ``[B, kv_heads, S, head_dim]``, in graph order (k_0, v_0, ...)."""
        self.tensors = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        batch, slots = shapes[0][0], shapes[0][2]
        self.valid = torch.zeros(batch, slots, dtype=torch.long, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.next_slot = 0

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def hand_over(self, prompt_kv, mask: torch.Tensor) -> tuple[float, int]:
        """Write the prefill's keys and values ``[B, kv_heads, P, head_dim]`` into slots ``0..P-1``
        of this fresh cache (zeros where ``mask`` is 0, so a pad position cannot leak a NaN into a
        masked product). Returns (seconds, bytes copied)."""
        start = time.perf_counter()
        length = mask.shape[1]
        mask = mask.to(self.valid.device)
        pad = ~mask.bool()[:, None, :, None]
        copied = 0
        for cache, new in zip(self.tensors, prompt_kv):
            cache[:, :, :length].copy_(new).masked_fill_(pad, 0)
            copied += new.numel() * new.element_size()
        self.valid[:, :length] = mask
        self.position.copy_(mask.sum(-1, keepdim=True))
        self.next_slot = length
        if self.valid.is_cuda:
            torch.cuda.synchronize(self.valid.device)
        return time.perf_counter() - start, copied

    def inputs(self) -> tuple:
        """The decode graph's cache inputs: (valid, k_0, v_0, ...)."""
        return (self.valid, *self.tensors)

    def append(self, new_kv) -> None:
        """Write one step's keys and values ``[B, kv_heads, 1, head_dim]`` into the next slot."""
        slot = self.next_slot
        if slot >= self.slots:
            raise IndexError(f"the cache is full: all {self.slots} slots hold a token")
        for cache, new in zip(self.tensors, new_kv):
            cache[:, :, slot] = new[:, :, 0].to(cache.device)
        self.valid[:, slot] = 1
        self.position += 1
        self.next_slot = slot + 1

    def load_prefix(self, row: int, kv, length: int) -> int:
        """Slots ``0..length-1`` of ``row`` from a stored prefix (``[kv_heads, n, head_dim]`` each,
        n >= length, positions 0..length-1). Returns the bytes copied."""
        copied = 0
        for cache, stored in zip(self.tensors, kv):
            part = stored[:, :length]
            cache[row, :, :length].copy_(part)
            copied += part.numel() * part.element_size()
        self.valid[row, :length] = 1
        return copied

    def write_chunk(self, new_kv, chunk_mask: torch.Tensor, first: int, next_position: torch.Tensor,
                    next_slot: int | None = None) -> None:
        """Slots ``first..first+C-1`` from a chunk's keys and values ``[B, kv_heads, C, head_dim]``
        (zeros where ``chunk_mask`` is 0); generation goes on at ``next_slot`` (default
        ``first + C``) and, per sequence, at ``next_position``. A ``next_slot`` inside the chunk
        gives its masked tail back: the next write overwrites it (speculative decoding's rejected
        tokens)."""
        chunk_mask = chunk_mask.to(self.valid.device)
        pad = ~chunk_mask.bool()[:, None, :, None]
        width = chunk_mask.shape[1]
        for cache, new in zip(self.tensors, new_kv):
            cache[:, :, first:first + width].copy_(new).masked_fill_(pad, 0)
        self.valid[:, first:first + width] = chunk_mask
        self.position.copy_(next_position)
        self.next_slot = first + width if next_slot is None else next_slot

    def rollback(self, slot: int) -> None:
        """Forget the tokens in slots ``slot..next_slot-1`` (the draft's rejected proposals):
        they are masked, the positions step back by as many, and the next write goes to ``slot``."""
        dropped = self.next_slot - slot
        if dropped <= 0:
            return
        self.valid[:, slot:self.next_slot] = 0
        self.position -= dropped
        self.next_slot = slot

    def sequence(self, row: int, length: int) -> tuple[torch.Tensor, ...]:
        """The first ``length`` tokens' keys and values of ``row``, in position order (slot order is
        position order among the slots that hold a token), as new tensors."""
        slots = self.valid[row].nonzero().flatten()[:length]
        return tuple(cache[row][:, slots].clone() for cache in self.tensors)
