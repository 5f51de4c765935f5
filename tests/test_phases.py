"""Prefill and decode of MHA, GQA and MLA decoders against closed forms (hetcc.analyze_phases)."""
import pytest
import torch
from decoders import DecoderConfig  # examples/ is on sys.path (conftest.py)
from torch import nn

import hetcc

SMALL = {"vocab": 128, "d_model": 64, "layers": 2, "heads": 4, "head_dim": 16, "ffn": 128}
CONFIGS = {
    "mha": DecoderConfig.mha(**SMALL),
    "gqa": DecoderConfig.gqa(kv_heads=2, **SMALL),
    "mla": DecoderConfig.mla(kv_latent_dim=32, rope_dim=8, **SMALL),
}
BATCH, CONTEXT = 2, 32


def closed_form(cfg, elem):
    if cfg.attention == "mla":
        return cfg.layers * (cfg.kv_latent_dim + cfg.rope_dim) * elem
    return 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * elem


def non_attention_flops(analysis):
    return sum(n.flops for n in analysis.nodes if n.op_class != "attention")


def attention_flops(analysis):
    return sum(n.flops for n in analysis.nodes if n.op_class == "attention")


@pytest.fixture(scope="module")
def reports():
    return {kind: hetcc.analyze_phases(cfg, BATCH, CONTEXT) for kind, cfg in CONFIGS.items()}


@pytest.mark.parametrize("kind", CONFIGS)
def test_kv_bytes_per_token_match_closed_form(reports, kind):
    r = reports[kind]
    assert r.kv_bytes_per_token == closed_form(CONFIGS[kind], 4)
    assert r.kv_bytes_per_token_closed_form == r.kv_bytes_per_token
    assert r.kv_bytes() == r.kv_bytes_per_token * CONTEXT
    assert not r.notes


@pytest.mark.parametrize("kind", CONFIGS)
def test_kv_bytes_per_token_in_bfloat16(reports, kind):
    model = CONFIGS[kind].build()  # a model this time, not a config: cast on a copy
    r = hetcc.analyze_phases(model, batch=1, context=8, dtype=torch.bfloat16)
    assert r.kv_bytes_per_token == closed_form(CONFIGS[kind], 2)
    assert r.weight_bytes * 2 == reports[kind].weight_bytes
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gqa_and_mla_cache_less_than_mha(reports):
    mha, gqa, mla = (reports[k].kv_bytes_per_token for k in ("mha", "gqa", "mla"))
    g = CONFIGS["gqa"]
    assert gqa * g.heads == mha * g.kv_heads  # kv_heads / heads of MHA's
    assert mla < gqa < mha  # same model width (heads x head_dim = d_model) for all three


@pytest.mark.parametrize("kind", CONFIGS)
def test_decode_is_memory_bound_and_prefill_is_not(reports, kind):
    pre, dec = reports[kind].prefill, reports[kind].decode
    # decode reads every weight for BATCH rows: a fp32 matmul on n rows has OI < n/2 = 1 here,
    # while prefill reuses each weight over BATCH x CONTEXT rows. At this toy width (d_model 64)
    # elementwise ops cap prefill near 4 FLOP/B; at d_model 256 the gap is 7-70x (docs/phases.md).
    assert dec.intensity < BATCH / 2
    assert pre.intensity > 4 * dec.intensity


@pytest.mark.parametrize("kind", CONFIGS)
def test_decode_flops_are_prefill_flops_per_token_but_attention(reports, kind):
    pre, dec = reports[kind].prefill.analysis, reports[kind].decode.analysis
    # Everything outside attention (projections, norms, RoPE, FFN, LM head) is per token.
    assert non_attention_flops(dec) == pytest.approx(non_attention_flops(pre) / CONTEXT, rel=1e-9)
    # Attention: the facts pass counts causal prefill as full Lq x Lk, so per token it sees L keys
    # where decode sees L + 1: a ratio of (L+1)/L. MLA's absorbed decode attends in latent space,
    # so its query/key width is latent + rope instead of head_dim + rope.
    cfg = CONFIGS[kind]
    ratio = attention_flops(dec) / (attention_flops(pre) / CONTEXT)
    width = (cfg.kv_latent_dim + cfg.rope_dim) / (cfg.head_dim + cfg.rope_dim) if kind == "mla" else 1
    assert ratio == pytest.approx((CONTEXT + 1) / CONTEXT * width, rel=0.05)
    # Hence the totals differ by attention's share of the FLOPs (~10% here) times that ratio's
    # excess: MHA/GQA 1/L of it (0.3%, allow 1%); MLA ~70% of it (8%, allow 10%).
    assert dec.flops == pytest.approx(pre.flops / CONTEXT, rel=0.10 if kind == "mla" else 0.01)


def test_literal_mla_decode_pays_to_up_project_the_whole_cache(reports):
    cfg = CONFIGS["mla"].with_(absorb=False)
    r = hetcc.analyze_phases(cfg, BATCH, CONTEXT)
    per_token = non_attention_flops(r.prefill.analysis) / CONTEXT
    # Decode up-projects K and V for all L + 1 cached tokens, prefill/L for one: L extra, each
    # 2 * latent * heads * (head_dim + v_head_dim) FLOPs per layer and sequence.
    extra = CONTEXT * cfg.layers * BATCH * 2 * cfg.kv_latent_dim * cfg.heads * (2 * cfg.head_dim)
    assert non_attention_flops(r.decode.analysis) == pytest.approx(per_token + extra, rel=1e-9)
    assert r.decode.flops > 3 * reports["mla"].decode.flops  # the absorbed form avoids that
    assert r.kv_bytes_per_token == reports["mla"].kv_bytes_per_token  # same cache either way


@pytest.mark.parametrize("config", [*CONFIGS.values(), CONFIGS["mla"].with_(absorb=False)],
                         ids=[*CONFIGS, "mla-literal"])
def test_decode_with_the_cache_equals_prefill(config):
    model = config.build()
    ids = torch.randint(0, config.vocab, (2, 12))
    with torch.no_grad():
        want, _ = model.prefill(ids)
        _, cache = model.prefill(ids[:, :6])
        for t in range(6, 12):
            logits, cache = model.decode(ids[:, t:t + 1], cache)
            torch.testing.assert_close(logits[:, 0], want[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", CONFIGS)
def test_capacity_grows_by_kv_bytes_per_token(reports, kind):
    r, longer = reports[kind], hetcc.analyze_phases(CONFIGS[kind], BATCH, CONTEXT + 8)
    assert longer.kv_bytes_per_token == r.kv_bytes_per_token
    assert longer.weight_bytes == r.weight_bytes
    for phase in ("prefill", "decode"):
        grown = longer.phases[phase].capacity_bytes - r.phases[phase].capacity_bytes
        assert grown == 8 * r.kv_bytes_per_token
    assert r.decode.capacity_bytes == r.weight_bytes / BATCH + r.kv_bytes_per_token * CONTEXT


def test_numbers_are_those_of_hetcc_analyze(reports):
    model = CONFIGS["mha"].build()
    ids = torch.randint(0, 128, (BATCH, CONTEXT))
    a = hetcc.analyze(model.prefill, (ids,))
    assert a.flops == reports["mha"].prefill.flops
    assert a.bytes_moved == reports["mha"].prefill.bytes_moved


def test_summary_lists_both_phases(reports):
    text = reports["gqa"].summary()
    assert "prefill" in text and "decode" in text and "closed form agrees" in text
    assert "2x32" in text and "2x1" in text


def test_model_without_the_interface_is_a_clear_error():
    with pytest.raises(hetcc.HetccError, match=r"prefill.*decode.*examples/decoders.py"):
        hetcc.analyze_phases(nn.Linear(4, 4), 1, 8)


def test_cache_that_does_not_grow_is_a_clear_error():
    class Same(nn.Module):
        def forward(self, ids, cache=None):
            x = ids.float()[..., None]
            if cache is None:
                return x, (x.sum(1, keepdim=True),)
            return x, (cache[0] * 2,)

    class Broken:
        prefill, decode = Same(), Same()

    with pytest.raises(hetcc.HetccError, match="does not grow by one token"):
        hetcc.analyze_phases(Broken(), 1, 8)
