"""Transformer phases: prefill and decode of a decoder model, counted on their real graphs.

    report = hetcc.analyze_phases(model_or_config, batch=8, context=1024)
    print(report.summary())

Prefill runs `context` tokens per sequence and writes their KV cache; decode runs one new token
per sequence against a cache of `context` tokens. Each phase is captured with torch.export and
counted by the facts pass, as `hetcc.analyze` does, so FLOPs and bytes come from the graph the
model really runs. KV-cache bytes per token are measured from the traced cache tensors and
cross-checked against the config's closed form (see docs/phases.md).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from hetcc.analysis import Analysis
from hetcc.capture import capture
from hetcc.errors import HetccError
from hetcc.names import dtype_name
from hetcc.passes.facts import graph_facts

log = logging.getLogger(__name__)

INTERFACE = (
    "a decoder that exposes its two phases as torch.nn.Module attributes: "
    "`model.prefill(ids[B, L]) -> (logits, cache)` and "
    "`model.decode(ids[B, 1], cache) -> (logits, new_cache)`, where `cache` is a tuple of tensors "
    "holding the L past tokens and `new_cache` the same tuple holding L + 1; or a config with a "
    "`build()` method that returns such a model (see examples/decoders.py)")


@dataclass(frozen=True)
class Phase:
    name: str
    """'prefill' or 'decode'."""
    tokens: int
    """Tokens processed per sequence: `context` for prefill, 1 for decode."""
    flops: float
    bytes_moved: int
    capacity_bytes: float
    """CF: weights / batch + this request's KV cache at `context` tokens."""
    analysis: Analysis = field(repr=False)
    """The per-node facts of this phase's graph."""

    @property
    def intensity(self) -> float:
        """OI: FLOPs per byte moved."""
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0


@dataclass(frozen=True)
class PhaseReport:
    name: str
    batch: int
    context: int
    dtype: torch.dtype
    weight_bytes: int
    kv_bytes_per_token: int
    """Per sequence and token, over all layers: measured from the decode graph's cache tensors."""
    kv_bytes_per_token_closed_form: int | None
    """From the config (None when the model has no config this module understands)."""
    prefill: Phase
    decode: Phase
    notes: tuple[str, ...] = ()

    @property
    def phases(self) -> dict[str, Phase]:
        return {"prefill": self.prefill, "decode": self.decode}

    def kv_bytes(self, tokens: int | None = None) -> int:
        """One request's KV cache at `tokens` tokens (default: the context)."""
        return self.kv_bytes_per_token * (self.context if tokens is None else tokens)

    def summary(self) -> str:
        closed = self.kv_bytes_per_token_closed_form
        check = "" if closed is None else (" (closed form agrees)" if closed == self.kv_bytes_per_token
                                           else f" (closed form says {closed} B)")
        dtype = dtype_name(self.dtype)
        head = f"{self.name}: batch {self.batch}, context {self.context}, {dtype}"
        kv = (f"  weights {_size(self.weight_bytes)}; KV cache {self.kv_bytes_per_token} B/token"
              f"{check}, {_size(self.kv_bytes())} per request at {self.context} tokens")
        cols = ("phase", "tokens", "GFLOP", "MB moved", "OI FLOP/B", "CF MB/req")
        lines = [head, kv, f"  {cols[0]:<8} " + " ".join(f"{c:>10}" for c in cols[1:])]
        for p in (self.prefill, self.decode):
            lines.append(f"  {p.name:<8} {f'{self.batch}x{p.tokens}':>10} {p.flops / 1e9:>10.4g} "
                         f"{p.bytes_moved / 1e6:>10.4g} {p.intensity:>10.3g} "
                         f"{p.capacity_bytes / 1e6:>10.4g}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def analyze_phases(model_or_config, batch: int, context: int, dtype=torch.float32,
                   seed: int = 0) -> PhaseReport:
    """Prefill (`context` tokens) and decode (1 token, `context` cached) of a decoder, counted.

    ``model_or_config`` is a model with ``prefill``/``decode`` modules, or a config whose
    ``build()`` returns one. The model is copied before it is cast to ``dtype``."""
    if batch < 1 or context < 1:
        raise HetccError(f"batch and context must be at least 1, got batch={batch}, context={context}")
    model = _resolve(model_or_config, dtype)
    config = getattr(model, "config", None)
    prefill, decode = model.prefill, model.decode
    vocab = getattr(config, "vocab", None)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(vocab, int):
        ids = torch.randint(0, vocab, (batch, context + 1), generator=gen)
    else:
        ids = torch.zeros(batch, context + 1, dtype=torch.long)
    # fresh tensors, never views: export turns a view input into symbols that capture cannot size
    prompt, nxt = _fresh(ids[:, :context]), _fresh(ids[:, context:])
    with torch.no_grad():
        _, cache = _split(prefill(prompt), "prefill")
    cache = tuple(_fresh(c) for c in cache)

    pre, pre_cache = _count(prefill, (prompt,), "prefill")
    dec, dec_cache = _count(decode, (nxt, cache), "decode")
    cache_in = sum(_nbytes(c) for c in cache)
    per_token = (dec_cache - cache_in) / batch
    per_token_prefill = pre_cache / (batch * context)
    if per_token != per_token_prefill or per_token <= 0 or per_token != int(per_token):
        raise HetccError(
            f"the model's cache does not grow by one token per decode step: prefill of {context} "
            f"tokens wrote {pre_cache} B ({per_token_prefill:g} B per token and sequence), one "
            f"decode step grew it from {cache_in} B to {dec_cache} B ({per_token:g} B per "
            f"sequence). analyze_phases expects {INTERFACE}")
    per_token = int(per_token)
    notes = []
    closed = kv_bytes_per_token_closed_form(config, dtype) if config is not None else None
    if closed is not None and closed != per_token:
        msg = (f"KV cache measured at {per_token} B/token but the config's closed form gives "
               f"{closed} B/token: the model caches something the config does not describe")
        log.warning(msg)
        notes.append(msg)
    if pre.weight_bytes != dec.weight_bytes:
        notes.append(f"prefill and decode hold different weights ({pre.weight_bytes} B vs "
                     f"{dec.weight_bytes} B); CF uses prefill's")
    cf = pre.weight_bytes / batch + per_token * context
    name = _describe(model, config)
    return PhaseReport(
        name, batch, context, dtype, pre.weight_bytes, per_token, closed,
        Phase("prefill", context, pre.flops, pre.bytes_moved, cf, pre),
        Phase("decode", 1, dec.flops, dec.bytes_moved, cf, dec), tuple(notes))


def kv_bytes_per_token_closed_form(config, dtype=torch.float32) -> int | None:
    """KV-cache bytes per token and sequence, over all layers, from a config.

    MHA/GQA: 2 · layers · kv_heads · head_dim · bytes per element (a key and a value per KV head).
    MLA: layers · (kv_latent_dim + rope_dim) · bytes per element (the latent and the RoPE key).
    None when the config does not say which attention it uses."""
    kind = getattr(config, "attention", None)
    elem = torch.empty((), dtype=dtype).element_size()
    try:
        if kind in ("mha", "gqa"):
            kv_heads = getattr(config, "kv_heads", None) or config.heads
            return 2 * config.layers * kv_heads * config.head_dim * elem
        if kind == "mla":
            return config.layers * (config.kv_latent_dim + config.rope_dim) * elem
    except AttributeError:
        return None
    return None


def _resolve(model_or_config, dtype):
    obj = model_or_config
    if not isinstance(obj, torch.nn.Module) and callable(getattr(obj, "build", None)) \
            and not _has_phases(obj):
        obj = obj.build()
    if not _has_phases(obj):
        missing = [p for p in ("prefill", "decode")
                   if not isinstance(getattr(obj, p, None), torch.nn.Module)]
        raise HetccError(f"analyze_phases cannot find the prefill/decode interface on "
                         f"{type(model_or_config).__name__}: {' and '.join(missing)} missing or "
                         f"not an nn.Module. It expects {INTERFACE}.")
    if not isinstance(obj, torch.nn.Module):
        return obj  # only a module can be cast; its phases run in the dtype they have
    floats = [t for t in (*obj.parameters(), *obj.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in floats):
        return obj
    return (obj if obj is not model_or_config else copy.deepcopy(obj)).to(dtype)


def _has_phases(obj) -> bool:
    return all(isinstance(getattr(obj, p, None), torch.nn.Module) for p in ("prefill", "decode"))


def _split(out, phase: str):
    if (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], torch.Tensor)
            and isinstance(out[1], (tuple, list)) and out[1]
            and all(isinstance(t, torch.Tensor) for t in out[1])):
        return out[0], tuple(out[1])
    raise HetccError(f"{phase} returned {type(out).__name__}, not (logits, tuple of cache tensors). "
                     f"analyze_phases expects {INTERFACE}.")


def _count(module, inputs, phase: str) -> tuple[Analysis, int]:
    """The same capture and facts as hetcc.analyze, plus the bytes of the traced cache outputs."""
    cap = capture(module, inputs)
    facts = graph_facts(cap.graph, cap.values, cap.weights)
    weight_bytes = sum(_nbytes(t) for t in cap.weights.values())
    outs = [cap.values[name] if name is not None else None for name in cap.outputs]
    if len(outs) < 2 or not all(isinstance(t, torch.Tensor) for t in outs):
        raise HetccError(f"the traced {phase} graph has outputs that are not tensors. "
                         f"analyze_phases expects {INTERFACE}.")
    cache_bytes = sum(_nbytes(t) for t in outs[1:])  # outputs flatten as logits, then the cache
    return Analysis(tuple(facts.values()), weight_bytes), cache_bytes


def _fresh(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _describe(model, config) -> str:
    kind = getattr(config, "attention", None)
    if kind in ("mha", "gqa"):
        return (f"{type(model).__name__} {kind} ({config.layers} layers, {config.heads} heads, "
                f"{config.kv_heads} KV heads of {config.head_dim})")
    if kind == "mla":
        absorbed = ", absorbed decode" if getattr(config, "absorb", False) else ""
        return (f"{type(model).__name__} mla ({config.layers} layers, {config.heads} heads, latent "
                f"{config.kv_latent_dim} + rope {config.rope_dim}{absorbed})")
    return type(model).__name__


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
