"""A recommendation-style model that mixes regimes: a large embedding table (memory-bound gather,
large capacity footprint) feeding a dense MLP (compute-bound GEMMs). On the CPU runtimes here the
gather and the GEMMs are fastest on different runtimes, so hetcc splits it.
Run: python examples/mixed.py"""
import torch
from torch import nn


class EmbeddingMLP(nn.Module):
    def __init__(self, vocab=200_000, dim=128, fields=32, hidden=1024):
        super().__init__()
        self.table = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(
            nn.Linear(fields * dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, ids):
        x = self.table(ids).flatten(1)
        return self.mlp(x)


def build(batch=256):
    torch.manual_seed(0)
    model = EmbeddingMLP().eval()
    ids = torch.randint(0, 200_000, (batch, 32))
    return model, (ids,)


if __name__ == "__main__":
    from _run import run_example

    run_example(build)
