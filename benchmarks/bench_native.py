"""hetcc against the vendors' own whole-model paths, on Hugging Face architectures.

Per model (examples/hf_models.py: random weights from small configs, nothing downloaded), in one
process, measured interleaved:

  hetcc          hetcc.compile(model, inputs, targets=[openvino:cpu, onnxruntime:cpu, iree:cpu,
                 torch:cpu]) with default options
  onnxruntime    torch.onnx.export(model, inputs, f, dynamo=True), then
                 onnxruntime.InferenceSession(f, providers=["CPUExecutionProvider"]), default options
  openvino       openvino.convert_model(model, example_input=inputs) (where that fails,
                 convert_model(torch.export.export(model, inputs)), as OpenVINO documents), then
                 Core().compile_model(m, "CPU") with its default config
  iree           iree.turbine.aot.export(model, args=inputs).compile(target_backends=llvm-cpu), with
                 --iree-llvmcpu-target-cpu=host (the flags hetcc's iree:cpu uses), run by
                 iree.runtime on local-task
  torch.compile  torch.compile(model), default (inductor)
  eager          the model itself

Each path is built and checked against eager once (a path that fails to build, to run or to match is
reported as failed with a one-line reason, and the run goes on), warmed up, then every working path
is measured with hetcc.measure.bench.measure: one call per path per round, in a new random order
each round, 100 ms idle (hetcc.timing.PAUSE) and one untimed call before each timed call, so machine drift moves every
path alike and no path pays for the one before it (ONNX Runtime spins after a call). Reported per
path: median, p10, p90 of per-call seconds and the spread (p90-p10)/median; per model hetcc / best
native, where "native" is the best median of onnxruntime, openvino, iree and torch.compile (eager is
reported beside it, not counted); and the geometric mean of that ratio over the models.

    python benchmarks/bench_native.py [--models bert,resnet] [--rounds 25 | --budget SECONDS]
                                      [--json out.json] [--quick]

Not a test (tests/test_hf_models.py smoke-tests it): run it by hand; docs/benchmarks.md has a run.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import hetcc  # noqa: E402
from hetcc.measure.bench import machine_info, measure  # noqa: E402
from hetcc.timing import quantile  # noqa: E402

import hf_models  # noqa: E402

HETCC_TARGETS = ["openvino:cpu", "onnxruntime:cpu", "iree:cpu", "torch:cpu"]
PATHS = ("hetcc", "onnxruntime", "openvino", "openvino-f32", "iree", "torch.compile", "eager")
NATIVE = ("onnxruntime", "openvino", "openvino-f32", "iree", "torch.compile")
"""The vendors' own paths that "best native" is taken over, among those whose outputs match eager
(eager is reported beside them, not counted)."""
LABELS = {"hetcc": "hetcc", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
          "openvino-f32": "OpenVINO f32", "iree": "IREE",
          "torch.compile": "torch.compile", "eager": "eager"}
IREE_FLAGS = ("--iree-llvmcpu-target-cpu=host",)
RTOL, ATOL = 1e-3, 1e-3
"""A path whose outputs differ from eager by more than this is reported as failed (wrong)."""

log = logging.getLogger("bench_native")


@dataclass
class PathResult:
    """One path on one model: how it built, how it ran, and what it measured."""

    path: str
    status: str = "fails"
    """ok: runs and matches eager; inexact: runs (and is measured) but its outputs differ from
    eager beyond RTOL/ATOL, so it is not counted as a native path; fails: does not build or run."""
    reason: str | None = None
    """Why it failed or is inexact: one line."""
    stage: str | None = None
    """Where it failed: build (export/convert/compile), run, or check (outputs differ from eager)."""
    compile_s: float | None = None
    """Seconds to build it, the first call included (torch.compile compiles on that call)."""
    max_abs_err: float | None = None
    calls: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    fn: object = None

    def stats(self) -> dict | None:
        if not self.calls:
            return None
        med = statistics.median(self.calls)
        p10, p90 = quantile(self.calls, 0.10), quantile(self.calls, 0.90)
        return {"n": len(self.calls), "median_s": med, "p10_s": p10, "p90_s": p90,
                "min_s": min(self.calls), "spread": (p90 - p10) / med if med > 0 else math.nan}

    def to_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "stage": self.stage, "reason": self.reason,
                "compile_s": self.compile_s, "max_abs_err": self.max_abs_err, "stats": self.stats(),
                "info": self.info, "calls_s": [round(c, 7) for c in self.calls]}


# ---- helpers ------------------------------------------------------------------------------------

def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first meaningful line`` of an exception, at most ``limit`` characters. OpenVINO's
    conversion failures put what matters under a "Summary:" line: those lines are taken instead."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if "Summary:" in lines:
        lines = ["; ".join(ln.lstrip("- ") for ln in lines[lines.index("Summary:") + 1:])]
    line = "; ".join([lines[0] if lines else "", *getattr(exc, "__notes__", ())])
    return f"{type(exc).__name__}: {line}"[:limit]


def flat_tensors(out) -> list[torch.Tensor]:
    """Outputs of any path as a list of torch tensors (numpy arrays, IREE arrays converted)."""
    import numpy as np

    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if hasattr(out, "to_host"):  # iree.runtime DeviceArray
        return [torch.from_numpy(np.asarray(out.to_host()))]
    raise TypeError(f"unexpected output type {type(out).__name__}")


def compare(got, want) -> tuple[float, str | None]:
    """(max abs error, None) when ``got`` matches eager's ``want`` within RTOL/ATOL, else
    (max abs error, what is off); AssertionError when the outputs' count or shapes differ."""
    got, want = flat_tensors(got), flat_tensors(want)
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs, eager has {len(want)}")
    worst, problem = 0.0, None
    for i, (g, w) in enumerate(zip(got, want)):
        if tuple(g.shape) != tuple(w.shape):
            raise AssertionError(f"output {i} has shape {tuple(g.shape)}, eager's {tuple(w.shape)}")
        g, w = g.to(torch.float64), w.to(torch.float64)
        err = (g - w).abs()
        worst = max(worst, err.max().item() if err.numel() else 0.0)
        if problem is None and not bool((err <= ATOL + RTOL * w.abs()).all()):
            problem = f"output {i} differs from eager beyond rtol {RTOL}, atol {ATOL}"
    if problem:
        problem += f": max abs error {worst:.1e}"
    return worst, problem


@contextlib.contextmanager
def captured_fd2():
    """Capture what native code writes to file descriptor 2 (IREE's compiler diagnostics) into a
    list of lines, given after the block."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def diagnostic(lines: list[str]) -> str | None:
    """The first ``error:`` of compiler output, without the location prefix."""
    import re

    for line in lines:
        if "error:" in line:
            text = line.split("error:", 1)[1].strip()
            op = re.search(r'name = "([\w.]+)"', text) or re.search(r"value = dense<[^>]*> : (tensor<\w+>)", text)
            text = text.split(": %", 1)[0]  # the MLIR of the op follows; its name says enough
            return f"{text} ({op.group(1)})" if op else text
    return None


# ---- the paths ----------------------------------------------------------------------------------
# Each builder takes (model, inputs, workdir) and returns (callable on the torch inputs, info).

def build_hetcc(model, inputs, workdir: Path):
    cm = hetcc.compile(model, inputs, targets=HETCC_TARGETS)
    plan = cm.plan
    fell_back = {}
    for s in plan.segments:
        for why in s.fell_back.values():
            fell_back[why] = fell_back.get(why, 0) + 1
    info = {"targets_used": plan.targets_used(),
            "segments": [{"name": s.name, "target": s.target, "nodes": len(s.nodes),
                          "measured_ms": None if s.measured_seconds is None else s.measured_seconds * 1e3}
                         for s in plan.segments],
            "plan": " + ".join(f"{s.target}({len(s.nodes)})" for s in plan.segments),
            "notes": list(plan.notes), "fell_back": fell_back, "attempts": plan.attempts,
            "summary": plan.summary()}
    return cm, info


def build_onnxruntime(model, inputs, workdir: Path):
    import onnxruntime as ort

    path = workdir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise RuntimeError(f"the exported model takes {len(names)} inputs, the model {len(inputs)}")

    def run(*args):
        return session.run(None, {n: a.numpy() for n, a in zip(names, args)})

    return run, {"onnxruntime": ort.__version__, "onnx_bytes": path.stat().st_size}


def chosen(parser, text: str, known, what: str = "models") -> list[str]:
    """The comma-separated names of ``text``, each one of ``known``; else the parser's usage error,
    which lists them (a misspelt name would print "-" in its column and look like a failure)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose among {', '.join(known)}")
    return names


_converted: dict = {}
"""id(model) -> (the OpenVINO conversion, how it was made), shared by the OpenVINO paths."""


def ov_converted(model, inputs):
    """(OpenVINO's conversion of ``model``, how): ``convert_model(model, example_input=inputs)``,
    or where that fails, what OpenVINO's documentation offers next, ``convert_model`` of the
    ``torch.export`` program (stock gpt2: "No conversion rule found for operations: aten::diff" on
    the module, 1e-6 off eager through the program); raises the first failure if both fail."""
    import openvino as ov

    key = id(model)
    if key not in _converted:
        _converted.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _converted[key] = ov.convert_model(model, example_input=tuple(inputs)), "module"
            except Exception as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
                first = next((line for line in lines if "No conversion rule" in line), lines[-1])[:200]
                try:
                    program = torch.export.export(model, tuple(inputs))
                    _converted[key] = (ov.convert_model(program),
                                       f"torch.export program (on the module: {first})")
                except Exception as second:
                    exc.add_note(f"converting the torch.export program failed too: {one_line(second)}")
                    _converted[key] = exc
    converted = _converted[key]
    if isinstance(converted, Exception):
        raise converted
    return converted


def _ov_compile(model, inputs, config: dict):
    import openvino as ov

    converted, how = ov_converted(model, inputs)
    compiled = ov.Core().compile_model(converted, "CPU", config)

    def run(*args):
        result = compiled([a.numpy() for a in args])
        return [result[o] for o in compiled.outputs]

    return run, {"openvino": ov.__version__, "config": config, "converted": how,
                 "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                 "hint": str(compiled.get_property("PERFORMANCE_HINT")),
                 "streams": int(compiled.get_property("NUM_STREAMS")),
                 "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}


def build_openvino(model, inputs, workdir: Path):
    """OpenVINO's default config: on a CPU with bf16 support (this one) it computes in bf16."""
    return _ov_compile(model, inputs, {})


def build_openvino_f32(model, inputs, workdir: Path):
    """The same conversion compiled in fp32, the precision hetcc's openvino:cpu uses by default."""
    return _ov_compile(model, inputs, {"INFERENCE_PRECISION_HINT": "f32"})


def build_iree(model, inputs, workdir: Path):
    import iree.runtime as rt
    from iree.turbine import aot

    info = {"flags": ["--iree-hal-target-backends=llvm-cpu", *IREE_FLAGS]}
    failed = None
    with captured_fd2() as lines, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exported = aot.export(model, args=tuple(inputs))
        except Exception as strict_exc:
            # aot.export exports strictly (dynamo) by default; hetcc and torch.export do not
            info["strict_export_failed"] = one_line(strict_exc)
            exported = aot.export(model, args=tuple(inputs), strict_export=False)
        exported.session.set_flags(*IREE_FLAGS)
        try:
            output = exported.compile(save_to=None, target_backends=("llvm-cpu",))
        except Exception as exc:
            failed = exc
    if failed is not None:  # the compiler's diagnostics are in the captured lines only now
        raise RuntimeError(f"iree-compile: {diagnostic(lines) or one_line(failed)}") from None
    module = rt.load_vm_flatbuffer(output.map_memory(), driver="local-task")
    entry = module.main

    def run(*args):
        return entry(*[a.numpy() for a in args])

    return run, info


def build_torch_compile(model, inputs, workdir: Path):
    return torch.compile(model), {"backend": "inductor"}


def build_eager(model, inputs, workdir: Path):
    return model, {}


BUILDERS = {"hetcc": build_hetcc, "onnxruntime": build_onnxruntime, "openvino": build_openvino,
            "openvino-f32": build_openvino_f32, "iree": build_iree, "torch.compile": build_torch_compile, "eager": build_eager}


def prepare(path: str, model, inputs, want, workdir: Path) -> PathResult:
    """Build one path, call it once (timed with the build) and compare it with eager."""
    result = PathResult(path)
    start = time.perf_counter()
    stage = "build"
    try:
        # the exporters print progress on stdout, which belongs to the table
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            fn, result.info = BUILDERS[path](model, inputs, workdir)
            stage = "run"
            got = fn(*inputs)
        result.compile_s = time.perf_counter() - start
        stage = "check"
        result.max_abs_err, mismatch = compare(got, want)
    except Exception as exc:  # any failure is a result, never the end of the run
        result.status, result.stage, result.reason = "fails", stage, one_line(exc)
        log.debug("%s failed at %s:\n%s", path, stage, traceback.format_exc())
        return result
    if mismatch:  # it runs, so it is measured, but it does not count as a native path
        result.status, result.stage, result.reason = "inexact", "check", mismatch
    else:
        result.status = "ok"
    result.fn = fn
    return result


# ---- one model ----------------------------------------------------------------------------------

def run_model(name: str, size: str, paths, rounds: int | None, budget: float | None, warmup: int,
              progress=print) -> dict:
    """Build, check and measure every path on one model; the model's results as a dict."""
    model, inputs = hf_models.build(name, size)
    with torch.no_grad():
        want = model(*inputs)
    results: dict[str, PathResult] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-native-{name}-") as tmp:
        for path in paths:
            workdir = Path(tmp) / path.replace(".", "_")
            workdir.mkdir()
            results[path] = r = prepare(path, model, inputs, want, workdir)
            progress(f"  {name} {path}: " + (f"fails at {r.stage}: {r.reason}" if r.status == "fails" else
                                               f"built in {r.compile_s:.1f} s, max abs err {r.max_abs_err:.1e}"
                                               + (" (inexact)" if r.status == "inexact" else "")))
        working = {p: r.fn for p, r in results.items() if r.fn is not None}
        started = time.perf_counter()
        if working:
            samples = measure(working, inputs, warmup=warmup, runs=rounds, budget=budget, calls=1,
                              min_runs=min(5, rounds or 5))
            for p, s in samples.items():
                results[p].calls = s.calls
        measured_s = time.perf_counter() - started
    row = summarize(name, size, inputs, results)
    row["measure_s"] = measured_s
    for r in results.values():  # the compiled programs hold memory and threads: free them now
        r.fn = None
    _converted.clear()
    del model, working
    torch._dynamo.reset()
    gc.collect()
    return row


def summarize(name: str, size: str, inputs, results: dict[str, PathResult]) -> dict:
    medians = {p: r.stats()["median_s"] for p, r in results.items() if r.calls}
    natives = {p: medians[p] for p in NATIVE if p in medians and results[p].status == "ok"}
    best = min(natives, key=natives.get) if natives else None
    row = {"model": name, "size": size, "inputs": [[list(t.shape), str(t.dtype)] for t in inputs],
           "paths": {p: r.to_dict() for p, r in results.items()}, "best_native": best,
           "ratio_best_native": None, "ratio_fast": None, "ratio_eager": None, "ratio_spread": None}
    if "hetcc" in medians and best:
        row["ratio_best_native"] = medians["hetcc"] / natives[best]
        # the fast end: a busy neighbour only ever adds time, so p10 over p10 is the steadier read
        row["ratio_fast"] = results["hetcc"].stats()["p10_s"] / results[best].stats()["p10_s"]
        # per round: hetcc's call over the best native's call in the same round
        paired = [a / b for a, b in zip(results["hetcc"].calls, results[best].calls) if b > 0]
        row["ratio_spread"] = [quantile(paired, 0.10), quantile(paired, 0.90)]
    if "hetcc" in medians and "eager" in medians:
        row["ratio_eager"] = medians["hetcc"] / medians["eager"]
    return row


def geomean(xs) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


# ---- report -------------------------------------------------------------------------------------

def render(rows: list[dict], paths) -> str:
    """The Markdown table, with failures as footnotes under it."""
    notes: list[str] = []

    def cell(row, p):
        r = row["paths"].get(p)
        if r is None:
            return "-"
        if r["status"] == "fails":
            notes.append(f"{row['model']} / {LABELS[p]}: fails at {r['stage']}: {r['reason']}")
            return f"fails [{len(notes)}]"
        s = r["stats"]
        if s is None:
            return "not measured"
        text = f"{s['median_s'] * 1e3:.2f} [{s['p10_s'] * 1e3:.2f}–{s['p90_s'] * 1e3:.2f}]"
        if r["status"] == "inexact":
            notes.append(f"{row['model']} / {LABELS[p]}: inexact, not counted as native: {r['reason']}"
                         + (f" (computes in {r['info']['precision']})" if r["info"].get("precision") else ""))
            text += f" ≠[{len(notes)}]"
        return text

    head = (["model"] + [f"{LABELS[p]} ms" for p in paths]
            + ["best native", "hetcc / best native [p10–p90 of rounds]", "p10 / p10", "hetcc / eager",
               "hetcc plan"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ratio = row["ratio_best_native"]
        spread = row["ratio_spread"]
        ratio_cell = "-" if ratio is None else (f"{ratio:.2f} [{spread[0]:.2f}–{spread[1]:.2f}]" if spread
                                                else f"{ratio:.2f}")
        eager = "-" if row["ratio_eager"] is None else f"{row['ratio_eager']:.3g}"
        plan = (row["paths"].get("hetcc") or {}).get("info", {}).get("plan", "-")
        fast = "-" if row["ratio_fast"] is None else f"{row['ratio_fast']:.2f}"
        cells = [row["model"]] + [cell(row, p) for p in paths] + [
            LABELS.get(row["best_native"], "-"), ratio_cell, fast, eager, plan]
        lines.append("| " + " | ".join(cells) + " |")
    g_native = geomean(r["ratio_best_native"] for r in rows)
    g_fast = geomean(r["ratio_fast"] for r in rows)
    g_eager = geomean(r["ratio_eager"] for r in rows)
    n_native = sum(1 for r in rows if r["ratio_best_native"])
    lines.append("")
    lines.append(f"Geometric mean over {n_native} model(s): hetcc / best native "
                 + ("-" if g_native is None else f"{g_native:.2f}")
                 + " (p10 / p10: " + ("-" if g_fast is None else f"{g_fast:.2f}") + ")"
                 + ", hetcc / eager " + ("-" if g_eager is None else f"{g_eager:.3g}") + ".")
    if notes:
        lines.append("")
        lines += [f"- [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def render_compile(rows: list[dict], paths) -> str:
    head = ["model"] + [f"{LABELS[p]} s" for p in paths if p != "eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"]]
        for p in paths:
            if p == "eager":
                continue
            r = row["paths"].get(p)
            cells.append("-" if not r or r["compile_s"] is None else f"{r['compile_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_plans(rows: list[dict]) -> str:
    out = []
    for row in rows:
        h = row["paths"].get("hetcc")
        if not h or h["status"] == "fails":
            continue
        info = h["info"]
        out.append(f"{row['model']}: {info['plan']} (targets used: {', '.join(info['targets_used'])}; "
                   f"{info['attempts']} attempt(s))")
        for why, count in info["fell_back"].items():
            out.append(f"  fell back ({count} node(s)): {why[:300]}")
        for note in info["notes"]:
            out.append(f"  note: {note[:300]}")
    return "\n".join(out)


def versions() -> dict:
    found = {"hetcc": hetcc.__version__, "torch": torch.__version__}
    for module, name in (("transformers", "transformers"), ("onnxruntime", "onnxruntime"),
                         ("openvino", "openvino"), ("onnxscript", "onnxscript"), ("onnx", "onnx")):
        try:
            found[name] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - informative only
            found[name] = f"unavailable ({type(exc).__name__})"
    import importlib.metadata as md

    for dist in ("iree-base-compiler", "iree-base-runtime", "iree-turbine"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(hf_models.MODELS),
                        help=f"comma-separated, from: {', '.join(hf_models.MODELS)}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from: {', '.join(PATHS)}")
    parser.add_argument("--rounds", type=int, default=25, help="rounds of one call per path (default 25)")
    parser.add_argument("--budget", type=float, help="seconds of measuring per model instead of --rounds "
                        "(at least 5 rounds)")
    parser.add_argument("--warmup", type=int, default=3, help="calls per path before measuring")
    parser.add_argument("--size", choices=hf_models.SIZES, default="bench")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny models, 3 rounds, 1 warm-up")
    parser.add_argument("--json", metavar="FILE", help="write every result (per-call seconds too) here")
    parser.add_argument("--max-ratio", type=float, metavar="R",
                        help="a gate: exit 3 when, for any model, hetcc's fast end (p10) is more than R "
                             "times the best native path's, or hetcc or every native path failed")
    parser.add_argument("--retries", type=int, default=2,
                        help="with --max-ratio: measure a failing model again up to this many times")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.size, args.rounds, args.warmup, args.budget = "tiny", 3, 1, None
    models, paths = chosen(parser, args.models, list(hf_models.MODELS)), chosen(parser, args.paths, PATHS, "paths")
    rounds = None if args.budget else args.rounds

    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # a fresh inductor cache, so torch.compile's build time does not depend on earlier runs
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-native-inductor-")

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    for name in models:
        progress(f"{name}:")
        rows.append(run_model(name, args.size, paths, rounds, args.budget, args.warmup, progress))
        r = rows[-1]
        if r["ratio_best_native"]:
            progress(f"  {name}: hetcc / best native ({r['best_native']}) = {r['ratio_best_native']:.2f}")
    doc = {
        "format": "hetcc-bench-native", "version": 1, "started": started,
        "machine": machine_info(), "versions": versions(),
        "settings": {"models": models, "paths": paths, "size": args.size, "rounds": rounds,
                     "budget_s": args.budget, "warmup": args.warmup, "calls_per_turn": 1,
                     "hetcc_targets": HETCC_TARGETS, "native": list(NATIVE), "iree_flags": list(IREE_FLAGS),
                     "rtol": RTOL, "atol": ATOL},
        "rows": rows,
        "geomean_ratio_best_native": geomean(r["ratio_best_native"] for r in rows),
        "geomean_ratio_fast": geomean(r["ratio_fast"] for r in rows),
        "geomean_ratio_eager": geomean(r["ratio_eager"] for r in rows),
    }
    m = doc["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; "
          + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
          + f". Size {args.size}; " + (f"{rounds} rounds" if rounds else f"{args.budget} s per model")
          + "; median per call in ms, p10–p90 in brackets.\n")
    print(render(rows, paths))
    print("\nBuild time (s; export/convert/compile and the first call):\n")
    print(render_compile(rows, paths))
    print("\nhetcc's plans:\n")
    print(render_plans(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if not args.max_ratio:
        return 0
    status = gate(rows, args.max_ratio)
    for attempt in range(args.retries):
        # a neighbour can slow one path for seconds: a real loss fails every attempt, noise seldom
        again = [r["model"] for r in rows if r["ratio_fast"] is None or r["ratio_fast"] > args.max_ratio]
        if not again:
            break
        progress(f"native gate: measuring {', '.join(again)} again (attempt {attempt + 2})")
        retried = {name: run_model(name, args.size, paths, rounds, args.budget, args.warmup, progress)
                   for name in again}
        rows = [retried.get(r["model"], r) for r in rows]
        status = gate(rows, args.max_ratio)
    return status


def gate(rows, max_ratio: float) -> int:
    """3 when a model's hetcc / best native (fast ends: a neighbour on a shared machine only adds
    time, so p10 is what the code itself costs) exceeds ``max_ratio``, or cannot be measured."""
    failed = []
    for r in rows:
        if r["ratio_fast"] is None:
            failed.append(f"{r['model']}: not measured (hetcc or every native path failed)")
        elif r["ratio_fast"] > max_ratio:
            failed.append(f"{r['model']}: hetcc p10 is {r['ratio_fast']:.2f}x {r['best_native']}'s "
                          f"(allowed {max_ratio:.2f}x)")
    for line in failed:
        print(f"native gate: FAIL {line}", file=sys.stderr)
    if not failed:
        print(f"native gate: pass (every model within {max_ratio:.2f}x the best native path)", file=sys.stderr)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
