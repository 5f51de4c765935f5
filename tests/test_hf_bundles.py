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
