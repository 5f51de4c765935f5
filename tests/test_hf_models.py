"""Hugging Face architectures (examples/hf_models.py, tiny configs, random weights) through hetcc,
and a smoke test of benchmarks/bench_native.py. Correctness only: where hetcc's plan falls back
(a segment a runtime rejects), the test checks the outputs, not the placement."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import hetcc  # noqa: E402

import hf_models  # noqa: E402  (tests/conftest.py puts examples/ on the path)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["onnxruntime:cpu", "openvino:cpu", "torch:cpu"]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("name", list(hf_models.MODELS))
def test_hf_model_compiles_and_matches_eager(name):
    model, inputs = hf_models.build(name, "tiny")
    with torch.no_grad():
        want = _flat(model(*inputs))
    compiled = hetcc.compile(model, inputs, targets=TARGETS, measure=False)
    got = _flat(compiled(*inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert w.abs().max() > 1e-3, "the tiny model's output vanished: nothing would be checked"
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert compiled.plan.segments


@pytest.mark.parametrize("name", ["llama_prefill", "t5"])
def test_onnx_runtime_takes_the_whole_model(name):
    """hetcc's ONNX file for these was invalid ("Duplicate definition of name (add_7)": an output
    renamed to a name the exporter gave an inner value), so the whole model fell back; the graph's
    inputs and outputs now have names of their own."""
    model, inputs = hf_models.build(name, "tiny")
    compiled = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False)
    assert compiled.plan.targets_used() == ["onnxruntime:cpu"], compiled.plan.notes
    with torch.no_grad():
        want = _flat(model(*inputs))
    for g, w in zip(_flat(compiled(*inputs)), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_llama_decode_step_matches_the_full_prompt():
    """The decode wrapper (KV cache in and out as tensors) gives the logits of a full forward."""
    model, (ids, position, *kv) = hf_models.build_llama_decode("tiny")
    lm = model.model
    past = int(position)
    prompt = torch.randint(0, lm.config.vocab_size, (1, past + 1), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = lm(input_ids=prompt, use_cache=False).logits
        prefix = lm(input_ids=prompt[:, :past], use_cache=True)
        cache = [t for layer in prefix.cache.layers for t in (layer.keys, layer.values)]
        assert [tuple(t.shape) for t in cache] == [tuple(t.shape) for t in kv]
        logits, *new = model(prompt[:, past:], position, *cache)
    torch.testing.assert_close(logits[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)
    assert all(t.shape[2] == past + 1 for t in new)


def test_hf_builders_work_from_the_cli_spec():
    """``hetcc compile examples/hf_models.py:build_bert`` calls build_bert() with no arguments."""
    from hetcc.model_files import load_model

    model, inputs, options = load_model(f"{ROOT / 'examples' / 'hf_models.py'}:build_resnet")
    assert isinstance(model, torch.nn.Module) and inputs[0].shape == (1, 3, 224, 224) and options == {}


def test_inputs_like_the_examples_draw_token_ids_and_keep_constant_inputs():
    _, example = hf_models.build_stock_t5("tiny")
    drawn = hf_models.validation_stock_t5("tiny")
    assert len(drawn) == 8 and all(set(b) == set(example) for b in drawn)
    ids = torch.stack([b["input_ids"] for b in drawn])
    assert ids.shape[1:] == example["input_ids"].shape and ids.dtype == example["input_ids"].dtype
    low, high = int(example["input_ids"].min()), int(example["input_ids"].max())
    assert low <= int(ids.min()) and int(ids.max()) <= high and len({tuple(t.flatten().tolist()) for t in ids}) == 8
    # the decoder's start token is the same in every batch, as in the example
    assert all(torch.equal(b["decoder_input_ids"], example["decoder_input_ids"]) for b in drawn)
    # the calibration batches are others: a fit to the validation inputs would hide what it misses
    fitted = hf_models.calibration_stock_t5("tiny")
    assert len(fitted) == 8 and not any(torch.equal(f["input_ids"], d["input_ids"]) for f in fitted for d in drawn)
    (image,) = hf_models.like((torch.zeros(1, 3, 4, 4),), n=1)[0]
    assert image.dtype == torch.float32 and float(image.abs().sum()) > 0


def _bench_native():
    spec = importlib.util.spec_from_file_location("bench_native", ROOT / "benchmarks" / "bench_native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_native"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_native_smoke(monkeypatch, tmp_path):
    """Every path gives a result or a recorded failure; ratios and the table come out."""
    bench = _bench_native()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    def broken(model, inputs, workdir):
        raise RuntimeError("no such runtime here\nsecond line")

    monkeypatch.setitem(bench.BUILDERS, "broken", broken)
    monkeypatch.setitem(bench.LABELS, "broken", "broken")
    paths = list(bench.PATHS) + ["broken"]
    row = bench.run_model("convnext", "tiny", paths, rounds=2, budget=None, warmup=1, progress=lambda m: None)

    assert set(row["paths"]) == set(paths)
    for path, result in row["paths"].items():
        assert result["status"] in ("ok", "inexact", "fails"), path
        if result["status"] == "fails":
            assert result["reason"] and "\n" not in result["reason"] and result["stats"] is None, path
        else:
            assert result["stats"]["n"] == 2 and result["stats"]["median_s"] > 0, path
    assert row["paths"]["broken"]["reason"] == "RuntimeError: no such runtime here"
    for path in ("hetcc", "onnxruntime", "eager"):
        assert row["paths"][path]["status"] == "ok", row["paths"][path]["reason"]
    assert row["paths"]["hetcc"]["info"]["targets_used"]
    assert row["best_native"] in bench.NATIVE
    assert row["ratio_best_native"] > 0 and row["ratio_eager"] > 0
    assert len(row["ratio_spread"]) == 2

    table = bench.render([row], paths)
    assert "convnext" in table and "fails [" in table and "no such runtime here" in table
    assert bench.geomean([row["ratio_best_native"]]) == pytest.approx(row["ratio_best_native"])


def test_bench_native_compare_and_reasons():
    bench = _bench_native()
    want = torch.ones(2, 3)
    assert bench.compare([want.numpy() + 1e-6], want)[1] is None
    err, problem = bench.compare((want + 0.1,), want)
    assert err == pytest.approx(0.1) and "differs from eager" in problem
    with pytest.raises(AssertionError, match="shape"):
        bench.compare([torch.ones(3, 2)], want)
    ov_like = RuntimeError("Check 'false' failed at x.cpp:1:\nFrontEnd API failed\nSummary:\n"
                           "-- No conversion rule found for operations: aten::diff\n")
    assert bench.one_line(ov_like) == "RuntimeError: No conversion rule found for operations: aten::diff"


def test_the_native_gate_fails_on_a_ratio_over_the_bound_or_a_model_not_measured(capsys):
    gate = _bench_native().gate
    rows = [{"model": "bert", "ratio_fast": 1.1, "best_native": "onnxruntime"},
            {"model": "resnet", "ratio_fast": 0.9, "best_native": "openvino-f32"}]
    assert gate(rows, 1.25) == 0
    assert gate(rows, 1.05) == 3
    assert "bert: hetcc p10 is 1.10x onnxruntime's (allowed 1.05x)" in capsys.readouterr().err
    assert gate([{"model": "t5", "ratio_fast": None, "best_native": None}], 1.25) == 3


def test_openvino_paths_convert_through_torch_export_where_the_module_fails(monkeypatch):
    """Where OpenVINO's convert_model fails on the module (gpt2 and the Llamas: aten::diff in their
    mask code), the vendor's baseline converts the torch.export program, as OpenVINO documents, and
    says so; where both fail, the module's failure is raised with the program's noted."""
    ov = pytest.importorskip("openvino")
    bench = _bench_native()
    model, inputs = hf_models.build("vit", "tiny")
    with torch.no_grad():
        want = model(*inputs)
    run, info = bench.build_openvino_f32(model, inputs, None)
    assert info["converted"] == "module"  # a model the module converts for keeps that conversion
    real = ov.convert_model

    def no_module(source, **kw):
        if isinstance(source, torch.nn.Module):
            raise RuntimeError("Check 'false' failed\n-- No conversion rule found for operations: aten::diff\n"
                               "-- Conversion is failed for: prim::Constant")
        return real(source, **kw)

    monkeypatch.setattr(ov, "convert_model", no_module)
    bench._converted.clear()
    run, info = bench.build_openvino_f32(model, inputs, None)
    assert info["converted"] == ("torch.export program (on the module: -- No conversion rule found for "
                                 "operations: aten::diff)")
    assert bench.compare(run(*inputs), want)[1] is None

    def nothing(source, **kw):
        raise RuntimeError("no rule" if isinstance(source, torch.nn.Module) else "no program")

    monkeypatch.setattr(ov, "convert_model", nothing)
    bench._converted.clear()
    with pytest.raises(RuntimeError, match="no rule") as caught:
        bench.build_openvino_f32(model, inputs, None)
    assert any("torch.export program failed too" in n and "no program" in n for n in caught.value.__notes__)
    # and the benchmark's one-line reason says both
    assert bench.one_line(caught.value, limit=500) == (
        "RuntimeError: no rule; converting the torch.export program failed too: RuntimeError: no program")


def test_the_benchmarks_refuse_a_misspelt_model_or_path(capsys):
    bench = _bench_native()
    with pytest.raises(SystemExit):
        bench.main(["--models", "bert,bret"])
    err = capsys.readouterr().err
    assert "unknown models ['bret']; choose among " in err and "bert" in err
    with pytest.raises(SystemExit):
        bench.main(["--models", "bert", "--paths", "hetcc,onnx"])
    assert "unknown paths ['onnx']" in capsys.readouterr().err


def test_bench_skip_layernorm_compares_two_models_that_agree():
    """The benchmark's fused and split one-op models compute the same Add + LayerNormalization."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    _bench_native()  # the benchmark imports it by name
    spec = importlib.util.spec_from_file_location("bench_skip_layernorm",
                                                  ROOT / "benchmarks" / "bench_skip_layernorm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(1)
    x, r = (rng.standard_normal((1, 8, 32), dtype=np.float32) for _ in range(2))
    want = torch.nn.functional.layer_norm(torch.from_numpy(x + r), (32,), eps=1e-12).numpy()
    for fused in (True, False):
        session = ort.InferenceSession(bench.one_op(fused, 8, 32), providers=["CPUExecutionProvider"])
        ops = {n.op_type for n in onnx.load_from_string(bench.one_op(fused, 8, 32)).graph.node}
        assert ("SkipLayerNormalization" in ops) is fused
        np.testing.assert_allclose(session.run(None, {"x": x, "r": r})[0], want, rtol=1e-4, atol=1e-4)


def test_bench_rms_norm_compiles_both_ways_and_puts_the_rewrite_back():
    from hetcc.backends import onnxruntime_backend

    _bench_native()
    spec = importlib.util.spec_from_file_location("bench_rms_norm", ROOT / "benchmarks" / "bench_rms_norm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, inputs = hf_models.build("t5", "tiny")
    kept = onnxruntime_backend.rsqrt_as_div
    as_exported = bench.compiled(model, inputs, "onnxruntime:cpu", rewrite=False)
    assert onnxruntime_backend.rsqrt_as_div is kept
    rewritten = bench.compiled(model, inputs, "onnxruntime:cpu", rewrite=True)
    counts = [sum(a.meta.get("rsqrt_as_div", 0) for a in cm.artifacts.values()) for cm in (as_exported, rewritten)]
    assert counts[0] == 0 and counts[1] >= 3  # the tiny t5: encoder and decoder norms
    with torch.no_grad():
        want = model(*inputs)
    for cm in (as_exported, rewritten):
        torch.testing.assert_close(cm(*inputs), want, rtol=1e-4, atol=1e-4)
