"""A small CNN (conv-bn-relu blocks, pooling, classifier). Run: python examples/cnn.py"""
import torch
from torch import nn


def block(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(block(3, 32, 1), block(32, 64, 2), block(64, 128, 2), block(128, 128, 1))
        self.head = nn.Linear(128, classes)

    def forward(self, x):
        x = self.features(x)
        x = x.mean(dim=(2, 3))
        return self.head(x)


def build(batch=4):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    for m in model.modules():  # non-trivial running stats, so batch norm is really checked
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(batch, 3, 32, 32),)


def calibration(batch=4, count=8):
    """Input batches like build()'s, for static int8 (hetcc compile ... --calibration
    examples/cnn.py:calibration); real traffic would be better than noise."""
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 32, 32, generator=generator),) for _ in range(count)]


if __name__ == "__main__":
    from _run import run_example

    run_example(build)
