"""Stock Hugging Face models as users have them (keyword inputs, ModelOutput outputs) through every
command: compile and save from the CLI, then run and explain in fresh processes, against eager."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import hetcc  # noqa: E402
from hetcc.errors import ExportError, InputError  # noqa: E402

import hf_models  # noqa: E402  (tests/conftest.py puts examples/ on the path)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hf_models.py"
TARGETS = "onnxruntime:cpu,openvino:cpu,torch:cpu"


def _hetcc(*args, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "hetcc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"hetcc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


def _eager(model, inputs):
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


@pytest.mark.parametrize("family", list(hf_models.STOCK))
def test_stock_model_compiles_saves_and_runs_in_a_fresh_process(family, tmp_path):
    """A builder with size "bench" would be slow here, so a tiny one is named through a wrapper file."""
    model_file = tmp_path / "model.py"
    model_file.write_text(f"import sys\nsys.path.insert(0, {str(EXAMPLE.parent)!r})\nimport hf_models\n\n"
                          f"def build():\n    return hf_models.build_stock_{family}('tiny')\n")
    model, inputs = hf_models.STOCK[family]("tiny")
    want = _eager(model, inputs)
    named = inputs if isinstance(inputs, dict) else {"pixel_values": inputs[0]}
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in named.items()})

    _hetcc("compile", f"{model_file}:build", "--targets", TARGETS, "--no-measure", "-o", "m.bundle",
           cwd=tmp_path)
    _hetcc("run", "m.bundle", "--inputs", "in.npz", "-o", "out.npz", cwd=tmp_path)
    explained = _hetcc("explain", "m.bundle", cwd=tmp_path).stdout
    assert "seg0" in explained

    got = np.load(tmp_path / "out.npz")
    assert len(got.files) == len(want)
    for key, field in zip(sorted(got.files, key=lambda k: int(k[3:])), want.values()):
        assert field.abs().max() > 1e-3, "the tiny model's output vanished: nothing would be checked"
        torch.testing.assert_close(torch.from_numpy(got[key]), field, rtol=1e-4, atol=1e-4)


LOAD_WITHOUT_TRANSFORMERS = """
import sys, torch, hetcc
cm = hetcc.load("bert.bundle")
out = cm(input_ids=torch.load("ids.pt"), attention_mask=torch.load("mask.pt"))
assert "transformers" not in sys.modules, "loading a bundle imported transformers"
assert type(out).__name__ == "Record", type(out)
assert out.record_type.endswith("BaseModelOutputWithPoolingAndCrossAttentions"), out.record_type
assert list(out) == ["last_hidden_state", "pooler_output"], list(out)
assert out[0] is out.last_hidden_state is out["last_hidden_state"]
torch.save(out.to_tuple(), "got.pt")
"""

LOAD_WITH_TRANSFORMERS = """
import torch, hetcc, transformers.modeling_outputs as mo
cm = hetcc.load("bert.bundle")
out = cm(attention_mask=torch.load("mask.pt"), input_ids=torch.load("ids.pt"))
assert type(out) is mo.BaseModelOutputWithPoolingAndCrossAttentions, type(out)
torch.save(out.to_tuple(), "got.pt")
"""


@pytest.mark.parametrize("script", [LOAD_WITHOUT_TRANSFORMERS, LOAD_WITH_TRANSFORMERS],
                         ids=["record", "model-output"])
def test_a_loaded_bundle_returns_the_model_output_fields(script, tmp_path):
    """Loading never imports transformers; where the process already has, the ModelOutput class
    itself comes back."""
    model, inputs = hf_models.build_stock_bert("tiny")
    compiled = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False)
    want = _eager(model, inputs)
    assert type(compiled(**inputs)) is type(want)
    compiled.save(tmp_path / "bert.bundle")
    torch.save(inputs["input_ids"], tmp_path / "ids.pt")
    torch.save(inputs["attention_mask"], tmp_path / "mask.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "got.pt")
    for g, w in zip(got, want.to_tuple(), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_keyword_inputs_in_any_order_and_clear_errors():
    model, inputs = hf_models.build_stock_bert("tiny")
    compiled = hetcc.compile(model, inputs, targets=["torch:cpu"], measure=False)
    want = _eager(model, inputs).last_hidden_state
    swapped = {"attention_mask": inputs["attention_mask"], "input_ids": inputs["input_ids"]}
    torch.testing.assert_close(compiled(**swapped).last_hidden_state, want)
    with pytest.raises(InputError, match=r"missing attention_mask.*model\(input_ids=\.\.\., attention_mask=\.\.\.\)"):
        compiled(input_ids=inputs["input_ids"])
    with pytest.raises(InputError, match="unexpected token_type_ids"):
        compiled(**inputs, token_type_ids=inputs["input_ids"])


def test_a_returned_cache_gets_a_hint_not_a_cut_message():
    from transformers import LlamaForCausalLM

    wrapped, (ids,) = hf_models.build_llama_prefill("tiny")
    model = LlamaForCausalLM(wrapped.model.config).eval()
    model.config.use_cache = True
    with pytest.raises(ExportError) as info:
        hetcc.compile(model, {"input_ids": ids}, targets=["torch:cpu"], measure=False)
    text = str(info.value)
    assert "returns a transformers DynamicCache" in text and "use_cache = False" in text
    assert "leave a comment explaining your use case" in text  # torch's sentence is whole, not cut


def _more_stock_models():
    """Architectures beyond examples/hf_models.py, tiny, as users have them (keyword inputs,
    ModelOutput out)."""
    import transformers as tf

    g = torch.Generator().manual_seed(0)
    ids, mask = torch.randint(3, 90, (2, 12), generator=g), torch.ones(2, 12, dtype=torch.long)
    image = torch.randn(2, 3, 32, 32, generator=g)
    text = {"input_ids": ids, "attention_mask": mask}
    return {
        "distilbert": lambda: (tf.DistilBertModel(tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)), text),
        "gpt2": lambda: (tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=1, n_head=2, use_cache=False)), {"input_ids": ids}),
        "qwen2": lambda: (tf.Qwen2ForCausalLM(tf.Qwen2Config(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, use_cache=False)), {"input_ids": ids}),
        "bart": lambda: (tf.BartModel(tf.BartConfig(
            vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, use_cache=False)),
            {**text, "decoder_input_ids": ids[:, :4]}),
        "swin": lambda: (tf.SwinModel(tf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)), (image,)),
        "segformer": lambda: (tf.SegformerModel(tf.SegformerConfig(
            num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])), (image,)),
    }


@pytest.mark.parametrize("name", ["distilbert", "gpt2", "qwen2", "bart", "swin", "segformer"])
def test_more_architectures_run_natively_and_survive_a_bundle(name, tmp_path):
    """Nothing falls back (max_fallback=0), and the loaded bundle gives eager's outputs."""
    torch.manual_seed(0)
    model, inputs = _more_stock_models()[name]()
    model.eval()
    want = _eager(model, inputs)
    compiled = hetcc.compile(model, inputs, targets=["openvino:cpu", "onnxruntime:cpu"], measure=False,
                             max_fallback=0.0)
    loaded = hetcc.load(compiled.save(tmp_path / "b"))
    got = _eager(loaded, inputs)
    assert list(got.keys()) == list(want.keys())
    for key in want.keys():
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
