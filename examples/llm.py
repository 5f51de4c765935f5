"""Causal language models from Hugging Face transformers as users have them (the ``*ForCausalLM``
class itself, no wrapper), built from small configs with random weights (nothing is downloaded),
for ``hetcc.compile_lm`` and ``hetcc compile-lm`` (docs/generation.md):

    hetcc compile-lm examples/llm.py:build -o llama.lm --prompt-len 64 --max-new-tokens 32 \\
        --prefill-targets openvino:cpu --decode-targets onnxruntime:cpu
    hetcc generate llama.lm --prompt '1 15 27 300'
    python examples/llm.py [family ...]    # compile each, generate, compare with transformers' generate

``build(family, size)`` returns ``(model, prompt_ids [1, n])``. ``size="bench"`` is sized for a
2-core CPU (hidden 512, 4 layers, vocabulary 8000); ``size="tiny"`` is what the tests compile. The
weights are drawn wider than transformers' default (initializer_range 0.3 on tiny) so that a greedy
decode of a random model does not repeat one token, which would make a token-for-token comparison
prove little. Needs ``pip install transformers`` (the ``hf`` extra).
"""
from __future__ import annotations

import sys

import torch

FAMILIES = ("llama", "qwen2", "mistral", "gpt2")
SIZES = ("bench", "tiny")


def build(family: str = "llama", size: str = "bench"):
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    tiny = size == "tiny"
    hidden, layers, heads, ff, vocab = (64, 2, 4, 128, 128) if tiny else (512, 4, 8, 1408, 8000)
    spread = 0.3 if tiny else 0.05
    positions = 512 if tiny else 2048
    torch.manual_seed(0)
    if family == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads,
                               n_positions=positions, initializer_range=spread, bos_token_id=0, eos_token_id=1)
        model = tf.GPT2LMHeadModel(config)
    else:
        common = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": layers,
                      "num_attention_heads": heads, "num_key_value_heads": 2, "max_position_embeddings": positions,
                      "initializer_range": spread, "bos_token_id": 0, "eos_token_id": 1}
        if family == "llama":
            model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
        elif family == "qwen2":
            model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
        else:
            model = tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=positions))
    model.eval()
    prompt = torch.randint(2, vocab, (1, 12 if tiny else 48), generator=torch.Generator().manual_seed(1))
    return model, (prompt,)


def build_tiny():
    """The tiny Llama, for the command line (``examples/llm.py:build_tiny``)."""
    return build("llama", "tiny")


def _main(families) -> int:
    import hetcc

    for family in families or FAMILIES:
        model, (prompt,) = build(family, "tiny")
        lm = hetcc.compile_lm(model, prompt_len=16, max_new_tokens=16, tune="off",
                              prefill_targets=["openvino:cpu"], decode_targets=["onnxruntime:cpu"])
        got = lm.generate(prompt).tokens[0]
        with torch.no_grad():
            want = model.generate(prompt, max_new_tokens=16, do_sample=False)[0, prompt.shape[1]:].tolist()
        print(f"{family}: {'same tokens as transformers' if got == want[:len(got)] else 'DIFFERENT'}: {got}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
