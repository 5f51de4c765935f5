"""hetcc under an accuracy budget against the best fp32 native runtime and the vendors' own
quantization, on Hugging Face architectures (docs/precision.md has a run).

Per model (examples/hf_models.py: random weights from small configs, nothing downloaded), in one
process, measured interleaved as benchmarks/bench_native.py does (one call per path per round, in a
new random order each round):

  hetcc@B         hetcc.compile(model, inputs, targets=[openvino:cpu, onnxruntime:cpu, torch:cpu],
                  accuracy=B), for each budget B given (--budgets; default 0.01, 0.03 and top1=0.99:
                  outputs within 1 % and 3 % of fp32 eager, relative L2, and for models with logits
                  the arg-max kept on 99 % of positions)
  onnxruntime     torch.onnx.export(model, dynamo=True) on ONNX Runtime's CPU provider, fp32
  openvino-f32    openvino.convert_model + compile_model with INFERENCE_PRECISION_HINT=f32
  ort-int8        ONNX Runtime's own quantization: quantize_dynamic(weight_type=QInt8,
                  per_channel=True) on the same export, the whole model
  ort-int8s       ONNX Runtime's own static quantization: quantize_static(QDQ, per_channel=True,
                  its other defaults) on the same export, calibrated on the example inputs and the
                  --calibration batches (without --calibration, on the example inputs alone)
  openvino        OpenVINO's default config (on a CPU with AVX512-BF16, as here, it computes in bf16)
  openvino-nncf   OpenVINO's own weight compression: nncf.compress_weights (INT8_ASYM, its default)
                  on the converted model, default config (pip install nncf; the path fails without)
  openvino-int8s  OpenVINO's own static int8: nncf.quantize (its defaults) on the converted model,
                  calibrated as ort-int8s is, default config
  eager           the model itself

"best fp32 native" is the faster of onnxruntime and openvino-f32 (the best native on every model
of benchmarks/bench_native.py's run in docs/benchmarks.md, where each is within 1e-3 of eager).
Reported per path: median and p10-p90 ms; relative error ‖y − y_eager‖ / ‖y_eager‖ (worst
output); top-1 agreement of the arg-max over the last dimension where the model returns logits; and
the bytes of its weights on disk over the fp32 export's (hetcc: its segments' files).

    python benchmarks/bench_precision.py [--models bert,gpt2] [--budgets 0.01,0.03] [--rounds 25]
                                         [--calibration N] [--held-out N] [--json out.json]

--calibration N gives hetcc N calibration batches (compile's calibration=, which offers static
int8, onnxruntime:cpu@int8s and openvino:cpu@int8s, and rounds ONNX Runtime's int8 weights to fit
them; hetcc never calibrates on the example inputs, which it checks the budget on), and the
vendors' static int8 paths the example inputs and those N (as their users would calibrate, so
their error on the examples is in-sample). Each batch is like the example inputs
(examples/hf_models.py ``like``, seeded): float inputs drawn anew from a normal distribution,
token ids drawn anew, constant inputs kept.
--held-out N measures each path's worst error on N more such inputs, neither examples nor
calibration batches: whether a budget held on the examples holds elsewhere.

Not a test: run it by hand, on a quiet machine.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_native as native  # noqa: E402
import hetcc  # noqa: E402
from hetcc.error_budget import relative_error  # noqa: E402
from hetcc.measure.bench import machine_info, measure  # noqa: E402
from hetcc.timing import quantile  # noqa: E402

import hf_models  # noqa: E402

TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]
FP32_NATIVE = ("onnxruntime", "openvino-f32")
PATHS = ("onnxruntime", "openvino-f32", "ort-int8", "openvino", "ort-int8s", "openvino-nncf", "openvino-int8s",
         "eager")
"""The --paths run_model builds (hetcc's are --budgets)."""
LOGITS = ("gpt2", "llama_prefill", "llama_decode")
"""Models whose first output is logits: top-1 agreement is reported for them."""

log = logging.getLogger("bench_precision")


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def calibration_batches(inputs, n: int) -> list:
    """``n`` batches like ``inputs`` (examples/hf_models.py ``like``, seeded): float inputs drawn
    anew, token ids drawn anew within the example's range, constant inputs (a mask) kept."""
    return hf_models.like(inputs, n, seed=1234) if n else []


HELD_OUT_SEED = 99
"""Seed of the held-out inputs each path's error is also measured on (--held-out): neither the
example inputs nor the calibration batches (seed 1234)."""


def build_hetcc(model, inputs, workdir: Path, budget, calibration=None):
    cm = hetcc.compile(model, inputs, targets=TARGETS, accuracy=budget, calibration=calibration or None)
    files = sum(s.artifact_bytes or 0 for s in cm.plan.segments)
    return cm, {"plan": " + ".join(f"{s.target}({len(s.nodes)})" for s in cm.plan.segments),
                "file_bytes": files, "accuracy": cm.plan.accuracy, "notes": list(cm.plan.notes)}


def _exported(model, inputs, path: Path) -> Path:
    """The exporter's whole-model ONNX file, as a user would write it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers' advice on the root logger
    return path


def _ort_session(path: Path, spinning: bool = True):
    """(a callable on the torch inputs, the file's input names) for ONNX Runtime's CPU session;
    ``spinning=False`` keeps its idle threads from busy-waiting, for several sessions measured
    interleaved on the same cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*args):
        return session.run(None, {n: a.numpy() for n, a in zip(names, args)})

    return run, names


def build_ort_int8(model, inputs, workdir: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = _exported(model, inputs, workdir / "model.onnx"), workdir / "model_int8.onnx"
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return _ort_session(target)[0], {"file_bytes": target.stat().st_size}


def build_ort_int8s(model, inputs, workdir: Path, calibration=()):
    from onnxruntime.quantization import QuantFormat, quantize_static

    from hetcc.backends.onnx_quantize import calibration_reader

    source, target = _exported(model, inputs, workdir / "model.onnx"), workdir / "model_int8s.onnx"
    reader = calibration_reader([tuple(inputs), *calibration], _ort_session(source)[1])
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True)
    return _ort_session(target)[0], {"file_bytes": target.stat().st_size,
                                      "calibration_batches": 1 + len(calibration)}


def _openvino_nncf(model, inputs, workdir: Path, transform, **info):
    """OpenVINO's converter, ``transform(nncf, converted model)``, saved in fp32 and compiled with
    OpenVINO's default config."""
    import nncf
    import openvino as ov

    converted, how = native.ov_converted(model, inputs)
    done = transform(nncf, converted.clone())  # the conversion is shared with the other OpenVINO paths
    ov.save_model(done, str(workdir / "m.xml"), compress_to_fp16=False)
    compiled = ov.Core().compile_model(done, "CPU")

    def run(*args):
        result = compiled([a.numpy() for a in args])
        return [result[o] for o in compiled.outputs]

    return run, {"file_bytes": (workdir / "m.bin").stat().st_size, "nncf": nncf.__version__, **info, "converted": how,
                 "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}


def build_openvino_nncf(model, inputs, workdir: Path):
    return _openvino_nncf(model, inputs, workdir, lambda nncf, m: nncf.compress_weights(m))


def build_openvino_int8s(model, inputs, workdir: Path, calibration=()):
    items = [[a.numpy() for a in batch] for batch in [tuple(inputs), *calibration]]
    return _openvino_nncf(model, inputs, workdir,
                          lambda nncf, m: nncf.quantize(m, nncf.Dataset(items), subset_size=len(items)),
                          calibration_batches=len(items))


def errors(got, want, logits: bool) -> dict:
    got, want = native.flat_tensors(got), native.flat_tensors(want)
    rel = max(relative_error(g.to(torch.float32), w) for g, w in zip(got, want) if w.is_floating_point())
    out = {"rel_error": rel}
    if logits:
        out["top1"] = float((got[0].argmax(-1) == want[0].argmax(-1)).double().mean())
    return out


def held_out_error(fn, model, held: list) -> float | None:
    """The worst relative error of ``fn`` against ``model`` over the inputs ``held``; None for none."""
    with torch.no_grad():
        return max((errors(fn(*batch), model(*batch), False)["rel_error"] for batch in held), default=None)


def run_model(name: str, budgets, paths, rounds: int, progress, calibration: int = 0, held_out: int = 0) -> dict:
    model, inputs = hf_models.build(name, "bench")
    batches = calibration_batches(inputs, calibration)
    held = hf_models.like(inputs, held_out, seed=HELD_OUT_SEED) if held_out else []
    with torch.no_grad():
        want = model(*inputs)
    fp32_bytes = weight_bytes(model)
    builders = {"onnxruntime": native.build_onnxruntime, "openvino-f32": native.build_openvino_f32,
                "ort-int8": build_ort_int8, "openvino": native.build_openvino,
                "ort-int8s": lambda m, i, w: build_ort_int8s(m, i, w, batches),
                "openvino-nncf": build_openvino_nncf,
                "openvino-int8s": lambda m, i, w: build_openvino_int8s(m, i, w, batches),
                "eager": native.build_eager}
    for b in budgets:
        if str(b).startswith("top1") and name not in LOGITS:
            continue  # top-1 agreement needs logits
        builders[f"hetcc@{b}"] = lambda m, i, w, b=b: build_hetcc(m, i, w, b, batches)
    results, fns = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"bench-precision-{name}-") as tmp:
        for path in [p for p in builders if p in paths or p.startswith("hetcc@")]:
            workdir = Path(tmp) / path.replace("@", "_").replace("=", "_")
            workdir.mkdir()
            started = time.perf_counter()
            try:  # exporters print progress on stdout, which belongs to the table
                with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                    fn, info = builders[path](model, inputs, workdir)
                    got = fn(*inputs)
            except Exception as exc:  # a path that fails is a result
                results[path] = {"status": "fails", "reason": native.one_line(exc)}
                progress(f"  {name} {path}: fails: {results[path]['reason']}")
                continue
            results[path] = {"status": "ok", "build_s": time.perf_counter() - started, "info": info,
                             **errors(got, want, name in LOGITS)}
            if held:
                results[path]["held_out_error"] = held_out_error(fn, model, held)
            if "file_bytes" in info:
                results[path]["weight_ratio"] = info["file_bytes"] / fp32_bytes
            fns[path] = fn
            progress(f"  {name} {path}: built in {results[path]['build_s']:.1f} s, "
                     f"rel error {results[path]['rel_error']:.2e}")
        samples = measure(fns, inputs, warmup=3, runs=rounds, calls=1, min_runs=min(5, rounds))
    for path, s in samples.items():
        calls = s.calls
        results[path].update(median_ms=statistics.median(calls) * 1e3, p10_ms=quantile(calls, 0.1) * 1e3,
                             p90_ms=quantile(calls, 0.9) * 1e3)
    best = min((p for p in FP32_NATIVE if "median_ms" in results.get(p, {})),
               key=lambda p: results[p]["median_ms"], default=None)
    row = {"model": name, "fp32_weight_bytes": fp32_bytes, "best_fp32_native": best, "paths": results}
    if best:
        for path, r in results.items():
            if "median_ms" in r:
                r["speedup_vs_best_fp32"] = results[best]["median_ms"] / r["median_ms"]
    del model, fns
    native._converted.clear()
    gc.collect()
    return row


def render(rows, columns) -> str:
    head = ["model", "best fp32 native"] + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], f"{row['best_fp32_native']} {row['paths'][row['best_fp32_native']]['median_ms']:.2f} ms"
                 if row["best_fp32_native"] else "-"]
        for c in columns:
            r = row["paths"].get(c)
            if r is None:
                cells.append("-")
            elif r["status"] != "ok":
                cells.append("fails")
            else:
                acc = f"{r['rel_error'] * 100:.2f} %" + (f", top-1 {r['top1'] * 100:.1f} %" if "top1" in r else "")
                if r.get("held_out_error") is not None:
                    acc += f", held-out {r['held_out_error'] * 100:.2f} %"
                weights = f", weights {r['weight_ratio']:.2f}x" if "weight_ratio" in r else ""
                # no speed-up without an fp32 native path (--paths left both out, or both failed)
                speedup = (f"**{r['speedup_vs_best_fp32']:.2f}x**; " if "speedup_vs_best_fp32" in r else "")
                cells.append(f"{r['median_ms']:.2f} ms [{r['p10_ms']:.2f}–{r['p90_ms']:.2f}] "
                             f"{speedup}err {acc}{weights}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(hf_models.MODELS))
    parser.add_argument("--budgets", default="0.01,0.03,top1=0.99",
                        help="hetcc's accuracy budgets: relative errors, and top1=... (logits models only)")
    parser.add_argument("--paths", default="onnxruntime,openvino-f32,ort-int8,openvino,openvino-nncf,eager")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calibration", type=int, default=0, metavar="N",
                        help="calibration batches for hetcc (static int8, fitted int8 weights), and for ort-int8s and "
                             "openvino-int8s besides the example inputs")
    parser.add_argument("--held-out", type=int, default=0, metavar="N",
                        help="also measure each path's worst relative error on N other inputs like the examples")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    paths = native.chosen(parser, args.paths, list(PATHS), "paths")
    models = native.chosen(parser, args.models, list(hf_models.MODELS))

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = []
    for name in models:
        progress(f"{name}:")
        rows.append(run_model(name, budgets, paths, args.rounds, progress, args.calibration, args.held_out))
    m = machine_info()
    print(f"Machine: {m['cpu']}, {m['cores']} cores; {args.rounds} rounds; "
          f"{args.calibration} calibration batches (the vendors' static int8 also the example); "
          f"{args.held_out} held-out inputs; "
          "median ms [p10–p90], speed-up over "
          "the best fp32 native in bold, relative error against eager, weight bytes on disk over fp32.\n")
    print(render(rows, [f"hetcc@{b}" for b in budgets] + [p for p in paths if p not in FP32_NATIVE + ("eager",)]))
    for row in rows:
        for b in budgets:
            r = row["paths"].get(f"hetcc@{b}", {})
            if r.get("status") == "ok":
                print(f"\n{row['model']} hetcc@{b}: {r['info']['plan']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "rows": rows}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
