"""Facts against closed forms."""
import pytest
import torch
from torch import nn

import hetcc


@pytest.mark.parametrize("m,d,rows", [(64, 32, 8), (128, 256, 5)])
def test_linear_flops_and_intensity_match_closed_form(m, d, rows):
    model = nn.Linear(d, m, bias=False)
    a = hetcc.analyze(model, (torch.randn(rows, d),))
    matmuls = [n for n in a.nodes if n.op_class == "matmul"]
    assert len(matmuls) == 1
    (mm,) = matmuls
    assert mm.flops == 2 * m * d * rows
    elem = 4  # fp32
    assert mm.bytes_moved == (m * d + d * rows + m * rows) * elem
    assert a.intensity == pytest.approx(2 * m * d * rows / ((m * d + d * rows + m * rows) * elem))
    assert a.resident_bytes == m * d * elem == a.weight_bytes


def test_linear_with_bias_adds_one_flop_per_output():
    m, d, rows = 16, 8, 4
    a = hetcc.analyze(nn.Linear(d, m), (torch.randn(rows, d),))
    assert a.flops == 2 * m * d * rows + m * rows
    assert a.resident_bytes == (m * d + m) * 4


def test_conv_flops_closed_form():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    a = hetcc.analyze(conv, (torch.randn(2, 3, 16, 16),))
    (node,) = [n for n in a.nodes if n.op_class == "conv"]
    assert node.flops == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)


def test_batched_matmul_and_attention_flops():
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    b, h, lq, d = 2, 4, 16, 8
    q = torch.randn(b, h, lq, d)
    a = hetcc.analyze(Attn(), (q, q.clone(), q.clone()))
    matmul_flops = sum(n.flops for n in a.nodes if n.op_class in ("matmul", "attention"))
    # QK^T and PV are each 2*Lq*Lk*D per head (the decomposition may add the softmax separately)
    assert matmul_flops >= 4 * b * h * lq * lq * d
    assert matmul_flops <= 4 * b * h * lq * lq * d + 5 * b * h * lq * lq


def test_elementwise_and_reduction_counts():
    class M(nn.Module):
        def forward(self, x):
            return (x * 2).sum()

    x = torch.randn(10, 10)
    a = hetcc.analyze(M(), (x,))
    by = a.by_class()
    assert by["elementwise"]["flops"] == 100
    assert by["reduction"]["flops"] == 100


def test_views_move_no_bytes():
    class M(nn.Module):
        def forward(self, x):
            return x.view(4, 25).transpose(0, 1).relu()

    a = hetcc.analyze(M(), (torch.randn(100),))
    for n in a.nodes:
        if n.op_class == "view":
            assert n.bytes_moved == 0 and n.flops == 0


def test_embedding_reads_the_rows_it_returns_and_keeps_the_table_resident():
    table = nn.Embedding(1000, 16)
    ids = torch.randint(0, 1000, (4, 8))
    a = hetcc.analyze(table, (ids,))
    (node,) = [n for n in a.nodes if n.op == "aten.embedding.default"]
    assert node.resident_bytes == 1000 * 16 * 4
    assert node.bytes_read == 4 * 8 * 8 + 4 * 8 * 16 * 4  # int64 ids + the rows gathered
    assert node.bytes_written == 4 * 8 * 16 * 4
