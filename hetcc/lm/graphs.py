"""The two graphs of a causal language model, as torch.export traces them.

A Hugging Face causal LM runs in two phases (docs/generation.md):

- **prefill** ``(ids [B, P], mask [B, P]) -> (logits [B, V], k_0, v_0, k_1, v_1, ...)``: the whole
  prompt, left-padded to ``P`` tokens (``mask`` is 1 on real tokens); the logits of the last
  position and every layer's keys and values ``[B, kv_heads, P, head_dim]``.
- **decode** ``(ids [B, 1], position [B, 1], valid [B, S], k_0, v_0, ...) -> (logits [B, V],
  k_0', v_0', ...)``: one new token per sequence against a cache of ``S`` slots (``valid`` is 1 on
  the slots that hold a token); only the new token's keys and values ``[B, kv_heads, 1, head_dim]``
  come out, and the generation loop writes them into the cache in place.
- **extend** (only with prefix reuse): decode's graph with a chunk of ``C`` prompt tokens instead of
  one, run against a stored prefix (hetcc/lm/reuse.py).

Shapes are static: one prompt length and one cache length per compiled model. Static shapes lower
on every runtime hetcc has (a dynamic sequence dimension does not on all of them) and a decode step
then has one shape for the whole generation; the price is a prompt padded to ``P`` and attention
over all ``S`` slots (the unused ones masked). Attention over a key does not depend on its slot,
because the model applies its position encoding (rotary or learned) before the key is cached, so
the cache need not be kept in position order and the decode graph never copies it: a step reads the
cache and returns one slot's worth.

The model's own forward runs inside each graph, with a transformers ``Cache`` of hetcc's
``SlotLayer`` per layer, so what is compiled is the user's model as it is, not a reimplementation.
The attention mask is built here as a 4D additive mask (transformers uses a 4D mask as given): a pad
position attends to itself only, so no row is fully masked (a fully masked row is where runtimes
disagree: some give NaN, some zeros, some a uniform average).
"""
from __future__ import annotations

import inspect
from functools import cache

import torch
from torch import nn

from hetcc.errors import InputError

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel")
"""Tested families; others with the same interface (a causal LM taking a transformers Cache) are
tried, and refused with the reason when they do not fit."""

ATTENTION_LAYERS = ("full_attention", "sliding_attention")
POSITION_LIMITS = ("max_position_embeddings", "n_positions")


def _cache_keyword(model: nn.Module) -> str:
    """transformers 5 names the argument ``cache``; earlier releases ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise InputError(f"{type(model).__name__}.forward takes no cache argument (neither `cache` nor "
                     "`past_key_values`): hetcc.compile_lm needs a transformers causal LM that runs "
                     f"with a KV cache, such as {', '.join(SUPPORTED)}")


def check_model(model: nn.Module, cache_len: int) -> None:
    """Refuse, with what to do, a model these graphs cannot run."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is None or not hasattr(model, "generation_config"):
        raise InputError(f"{name} is not a transformers model (no config or generation_config): "
                         f"hetcc.compile_lm takes a transformers causal LM, such as {', '.join(SUPPORTED)}; "
                         "compile any other module with hetcc.compile")
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"{name} is an encoder-decoder model; hetcc.compile_lm runs decoder-only causal "
                         "LMs. Compile its encoder and one decoder step with hetcc.compile instead")
    _cache_keyword(model)
    text = text_config(model)
    limit = next((getattr(text, k) for k in POSITION_LIMITS if isinstance(getattr(text, k, None), int)), None)
    if limit is not None and cache_len > limit:
        raise InputError(f"{name} knows positions up to {limit} ({POSITION_LIMITS[0]} or n_positions in its "
                         f"config) but prompt length + max_new_tokens is {cache_len}; a position beyond "
                         f"that is an index error or a wrong result: keep the two at most {limit} together")
    kinds = set(getattr(text, "layer_types", None) or ())
    other = sorted(kinds - set(ATTENTION_LAYERS))
    if other:
        raise InputError(f"{name} has layers of kind {other}, which keep a state other than a KV "
                         "cache; hetcc.compile_lm handles attention layers only")
    window = getattr(text, "sliding_window", None)
    sliding = "sliding_attention" in kinds or (window and getattr(text, "use_sliding_window", True))
    if sliding and window and cache_len > window:
        raise InputError(f"{name} attends over a sliding window of {window} tokens but the cache would "
                         f"hold {cache_len} (prompt length + max_new_tokens); hetcc keeps cache slots in "
                         f"no particular order, so it cannot apply the window: keep prompt length + "
                         f"max_new_tokens at most {window}")


def text_config(model: nn.Module):
    """The config of the model's text decoder (the model's own config for a text-only model)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_count(model: nn.Module) -> int:
    text = text_config(model)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(text, name, None), int):
            return getattr(text, name)
    raise InputError(f"{type(model).__name__}'s config names no layer count (num_hidden_layers); "
                     "hetcc.compile_lm cannot size its cache")


def _additive(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, the dtype's most negative number elsewhere (not -inf: a float
    mask with -inf turns 0 * inf into NaN on some runtimes)."""
    zero = torch.zeros((), dtype=dtype)
    low = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allow, zero, low)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@cache
def _slot_layer_class():
    """A transformers cache layer holding one graph's past slots (or none) and the keys and values
    its layer computes in this call. Made on first use, so importing hetcc imports no transformers."""
    from transformers.cache_utils import CacheLayerMixin

    class _SlotLayer(CacheLayerMixin):
        is_sliding = False

        def __init__(self, keys=None, values=None):
            super().__init__()
            self.past = (keys, values)
            self.new = None
            if keys is not None:
                self.keys, self.values, self.is_initialized = keys, values, True
                self.device = keys.device

        def lazy_initialization(self, key_states, value_states):
            self.device, self.is_initialized = key_states.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            self.new = (key_states, value_states)
            keys, values = self.past
            if keys is None:
                return key_states, value_states
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        def get_seq_length(self) -> int:
            keys = self.past[0]
            return 0 if keys is None else keys.shape[-2]

        def get_mask_sizes(self, query_length: int):
            return self.get_seq_length() + query_length, 0

        def get_max_length(self) -> int:
            return -1

    return _SlotLayer


def _cache(model: nn.Module, pairs):
    from transformers.cache_utils import Cache

    layer = _slot_layer_class()
    return Cache(layers=[layer(k, v) for k, v in pairs])


def _run(model: nn.Module, ids, mask4, position, cache, logits_to_keep: int):
    """The model's forward on the graph's inputs: the logits of the last ``logits_to_keep``
    positions (0: all) and each layer's new keys and values."""
    kwargs = {_cache_keyword(model): cache, "attention_mask": mask4, "position_ids": position,
              "use_cache": True, "return_dict": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = logits_to_keep
    out = model(input_ids=ids, **kwargs)
    flat = []
    for layer in cache.layers:
        if layer.new is None:
            raise InputError(f"{type(model).__name__} did not write its KV cache through the cache "
                             "object it was given; hetcc.compile_lm cannot run it")
        flat += list(layer.new)
    return (out.logits[:, -1] if logits_to_keep == 1 else out.logits), flat


class PrefillGraph(nn.Module):
    """``(ids [B, P], mask [B, P]) -> (last logits [B, V], k_0, v_0, ...)``, see the module doc."""

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, ids, mask):
        mask4 = _additive(_chunk_allow(mask)[:, None], _float_dtype(self.model))
        position = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = _cache(self.model, [(None, None)] * self.layers)
        logits, kv = _run(self.model, ids, mask4, position, cache, 1)
        return (logits, *kv)


def _chunk_allow(mask):
    """``[B, C, C]``: a real token attends to the real tokens up to it; a pad token to itself only."""
    length = mask.shape[1]
    index = torch.arange(length, device=mask.device)
    causal = index[None, :] <= index[:, None]
    self_only = index[None, :] == index[:, None]  # not torch.eye: its decomposition fails in bf16
    return (causal[None] & mask.bool()[:, None, :]) | self_only[None]


def _attend(model: nn.Module, ids, allow, position, kv, keep: int) -> tuple:
    """The model's forward on a chunk against the cache ``kv`` under ``allow [B, C, S + C]``."""
    mask4 = _additive(allow[:, None], _float_dtype(model))
    pairs = [(kv[i], kv[i + 1]) for i in range(0, len(kv), 2)]
    logits, new = _run(model, ids, mask4, position, _cache(model, pairs), keep)
    return (logits, *new)


class DecodeGraph(nn.Module):
    """``(ids [B, 1], position [B, 1], valid [B, S], k_0, v_0, ...) -> (logits [B, V], k_0', v_0',
    ...)``, see the module doc: the extend graph for one token, which needs no chunk mask."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids, position, valid, *kv):
        ones = torch.ones(valid.shape[0], 1, dtype=torch.bool, device=valid.device)
        allow = torch.cat([valid.bool(), ones], dim=1)[:, None, :]
        return _attend(self.model, ids, allow, position, kv, 1)


class ExtendGraph(nn.Module):
    """``(ids [B, C], chunk_mask [B, C], position [B, C], valid [B, S], k_0, v_0, ...) -> (logits
    [B, V], k_0', v_0', ...)`` with ``[B, kv_heads, C, head_dim]`` new keys and values: a chunk of
    up to ``C`` prompt tokens per sequence (left-padded in the chunk) after a cached prefix, for
    prefix reuse (docs/generation.md). With ``all_logits`` the logits are ``[B, C, V]``, one per
    chunk position: the verify graph of speculative decoding (hetcc/lm/speculative.py)."""

    def __init__(self, model: nn.Module, all_logits: bool = False):
        super().__init__()
        self.model, self.keep = model, 0 if all_logits else 1

    def forward(self, ids, chunk_mask, position, valid, *kv):
        past = valid.bool()[:, None, :].expand(-1, ids.shape[1], -1)
        allow = torch.cat([past, _chunk_allow(chunk_mask)], dim=2)
        return _attend(self.model, ids, allow, position, kv, self.keep)
