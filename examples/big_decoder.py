"""Planning-only examples: decoders with the shapes of today's open 8B and 70B models, built on
PyTorch's meta device so that no weights are allocated (random weights would not fit this machine).
They are for `hetcc plan` and `hetcc.predict`; compiling them needs real weights.

    hetcc plan examples/big_decoder.py:build --devices h100,mi300x,epyc --dtype bf16
    hetcc plan examples/big_decoder.py:build_70b_decode --devices h100,h100,l4 --dtype bf16 \\
        --objective throughput --resident-input cache
"""
from __future__ import annotations

import torch

from decoders import Decoder, DecoderConfig

# Llama-3-8B-like: 32 layers, width 4096, 32 query heads / 8 KV heads of 128, SwiGLU 14336.
CONFIG_8B = DecoderConfig.gqa(kv_heads=8, vocab=128256, d_model=4096, layers=32, heads=32, head_dim=128,
                              ffn=14336, rope_base=500000.0)
# Llama-3-70B-like: 80 layers, width 8192, 64 query heads / 8 KV heads of 128, SwiGLU 28672.
CONFIG_70B = CONFIG_8B.with_(d_model=8192, layers=80, heads=64, ffn=28672)


def _on_meta(config: DecoderConfig) -> Decoder:
    with torch.device("meta"):
        return Decoder(config).eval()


def build(batch: int = 1, tokens: int = 2048, config: DecoderConfig = CONFIG_8B):
    """Prefill of ``tokens`` tokens: compute-bound on every accelerator."""
    model = _on_meta(config)
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    return model.prefill, (ids,)


class FlatDecode(torch.nn.Module):
    """decode(ids, *cache): the cache as separate tensors, as a command-line MODEL must give them."""

    def __init__(self, core: Decoder):
        super().__init__()
        self.core = core

    def forward(self, ids, *cache):
        return self.core.decode(ids, cache)


def build_70b_decode(batch: int = 8, context: int = 8192, config: DecoderConfig = CONFIG_70B):
    """One decode step with a ``context``-token KV cache per sequence: bandwidth- and capacity-bound.
    The cache is the input named cache*; plan with --resident-input cache so it stays on device."""
    model = _on_meta(config)
    ids = torch.zeros(batch, 1, dtype=torch.long, device="meta")
    shape = (batch, config.kv_heads, context, config.head_dim)
    cache = tuple(torch.zeros(shape, device="meta") for _ in range(2 * config.layers))
    return FlatDecode(model), (ids, *cache)
