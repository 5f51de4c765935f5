"""Decoder-only language models with an explicit KV cache: MHA, GQA and MLA (DeepSeek-V2 style).

Random weights, built from a `DecoderConfig`. Both inference phases are real graphs that
torch.export can trace:

    model = DecoderConfig.gqa().build()
    logits, cache = model.prefill(ids)              # ids [B, L] -> cache of L tokens
    logits, cache = model.decode(ids[:, -1:], cache)  # one token -> cache of L + 1 tokens

`cache` is a flat tuple of tensors, per layer:
  - MHA / GQA: keys and values, each [B, kv_heads, L, head_dim] (after RoPE for the keys);
  - MLA: one tensor [B, L, kv_latent_dim + rope_dim] holding the normalised compressed latent
    c_kv and the decoupled RoPE key k_pe, as DeepSeek-V2 caches them (and FlashMLA lays them out).

MLA up-projects keys and values from the latent at attention time. Prefill does it literally
(K and V per head from W_UK c_kv and W_UV c_kv). Decode, by default, uses the absorbed form of
DeepSeek-V2 section 2.1.2: W_UK folds into the query and W_UV into the output, so attention runs
over the cached latent directly and full keys and values are never materialised. The two forms
are the same function (`absorb=False` decodes the literal way; the tests check both).

Run: python examples/decoders.py   (prints the prefill/decode report of each attention kind)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_KINDS = ("mha", "gqa", "mla")


@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 512
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    """Heads of K and V (MHA: equal to heads, the default; GQA: fewer, dividing heads; MLA: unused)."""
    head_dim: int = 32
    """Per-head width of Q, K and V (MLA: qk_nope_head_dim, also used as v_head_dim)."""
    ffn: int = 256
    """Hidden width of the SwiGLU feed-forward."""
    attention: str = "mha"
    kv_latent_dim: int = 0
    """MLA: width of the compressed KV latent c_kv (DeepSeek's kv_lora_rank)."""
    rope_dim: int = 0
    """MLA: width of the decoupled RoPE key shared by all heads (qk_rope_head_dim)."""
    q_latent_dim: int = 0
    """MLA: width of the compressed query (q_lora_rank); 0 projects the query directly."""
    absorb: bool = True
    """MLA: decode in the absorbed form (W_UK into the query, W_UV into the output)."""
    rope_base: float = 10000.0
    eps: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.attention == "mha" and self.kv_heads != self.heads:
            raise ValueError("mha needs kv_heads == heads; use attention='gqa' for fewer KV heads")
        if self.attention == "gqa" and (self.kv_heads >= self.heads or self.heads % self.kv_heads):
            raise ValueError(f"gqa needs kv_heads < heads and dividing it, got {self.kv_heads}/{self.heads}")
        if self.attention == "mla" and (self.kv_latent_dim <= 0 or self.rope_dim <= 0):
            raise ValueError("mla needs kv_latent_dim > 0 and rope_dim > 0")
        rope = self.rope_dim if self.attention == "mla" else self.head_dim
        if rope % 2:
            raise ValueError(f"the rotated width must be even, got {rope}")

    @classmethod
    def mha(cls, **kw) -> DecoderConfig:
        return cls(attention="mha", **kw)

    @classmethod
    def gqa(cls, kv_heads: int = 1, **kw) -> DecoderConfig:
        return cls(attention="gqa", kv_heads=kv_heads, **kw)

    @classmethod
    def mla(cls, kv_latent_dim: int = 64, rope_dim: int = 16, **kw) -> DecoderConfig:
        return cls(attention="mla", kv_latent_dim=kv_latent_dim, rope_dim=rope_dim, **kw)

    def with_(self, **kw) -> DecoderConfig:
        return replace(self, **kw)

    def build(self) -> Decoder:
        torch.manual_seed(self.seed)
        return Decoder(self).eval()


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    """Rotate the last dim of x ([..., L, n]) by position; cos/sin are [L, n/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head or grouped-query attention; caches K (after RoPE) and V per KV head."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.h, self.kvh, self.dh = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, self.h * self.dh, bias=False)
        self.wk = nn.Linear(cfg.d_model, self.kvh * self.dh, bias=False)
        self.wv = nn.Linear(cfg.d_model, self.kvh * self.dh, bias=False)
        self.wo = nn.Linear(self.h * self.dh, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, past):
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.h, self.dh).transpose(1, 2)
        k = self.wk(x).view(b, n, self.kvh, self.dh).transpose(1, 2)
        v = self.wv(x).view(b, n, self.kvh, self.dh).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None,
                                           enable_gqa=self.kvh != self.h)
        return self.wo(y.transpose(1, 2).reshape(b, n, self.h * self.dh)), (k, v)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2); caches [c_kv | k_pe] per token."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.h, self.dn, self.dv, self.dr = cfg.heads, cfg.head_dim, cfg.head_dim, cfg.rope_dim
        self.latent, self.absorb = cfg.kv_latent_dim, cfg.absorb
        d, qk = cfg.d_model, cfg.head_dim + cfg.rope_dim
        if cfg.q_latent_dim:
            self.wq = nn.Sequential(nn.Linear(d, cfg.q_latent_dim, bias=False),
                                    RMSNorm(cfg.q_latent_dim, cfg.eps),
                                    nn.Linear(cfg.q_latent_dim, self.h * qk, bias=False))
        else:
            self.wq = nn.Linear(d, self.h * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.latent + self.dr, bias=False)  # -> c_kv, k_pe
        self.kv_norm = RMSNorm(self.latent, cfg.eps)
        self.wkv_b = nn.Linear(self.latent, self.h * (self.dn + self.dv), bias=False)  # W_UK; W_UV
        self.wo = nn.Linear(self.h * self.dv, d, bias=False)
        self.scale = 1.0 / math.sqrt(qk)

    def forward(self, x, cos, sin, past):
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.h, self.dn + self.dr).transpose(1, 2)
        q_nope, q_pe = q.split([self.dn, self.dr], dim=-1)
        q_pe = rope(q_pe, cos, sin)
        c_kv, k_pe = self.wkv_a(x).split([self.latent, self.dr], dim=-1)
        entry = torch.cat([self.kv_norm(c_kv), rope(k_pe, cos, sin)], dim=-1)  # [b, n, latent+dr]
        cache = entry if past is None else torch.cat([past[0], entry], dim=1)
        if past is not None and self.absorb:
            y = self._absorbed(q_nope, q_pe, cache)
        else:
            y = self._literal(q_nope, q_pe, cache, causal=past is None)
        return self.wo(y.transpose(1, 2).reshape(b, n, self.h * self.dv)), (cache,)

    def _literal(self, q_nope, q_pe, cache, causal):
        b, t = cache.shape[:2]
        c_kv, k_pe = cache.split([self.latent, self.dr], dim=-1)
        kv = self.wkv_b(c_kv).view(b, t, self.h, self.dn + self.dv).transpose(1, 2)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)
        k = torch.cat([k_nope, k_pe[:, None].expand(b, self.h, t, self.dr)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)

    def _absorbed(self, q_nope, q_pe, cache):
        b, h, n, _ = q_nope.shape
        w = self.wkv_b.weight.view(h, self.dn + self.dv, self.latent)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn:]  # [h, dn, latent], [h, dv, latent]
        # q_nope . (W_UK c) == (W_UK^T q_nope) . c: one matmul per head, batched over heads
        q_lat = torch.bmm(q_nope.transpose(0, 1).reshape(h, b * n, self.dn), w_uk)
        q_lat = q_lat.view(h, b, n, self.latent).transpose(0, 1)
        q = torch.cat([q_lat, q_pe], dim=-1)  # [b, h, n, latent+dr]
        k = cache[:, None]  # one shared "head": [b, 1, t, latent+dr]
        o = F.scaled_dot_product_attention(q, k, k[..., : self.latent], scale=self.scale,
                                           enable_gqa=True)  # [b, h, n, latent]
        y = torch.bmm(o.transpose(0, 1).reshape(h, b * n, self.latent), w_uv.transpose(1, 2))
        return y.view(h, b, n, self.dv).transpose(0, 1)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(cfg.d_model, cfg.eps), RMSNorm(cfg.d_model, cfg.eps)
        self.attn = LatentAttention(cfg) if cfg.attention == "mla" else Attention(cfg)
        self.gate = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, past):
        a, cache = self.attn(self.norm1(x), cos, sin, past)
        x = x + a
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h)), cache


class Decoder(nn.Module):
    """The weights, and `forward(ids, cache=None) -> (logits, cache)`; see the module docstring."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.d_model, cfg.eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        rotated = cfg.rope_dim if cfg.attention == "mla" else cfg.head_dim
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, rotated, 2).float() / rotated)
        self.register_buffer("inv_freq", inv_freq)
        self.per_layer = 1 if cfg.attention == "mla" else 2  # cache tensors per layer

    def past_length(self, cache) -> int:
        return cache[0].shape[1 if self.config.attention == "mla" else 2]

    def forward(self, ids, cache=None):
        n = ids.shape[1]
        start = 0 if cache is None else self.past_length(cache)
        pos = torch.arange(start, start + n, device=ids.device).to(self.inv_freq.dtype)
        angles = pos[:, None] * self.inv_freq[None]
        cos, sin = angles.cos(), angles.sin()
        x = self.embed(ids)
        new = []
        k = self.per_layer
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, cos, sin, None if cache is None else cache[i * k:(i + 1) * k])
            new.extend(layer_cache)
        return self.head(self.norm(x)), tuple(new)

    @property
    def prefill(self) -> Prefill:
        """`prefill(ids[B, L]) -> (logits[B, L, vocab], cache of L tokens)`."""
        return Prefill(self)

    @property
    def decode(self) -> Decode:
        """`decode(ids[B, 1], cache of L tokens) -> (logits[B, 1, vocab], cache of L + 1 tokens)`."""
        return Decode(self)


class Prefill(nn.Module):
    def __init__(self, core: Decoder):
        super().__init__()
        self.core = core

    def forward(self, ids):
        return self.core(ids)


class Decode(nn.Module):
    def __init__(self, core: Decoder):
        super().__init__()
        self.core = core

    def forward(self, ids, cache):
        if ids.shape[1] != 1:
            raise ValueError(f"decode takes one token per sequence, got ids of shape {tuple(ids.shape)}")
        return self.core(ids, tuple(cache))


def configs(**common) -> dict[str, DecoderConfig]:
    """One config per attention kind at the same width: 8 heads of 32, model width 256."""
    base = {"vocab": 1024, "d_model": 256, "layers": 4, "heads": 8, "head_dim": 32, "ffn": 768}
    base.update(common)
    return {"mha": DecoderConfig.mha(**base), "gqa": DecoderConfig.gqa(kv_heads=2, **base),
            "mla": DecoderConfig.mla(kv_latent_dim=64, rope_dim=16, **base)}


if __name__ == "__main__":
    import hetcc

    for cfg in configs().values():
        print(hetcc.analyze_phases(cfg, batch=1, context=128).summary(), end="\n\n")
