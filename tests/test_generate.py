"""Causal LMs compiled as two phases (issue 13): token-for-token equality with transformers'
``generate`` (greedy, fp32) on four architectures with prefill and decode on different vendors'
runtimes, sampling, stop tokens, the KV hand-over, bundles and the CLI, and clear refusals."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import hetcc
from hetcc.cli.app import main
from hetcc.errors import BundleError, InputError
from hetcc.lm.kv import KVCache
from hetcc.lm.sampling import Sampling, choose

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm

SPLIT = {"prefill_targets": ["openvino:cpu"], "decode_targets": ["onnxruntime:cpu"]}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [2, 3, 4, 5, 6], [9, 40, 3]]


def reference(model, prompt, new, **kwargs):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, **kwargs)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def llama():
    model, _ = llm.build("llama", "tiny")
    return model, hetcc.compile_lm(model, prompt_len=10, max_new_tokens=12, batch=2, tune="off", **SPLIT)


@pytest.mark.parametrize("family", llm.FAMILIES)
def test_greedy_matches_transformers_generate(family, llama):
    """Prefill on OpenVINO, decode on ONNX Runtime; three prompts of different lengths on a batch of
    two (padding, and a second batch); the model's own stop token ends a sequence."""
    model, lm = llama if family == "llama" else (None, None)
    if lm is None:
        model, _ = llm.build(family, "tiny")
        lm = hetcc.compile_lm(model, prompt_len=10, max_new_tokens=12, batch=2, tune="off", **SPLIT)
    assert {s.target for s in lm.prefill.plan.segments} == {"openvino:cpu"}
    assert {s.target for s in lm.decode.plan.segments} == {"onnxruntime:cpu"}
    out = lm.generate(PROMPTS)
    for prompt, got, why in zip(PROMPTS, out.tokens, out.finished):
        want = reference(model, prompt, 12)
        assert got == want
        assert why == ("stop" if want[-1] == 1 else "length")
    assert len(set(map(tuple, out.tokens))) == 3  # distinct outputs: the comparison proves something


def test_no_stop_runs_to_max_new_tokens(llama):
    model, lm = llama
    out = lm.generate(PROMPTS[:2], 7, stop=())
    assert [len(t) for t in out.tokens] == [7, 7] and out.finished == ["length", "length"]
    for prompt, got in zip(PROMPTS, out.tokens):
        assert got == reference(model, prompt, 7, eos_token_id=None)


def test_a_stop_token_ends_the_sequence_where_it_first_comes(llama):
    _model, lm = llama
    free = lm.generate([PROMPTS[0]], stop=()).tokens[0]
    stop = free[3]
    out = lm.generate([PROMPTS[0]], stop=[stop])
    assert out.tokens[0] == free[:free.index(stop) + 1] and out.finished == ["stop"]


def test_a_split_decode_phase_generates_the_same_tokens(llama):
    """The decode phase itself split across runtimes: the cache read on ONNX Runtime, the LM head
    pinned to OpenVINO."""
    model, _ = llama
    lm = hetcc.compile_lm(model, prompt_len=10, max_new_tokens=6, tune="off",
                          targets=["onnxruntime:cpu", "openvino:cpu"], pins={"model.lm_head": "openvino:cpu"})
    assert {s.target for s in lm.decode.plan.segments} == {"onnxruntime:cpu", "openvino:cpu"}
    assert lm.generate(PROMPTS[1]).tokens[0] == reference(model, PROMPTS[1], 6)


def test_decode_returns_one_slot_and_the_cache_stays_in_place(llama):
    """The decode graph hands back one token's keys and values per layer, not the cache; the loop
    writes them into the same cache tensors each step."""
    _, lm = llama
    cache_shapes = lm.shape.cache
    token = torch.zeros(2, 1, dtype=torch.long)
    cache = KVCache(list(cache_shapes), torch.float32, "cpu")
    cache.hand_over([torch.randn(c[0], c[1], 10, c[3]) for c in cache_shapes], torch.ones(2, 10, dtype=torch.long))
    pointers = [t.data_ptr() for t in cache.tensors]
    out = lm.decode(token, cache.position, *cache.inputs())
    assert [tuple(t.shape) for t in out[1:]] == [(c[0], c[1], 1, c[3]) for c in cache_shapes]
    cache.append(out[1:])
    assert [t.data_ptr() for t in cache.tensors] == pointers
    assert torch.equal(cache.tensors[0][:, :, 10], out[1][:, :, 0])
    assert cache.valid[:, :11].all() and not cache.valid[:, 11:].any()
    assert cache.position.tolist() == [[11], [11]]


def test_the_decode_phase_holds_its_cache_against_memory(llama):
    """Decode is compiled with the cache as a resident input: its plan holds the weights and the
    cache, prefill's the weights."""
    _, lm = llama
    cache = sum(torch.Size(c).numel() * 4 for c in lm.shape.cache)
    held = [sum(s.resident_bytes for s in m.plan.segments) for m in (lm.prefill, lm.decode)]
    assert held[1] - held[0] == cache


def test_hand_over_is_measured_and_zeroes_padding(llama):
    _, lm = llama
    out = lm.generate(PROMPTS)
    per_batch = sum(2 * c[1] * 10 * c[3] * 4 for c in lm.shape.cache)  # batch 2, 10 prompt slots, fp32
    assert out.handover_bytes == 2 * per_batch  # two batches
    assert out.handover_s > 0 and out.ttft_s > 0 and out.tpot_s > 0 and out.tokens_per_s > 0
    cache = KVCache([(1, 2, 4, 3)] * 2, torch.float32, "cpu")
    nan = torch.full((1, 2, 3, 3), float("nan"))
    cache.hand_over([nan, nan], torch.tensor([[0, 0, 1]]))
    assert cache.tensors[0][:, :, :2].eq(0).all() and cache.tensors[0][:, :, 2].isnan().all()
    assert cache.valid.tolist() == [[0, 0, 1, 0]] and cache.position.tolist() == [[1]]


def test_sampling_is_seeded_and_filtered(llama):
    _, lm = llama
    a = lm.generate(PROMPTS, temperature=0.9, top_k=20, top_p=0.95, seed=3, stop=())
    b = lm.generate(PROMPTS, temperature=0.9, top_k=20, top_p=0.95, seed=3, stop=())
    c = lm.generate(PROMPTS, temperature=0.9, top_k=20, top_p=0.95, seed=4, stop=())
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = lm.generate(PROMPTS, stop=()).tokens
    assert lm.generate(PROMPTS, temperature=1.5, top_k=1, seed=0, stop=()).tokens == greedy
    assert lm.generate(PROMPTS, temperature=1.5, top_p=1e-6, seed=0, stop=()).tokens == greedy


def test_choose_keeps_only_the_top_k_and_the_top_p_mass():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    picked = choose(logits, Sampling(1.0, top_k=2), gen)
    assert set(picked.tolist()) == {0, 1}
    # softmax of [4, 3, 2, 1, 0] is [.64, .24, .09, .03, .01]: top_p 0.8 keeps the first two
    picked = choose(logits, Sampling(1.0, top_p=0.8), gen)
    assert set(picked.tolist()) == {0, 1}
    picked = choose(logits, Sampling(1.0), gen)
    assert set(picked.tolist()) == {0, 1, 2, 3, 4}
    share = (picked == 0).float().mean().item()
    assert 0.58 < share < 0.70


@pytest.mark.parametrize("options, says", [
    ({"temperature": -1}, "temperature must be 0"),
    ({"top_k": 0, "temperature": 1}, "top_k must be"),
    ({"top_p": 1.5, "temperature": 1}, "top_p must be a number in"),
    ({"temperature": "0.8"}, "temperature must be 0"),
    ({"temperature": 1e-45}, "temperature must be 0"),
    ({"top_k": True, "temperature": 1}, "top_k must be"),
    ({"seed": "x", "temperature": 1}, "seed must be"),
    ({"top_k": 5}, "set a temperature above 0"),
])
def test_bad_sampling_settings_are_refused(options, says):
    with pytest.raises(InputError, match=says):
        Sampling(**options)


@pytest.mark.parametrize("prompts, options, says", [
    ([list(range(2, 13))], {}, "has 11 tokens; this model was compiled for prompts of at most 10"),
    ([[]], {}, "prompt 0 is empty"),
    ([[3, 500]], {}, r"in 0..127 \(the vocabulary\), got \[500\]"),
    ([[3, 4]], {"max_new_tokens": 13}, "max_new_tokens must be 1 to 12"),
    ([[3, 4]], {"stop": [-1]}, "stop token ids must be"),
    (torch.ones(2, 3), {}, "must be token ids, 1D"),
    ("3 4", {}, "token ids, not text"),
    ([[3, 4]], {"max_new_tokens": True}, "max_new_tokens must be 1 to 12"),
])
def test_bad_generate_input_is_refused(llama, prompts, options, says):
    _, lm = llama
    with pytest.raises(InputError, match=says):
        lm.generate(prompts, **options)


def test_numpy_ids_and_tensors_are_prompts_too(llama):
    import numpy as np

    _, lm = llama
    want = lm.generate([PROMPTS[1]], 4).tokens
    assert lm.generate([np.array(PROMPTS[1])[i] for i in range(5)], 4).tokens == want
    assert lm.generate([torch.tensor(PROMPTS[1])], 4).tokens == want
    assert lm.generate(torch.tensor(PROMPTS[1]), 4).tokens == want


def test_models_it_cannot_run_are_refused_with_the_reason():
    import transformers as tf

    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                   num_heads=2))
    with pytest.raises(InputError, match="encoder-decoder"):
        hetcc.compile_lm(t5, 8, 4)
    with pytest.raises(InputError, match="not a transformers model"):
        hetcc.compile_lm(torch.nn.Linear(2, 2), 8, 4)
    mistral = tf.MistralForCausalLM(tf.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=1, sliding_window=16))
    with pytest.raises(InputError, match="sliding window of 16 tokens but the cache would hold 20"):
        hetcc.compile_lm(mistral, 12, 8)
    with pytest.raises(InputError, match="prompt_len must be a whole number"):
        hetcc.compile_lm(mistral, 0, 8)
    gpt2, _ = llm.build("gpt2", "tiny")  # 512 learned positions
    with pytest.raises(InputError, match="knows positions up to 512 .* prompt length \\+ max_new_tokens is 518"):
        hetcc.compile_lm(gpt2, 8, 510)
    with pytest.raises(InputError, match="sets objective itself"):
        hetcc.compile_lm(gpt2, 8, 4, objective="throughput")
    with pytest.raises(InputError, match="compile_lm does not take calibration batches"):
        hetcc.compile_lm(gpt2, 8, 4, accuracy=0.05, calibration=[(torch.zeros(1, 8, dtype=torch.long),)])
    with pytest.raises(InputError, match="compile_lm does not take validation batches"):
        hetcc.compile_lm(gpt2, 8, 4, accuracy=0.05, validation=[(torch.zeros(1, 8, dtype=torch.long),)])
    with pytest.raises(InputError, match="seed must be a whole number"):
        hetcc.compile_lm(gpt2, 8, 4, seed="x")


def test_bundle_round_trip_generates_the_same_tokens(llama, tmp_path):
    _, lm = llama
    path = lm.save(tmp_path / "llama.lm")
    loaded = hetcc.load_lm(path)
    assert loaded.shape == lm.shape
    assert loaded.generate(PROMPTS).tokens == lm.generate(PROMPTS).tokens
    with pytest.raises(BundleError, match="already exists"):
        lm.save(path)
    (path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="notes.txt"):
        lm.save(path, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine"
    (path / "notes.txt").unlink()
    lm.save(path, overwrite=True)
    assert hetcc.load_lm(path).shape == lm.shape
    # a folder that merely holds a file named lm.json is not a bundle: never replaced
    foreign = tmp_path / "mine"
    (foreign / "decode").mkdir(parents=True)
    (foreign / "lm.json").write_text('{"my": "config"}')
    (foreign / "decode" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a hetcc language-model manifest"):
        lm.save(foreign, overwrite=True)
    (foreign / "lm.json").write_text('{"format": "hetcc-lm"}')
    with pytest.raises(BundleError, match="not a hetcc bundle"):
        lm.save(foreign, overwrite=True)
    assert (foreign / "decode" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change, says", [
    (lambda d: d.update(format="x"), "not a hetcc language-model manifest"),
    (lambda d: d.update(batch=0), '"batch" must be a whole number'),
    (lambda d: d.update(prompt_len=11), "do not match lm.json"),
    (lambda d: d.update(stop=[10**6]), "below the vocabulary size"),
    (lambda d: d.update(dtype="os.system"), '"dtype" must be one of'),
    (lambda d: d["cache"].pop(), "even-length"),
    (lambda d: d.update(chunk=0.0), '"chunk" must be 0 or a whole number'),
    (lambda d: d.update(dtype="float16"), "says the cache is float16 but the decode bundle takes"),
])
def test_damaged_lm_manifest_is_refused(llama, tmp_path, change, says):
    _, lm = llama
    path = lm.save(tmp_path / "llama.lm")
    data = json.loads((path / "lm.json").read_text())
    change(data)
    (path / "lm.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=says):
        hetcc.load_lm(path)


def test_a_damaged_lm_bundle_layout_is_refused(llama, tmp_path):
    import shutil

    _, lm = llama
    path = lm.save(tmp_path / "llama.lm")
    shutil.rmtree(path / "decode")
    with pytest.raises(BundleError, match="its decode phase cannot be loaded"):
        hetcc.load_lm(path)
    (path / "lm.json").unlink()
    (path / "lm.json").mkdir()
    with pytest.raises(BundleError, match="lm.json"):
        hetcc.load_lm(path)


def test_a_plain_bundle_is_not_a_language_model(tmp_path):
    cm = hetcc.compile(torch.nn.Linear(3, 3), (torch.randn(2, 3),), tune="off")
    path = cm.save(tmp_path / "plain")
    with pytest.raises(BundleError, match="no lm.json"):
        hetcc.load_lm(path)


def test_cli_compile_lm_and_generate(tmp_path, capsys):
    bundle = tmp_path / "tiny.lm"
    model_spec = f"{Path(llm.__file__)}:build_tiny"
    assert main(["compile-lm", model_spec, "-o", str(bundle), "--prompt-len", "10", "--max-new-tokens", "5",
                 "--prefill-targets", "openvino:cpu", "--decode-targets", "onnxruntime:cpu", "--tune", "off"]) == 0
    assert "prefill (time to first token)" in capsys.readouterr().out
    assert main(["generate", str(bundle), "--prompt", "2 3 4 5 6", "--prompt", "9,40,3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = llm.build("llama", "tiny")
    assert result["tokens"] == [reference(model, PROMPTS[1], 5), reference(model, PROMPTS[2], 5)]
    assert result["ttft_ms"] > 0 and result["handover_bytes"] > 0
    assert main(["generate", str(bundle), "--prompt", "2 x"]) != 0
    assert "token ids must be whole numbers" in capsys.readouterr().err
    assert main(["explain", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "prefill (time to first token):" in text and "decode (time per output token):" in text
    assert "openvino:cpu" in text and "onnxruntime:cpu" in text
    assert main(["explain", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {s["target"] for s in report["decode"]["segments"]} == {"onnxruntime:cpu"}
    assert main(["run", str(bundle), "--inputs", "x.npz"]) == 1
    assert "language model's bundle" in capsys.readouterr().err


def test_predict_lm_places_the_phases_apart_with_the_hand_over(capsys):
    model, _ = llm.build("llama", "tiny")
    from hetcc.lm.predict import predict_lm

    apart = predict_lm(model, 16, 8, ["h100-sxm"], ["l4"], batch=2, dtype="bf16")
    together = predict_lm(model, 16, 8, ["h100-sxm"], ["h100-sxm"], batch=2, dtype="bf16")
    # 2 layers x (k, v) x 2 KV heads x 16 prompt tokens x head_dim 16 x 2 bytes, per request
    assert apart.kv_bytes == together.kv_bytes == 2 * 2 * 2 * 16 * 16 * 2
    assert apart.prefill.devices_used == ["h100-sxm"] and apart.decode.devices_used == ["l4"]
    assert apart.handover_seconds > 0 and together.handover_seconds == 0
    assert apart.ttft == pytest.approx(apart.prefill.latency_seconds + apart.handover_seconds)
    assert "KV hand-over" in apart.summary() and "predicted, not measured" in apart.summary()
    assert main(["plan-lm", f"{Path(llm.__file__)}:build_tiny", "--prefill-devices", "h100-sxm",
                 "--decode-devices", "l4", "--prompt-len", "16", "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_bytes"] == 2 * 2 * 2 * 16 * 16 * 4 and result["tpot_ms"] > 0


# ---- prefix reuse ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reusing():
    model, _ = llm.build("llama", "tiny")
    return model, hetcc.compile_lm(model, prompt_len=10, max_new_tokens=12, batch=2, tune="off",
                                   prefix_chunk=4, **SPLIT)


def test_prefix_reuse_gives_the_same_tokens_and_counts_its_hits(reusing):
    model, lm = reusing
    lm.prefixes.clear()
    first = [5, 6, 7, 8, 9, 10]
    said = lm.generate([first], stop=()).tokens[0]
    assert len(lm.prefixes) == 1
    cases = [
        (first + [20, 21], 6),          # the same prompt, extended
        (first[:3] + [99, 98, 97], 3),  # one differing token ends the match
        (first + said[:2], 6),          # a conversation going on: prompt and answer reused, cut to P - C
    ]
    for prompt, reused in cases:
        out = lm.generate([prompt])
        assert (out.prefix_hits, out.reused_tokens) == (1, reused), prompt
        assert out.tokens[0] == reference(model, prompt, 12)
    both = [cases[0][0], cases[2][0]]
    out = lm.generate(both)
    assert out.prefix_hits == 2 and out.tokens == [reference(model, p, 12) for p in both]
    # a row without a stored prefix (or one that needs more than the chunk) runs the batch as a prefill
    out = lm.generate([[40, 41, 42], cases[0][0]])
    assert out.prefix_hits == 0 and out.tokens[0] == reference(model, [40, 41, 42], 12)
    out = lm.generate([first[:2] + [1, 2, 3, 4, 5]])  # 5 tokens after a 2-token match: chunk is 4
    assert out.prefix_hits == 0
    out = lm.generate([cases[0][0]], reuse=False)
    assert out.prefix_hits == 0 and out.tokens[0] == reference(model, cases[0][0], 12)


def test_prefix_store_keeps_the_longest_match_and_evicts_the_oldest():
    from hetcc.lm.prefix import PrefixStore

    store = PrefixStore(max_bytes=3 * 4 * 2 * 8)  # room for three 2-tensor entries of 8 floats
    for tokens in ([1, 2, 3, 4], [1, 2, 9, 9], [5, 6, 7, 8]):
        store.add(tokens, [torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)])
    entry, n = store.longest([1, 2, 3, 7])
    assert entry.tokens == (1, 2, 3, 4) and n == 3
    store.touch(entry)  # used: [1, 2, 9, 9] is now the least recently used
    store.add([7, 7, 7, 7], [torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)])  # evicts [1, 2, 9, 9]
    assert len(store) == 3 and store.longest([1, 2, 9])[1] == 2 and store.nbytes == store.max_bytes
    assert store.longest([3])[0] is None
    store.add([8] * 100, [torch.zeros(1, 100, 2)])  # larger than the whole store: not kept
    assert len(store) == 3


def test_reusing_bundle_round_trip(reusing, tmp_path):
    model, lm = reusing
    loaded = hetcc.load_lm(lm.save(tmp_path / "reuse.lm"))
    assert loaded.shape.chunk == 4 and loaded.extend is not None
    loaded.generate([[5, 6, 7, 8, 9, 10]])
    out = loaded.generate([[5, 6, 7, 8, 9, 10, 11]])
    assert out.prefix_hits == 1 and out.tokens[0] == reference(model, [5, 6, 7, 8, 9, 10, 11], 12)
    data = json.loads((tmp_path / "reuse.lm" / "lm.json").read_text())
    data["chunk"] = 3
    (tmp_path / "reuse.lm" / "lm.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="extend bundle's inputs"):
        hetcc.load_lm(tmp_path / "reuse.lm")


def test_bad_prefix_chunk_is_refused(llama):
    model, _ = llama
    with pytest.raises(InputError, match="prefix_chunk must be a whole number of tokens from 1 to"):
        hetcc.compile_lm(model, 10, 4, prefix_chunk=10)


# ---- speculative decoding ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speculating():
    model, _ = llm.build("llama", "tiny")
    return model, hetcc.compile_lm(model, prompt_len=10, max_new_tokens=12, tune="off", speculate=3, **SPLIT)


@pytest.fixture(scope="module")
def one_layer_draft():
    import copy

    model, _ = llm.build("llama", "tiny")
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:1]  # the target's first layer, embeddings and head
    small.config.num_hidden_layers = 1
    return hetcc.compile_lm(small, prompt_len=10, max_new_tokens=16, tune="off", targets=["openvino:cpu"])


def test_speculative_decoding_gives_the_targets_greedy_tokens(speculating, llama, one_layer_draft):
    """Whatever the draft proposes, the output is the target's own greedy output: a draft that is
    the target (every proposal kept) and a one-layer draft (most rejected)."""
    model, lm = speculating
    _, same = llama
    for draft in (same, one_layer_draft):
        out = lm.generate(PROMPTS, draft=draft, stop=())
        assert out.tokens == [reference(model, p, 12, eos_token_id=None) for p in PROMPTS]
        assert out.draft_proposed > 0 and out.draft_accepted <= out.draft_proposed
        assert len(out.step_seconds) == sum(len(t) - 1 for t in out.tokens)
    # the target itself as the draft: every proposal kept, so 3 + 1 tokens per verify call
    assert lm.generate(PROMPTS, draft=same, stop=()).acceptance_rate == 1.0
    out = lm.generate(PROMPTS, draft=one_layer_draft)
    assert out.tokens == [reference(model, p, 12) for p in PROMPTS]
    assert out.acceptance_rate < 1.0


def test_speculative_decoding_refuses_what_it_cannot_do(speculating, llama, reusing):
    _, lm = speculating
    _, batched = llama
    other, _ = llm.build("gpt2", "tiny")
    with pytest.raises(InputError, match="greedy only"):
        lm.generate(PROMPTS, draft=batched, temperature=0.7)
    with pytest.raises(InputError, match="compiled without speculative decoding"):
        batched.generate(PROMPTS, draft=lm)
    with pytest.raises(InputError, match="draft must be a CompiledLM"):
        lm.generate(PROMPTS, draft=other)
    with pytest.raises(InputError, match="speculate must be a whole number"):
        hetcc.compile_lm(other, 10, 4, speculate=0)


def test_speculating_bundle_round_trip(speculating, llama, tmp_path):
    model, lm = speculating
    _, draft = llama
    loaded = hetcc.load_lm(lm.save(tmp_path / "spec.lm"))
    assert loaded.shape.speculate == 3 and loaded.verify is not None
    assert loaded.generate(PROMPTS, draft=draft).tokens == [reference(model, p, 12) for p in PROMPTS]


# ---- on a GPU (run by benchmarks/gpu_check.py's tests part; skipped here) -------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
def test_decode_on_a_gpu_keeps_the_cache_there(tmp_path):
    """Prefill on the host (OpenVINO), decode on torch:cuda: the cache lives on the GPU, the new
    slots stay there, sampling draws on the host, and the tokens are transformers' own."""
    model, _ = llm.build("llama", "tiny")
    lm = hetcc.compile_lm(model, prompt_len=10, max_new_tokens=8, batch=2, tune="off", prefix_chunk=4,
                          prefill_targets=["openvino:cpu"], decode_targets=["torch:cuda:0"])
    assert lm.cache_device == "cuda:0"
    out = lm.generate(PROMPTS)
    assert out.tokens == [reference(model, p, 8) for p in PROMPTS]
    sampled = [lm.generate(PROMPTS, temperature=0.8, top_p=0.9, seed=1).tokens for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert lm.generate([PROMPTS[1] + [20]]).prefix_hits == 1
    loaded = hetcc.load_lm(lm.save(tmp_path / "gpu.lm"))
    assert loaded.cache_device == "cuda:0" and loaded.generate(PROMPTS).tokens == out.tokens
