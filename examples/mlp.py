"""A small MLP: matmul-heavy, compute-bound at large batch. Run: python examples/mlp.py"""
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=256, hidden=1024, d_out=64, depth=3):
        super().__init__()
        layers, width = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def build(batch=32):
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(batch, 256)
    return model, (x,)


if __name__ == "__main__":
    from _run import run_example

    run_example(build)
