"""A Linear over the sum of two embedding lookups (a 2048-row vocabulary and 16 positions), with
PyTorch's default initialisation: the smallest model with what int8 treats apart, a large table, a
small one and a matrix product (tests/test_precision.py; benchmarks/bench_int8_range.py, where 8-bit
int8 weights saturated on a CPU without VNNI)."""
import torch
from torch import nn


class Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.vocab, self.positions = nn.Embedding(2048, 64), nn.Embedding(16, 64)
        self.proj = nn.Linear(64, 64)

    def forward(self, ids, pos):
        return self.proj(self.vocab(ids) + self.positions(pos))


def build(seq: int = 16):
    torch.manual_seed(0)
    return Tables().eval(), (torch.randint(0, 2048, (1, seq)), torch.arange(seq).unsqueeze(0))
