"""Backend conformance: the same small cases on every target, one JSON report per (case, target).

Each case is compiled for one target alone (``hetcc.compile(model, inputs, targets=[target],
tune="off")``; torch:cpu is then only the fall-back), run, and compared with eager PyTorch under
hetcc.verify's per-dtype tolerances. A report says whether every segment ran on the target
("native") or some fell back (and why, from the plan), or whether compiling raised a hetcc error.
Two outcomes are failures: a result that differs from eager PyTorch ("wrong"), and an exception
that is not a clear hetcc error ("crash"). A third is a regression: on a pinned CPU target, a case
expected to run natively (one not in ``KNOWN_FALLBACKS``) that falls back or errors.
docs/conformance.md has more.

Op-level cases are defined here; model-level cases are the repository's examples/ (mlp, cnn,
encoder, gpt, mixed), found next to the package in a source checkout or in a folder you name.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hetcc.errors import HetccError, InternalError
from hetcc.names import dtype_name

log = logging.getLogger(__name__)

SCHEMA = 1
"""Version of the report format (docs/conformance.md); bumped when a field changes meaning."""

PINNED_TARGETS = ("torch:cpu", "onnxruntime:cpu", "openvino:cpu", "iree:cpu")
"""CPU targets whose coverage is pinned: every case runs natively there except KNOWN_FALLBACKS."""

# Measured on 2026-11-24 with torch 2.13.0, onnxruntime 1.32.0, openvino 2026.4.1 and IREE 3.13.0 (the versions
# in requirements/constraints.txt). A case missing here is expected to run natively; one that
# stops doing so is a regression. Remove an entry when a backend learns the case.
KNOWN_FALLBACKS: dict[str, dict[str, str]] = {
    "onnxruntime:cpu": {"bfloat16": "the backend refuses bfloat16 (no numpy hand-over, no CPU kernels)"},
    "openvino:cpu": {"bfloat16": "the backend refuses bfloat16 (no numpy hand-over)"},
    # iree-base-compiler/runtime 3.13.0
    "iree:cpu": {"bfloat16": "IREE 3.13 fails to compile bfloat16 weights (docs/iree.md)"},
}

GPU_DEVICES = ("cuda", "rocm")
"""Devices with several instances: conformance runs on index 0 of each."""

MODEL_CASES = ("mlp", "cnn", "encoder", "gpt", "mixed")
"""Examples in examples/ run as model-level cases, each with its own build() defaults."""


@dataclass(frozen=True)
class Built:
    """What a case builds: the model, its example inputs, and what else to check."""

    model: object
    inputs: tuple
    dynamic_shapes: object = None
    """Passed to compile; with it, ``more_inputs`` are checked at other sizes."""
    more_inputs: tuple = ()
    """Further input tuples the compiled model must also get right (other batch sizes)."""


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    """"op" (one op class, defined here) or "model" (an example from examples/)."""
    about: str
    build: Callable[[], Built] = field(repr=False)


# ---- op-level cases: one small module per op class that matters for inference ----

def _op_cases() -> list[Case]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape).to(dtype)

    class Fn(nn.Module):
        """A parameterless module around a function of the inputs."""

        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *xs):
            return self.fn(*xs)

    class RMSNorm(nn.Module):  # as in Llama: no mean subtraction, a learned scale
        def __init__(self, d, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(d) + 0.5)
            self.eps = eps

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class LinearSoftmax(nn.Module):  # dtype cases: a GEMM, an activation and a reduction
        def __init__(self, dtype):
            super().__init__()
            self.linear = nn.Linear(32, 16).to(dtype)

        def forward(self, x):
            return F.gelu(self.linear(x)).softmax(-1)

    def fn(f, *inputs):
        return Built(Fn(f).eval(), inputs)

    def module(m, *inputs):
        return Built(m.eval(), inputs)

    def dynamic_batch():
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
        batch = torch.export.Dim("batch", min=1, max=64)
        return Built(model, (rand(4, 16),), dynamic_shapes=({0: batch},),
                     more_inputs=((rand(1, 16),), (rand(7, 16),)))

    def case(name, about, make):
        def seeded():  # the same weights and inputs every time, whatever ran before
            torch.manual_seed(0)
            return make()
        return Case(name, "op", about, seeded)

    def qkv():
        return rand(2, 4, 16, 8), rand(2, 4, 16, 8), rand(2, 4, 16, 8)

    def causal(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def shape_ops(x, y):
        return torch.cat([x.permute(0, 2, 1).reshape(4, 48), y.transpose(0, 1)[:, 2:50]], 1)

    def index_ops(x, i, j):
        return torch.gather(x, 1, i), x.index_select(0, j), x.argmax(-1)

    ids = torch.tensor([[3, 0, 7, 99], [5, 5, 1, 42]])
    rows = torch.tensor([[0, 9], [1, 1], [2, 8], [3, 0], [4, 4], [5, 5]])
    f16, bf16 = torch.float16, torch.bfloat16
    return [
        case("linear", "nn.Linear with bias (addmm)", lambda: module(nn.Linear(64, 32), rand(8, 64))),
        case("matmul", "3-d @ 2-d matmul of two activations",
             lambda: fn(torch.matmul, rand(2, 8, 64), rand(64, 16))),
        case("bmm", "batched matmul", lambda: fn(torch.bmm, rand(4, 8, 16), rand(4, 16, 8))),
        case("conv2d", "3x3 convolution, padding 1, with bias",
             lambda: module(nn.Conv2d(3, 8, 3, padding=1), rand(2, 3, 16, 16))),
        case("softmax", "softmax over the last dim", lambda: fn(lambda x: x.softmax(-1), rand(4, 16, 32))),
        case("layer_norm", "nn.LayerNorm", lambda: module(nn.LayerNorm(32), rand(4, 16, 32))),
        case("rms_norm", "RMS norm written out (pow, mean, rsqrt, mul)",
             lambda: module(RMSNorm(32), rand(4, 16, 32))),
        case("gelu", "GELU (erf)", lambda: fn(F.gelu, rand(8, 64))),
        case("silu", "SiLU", lambda: fn(F.silu, rand(8, 64))),
        case("relu", "ReLU", lambda: fn(F.relu, rand(8, 64))),
        case("sdpa", "scaled_dot_product_attention", lambda: fn(F.scaled_dot_product_attention, *qkv())),
        case("sdpa_causal", "scaled_dot_product_attention, is_causal=True", lambda: fn(causal, *qkv())),
        case("embedding", "nn.Embedding on int64 ids", lambda: module(nn.Embedding(100, 16), ids)),
        case("broadcast", "add and mul with broadcasting",
             lambda: fn(lambda x, y, z: x + y * z, rand(4, 1, 8), rand(3, 1), rand(8))),
        case("reductions", "mean, sum and amax over different dims",
             lambda: fn(lambda x: (x.mean(-1), x.sum(0), x.amax(1)), rand(4, 6, 8))),
        case("shape_ops", "reshape, permute, transpose, cat and slice",
             lambda: fn(shape_ops, rand(4, 6, 8), rand(64, 4))),
        case("index_ops", "gather, index_select (int64 indices) and argmax (int64 output)",
             lambda: fn(index_ops, rand(6, 10), rows, torch.tensor([5, 0, 3]))),
        case("float16", "linear, GELU and softmax in float16",
             lambda: module(LinearSoftmax(f16), rand(8, 32, dtype=f16))),
        case("bfloat16", "linear, GELU and softmax in bfloat16",
             lambda: module(LinearSoftmax(bf16), rand(8, 32, dtype=bf16))),
        case("dynamic_batch", "MLP with a dynamic batch dim, checked at batch 4, 1 and 7", dynamic_batch),
    ]


# ---- model-level cases: the repository's examples ----

def examples_dir() -> Path | None:
    """examples/ beside the package in a source checkout (an installed wheel has none)."""
    here = Path(__file__).resolve().parents[2] / "examples"
    return here if (here / "mlp.py").is_file() else None


def _model_cases(directory: Path) -> list[Case]:
    def build(name):
        def load():
            from hetcc.model_files import load_model

            model, inputs, options = load_model(f"{directory / (name + '.py')}:build")
            return Built(model, inputs, dynamic_shapes=options.get("dynamic_shapes"))
        return load

    return [Case(name, "model", f"examples/{name}.py:build", build(name)) for name in MODEL_CASES]


def all_cases(examples: Path | str | None = None) -> list[Case]:
    """Op-level cases, then model-level ones when the examples folder is found (``examples`` or
    :func:`examples_dir`)."""
    directory = Path(examples) if examples else examples_dir()
    if examples and not (directory / "mlp.py").is_file():
        raise HetccError(f"{directory} holds no hetcc examples (mlp.py, cnn.py, ...); give the "
                         "examples/ folder of a hetcc source checkout")
    cases = _op_cases()
    if directory is None:
        log.warning("examples/ not found beside the package: model-level cases skipped; pass the "
                    "folder of a hetcc source checkout to run them")
    else:
        cases += _model_cases(directory)
    return cases


def select_cases(cases: list[Case], names) -> list[Case]:
    """The cases named (or of the kind named, "op" / "model"), in the order given."""
    if not names:
        return cases
    by_name = {c.name: c for c in cases}
    out = []
    for name in names:
        if name in ("op", "model"):
            out += [c for c in cases if c.kind == name and c not in out]
        elif name in by_name:
            out += [by_name[name]] if by_name[name] not in out else []
        else:
            raise HetccError(f"no conformance case {name!r}; cases: {', '.join(by_name)} "
                             "(or 'op' / 'model' for all of one kind)")
    return out


# ---- targets ----

def conformance_target(target: str) -> str:
    """A usable target as conformance runs it: GPUs get device index 0 (``torch:cuda:0``)."""
    from hetcc.target import Target

    t = Target.parse(target)
    if t.device in GPU_DEVICES and t.index is None:
        t = Target(t.backend, t.device, "0", t.precision)
    return str(t)


def conformance_targets() -> list[str]:
    """Every target usable on this machine (CPU and GPU), as conformance runs them."""
    from hetcc.backends.registry import usable_targets

    return [conformance_target(t) for t in usable_targets()]


def expected(case: str, target: str) -> str | None:
    """"native" or "fallback" for a pinned CPU target; None where coverage is not pinned."""
    if target not in PINNED_TARGETS:
        return None
    return "fallback" if case in KNOWN_FALLBACKS.get(target, {}) else "native"


# ---- running one case ----

def run_case(case: Case, target: str, workdir=None) -> dict:
    """Compile ``case`` for ``target`` alone, run it, compare with eager PyTorch; the report.
    Never raises for the case's own sake: what went wrong is in the report's status and error."""
    from hetcc.measure.bench import machine_info, versions
    from hetcc.target import Target

    report = {
        "schema": SCHEMA, "case": case.name, "kind": case.kind, "about": case.about, "target": target,
        "status": None, "native": None, "expected": expected(case.name, target), "regression": False,
        "segments": None, "targets_used": None, "fell_back": {}, "fallback_reasons": {}, "notes": [],
        "max_error": None, "tolerance": {}, "checked_inputs": [], "lower_seconds": None,
        "compile_seconds": None, "segment_details": [], "error": None,
        "versions": versions({Target.parse(target).backend, "torch"}), "machine": machine_info(),
    }
    stage, started = "build", time.perf_counter()
    try:
        built = _build(case)
        stage = "reference"
        all_inputs = (built.inputs, *built.more_inputs)
        report["checked_inputs"] = [[_describe(t) for t in inputs] for inputs in all_inputs]
        wanted = _eager(built.model, all_inputs)
        import hetcc

        stage, started = "compile", time.perf_counter()
        compiled = hetcc.compile(built.model, built.inputs, targets=[target], tune="off",
                                 dynamic_shapes=built.dynamic_shapes, workdir=workdir)
        report["compile_seconds"] = time.perf_counter() - started
        stage = "run"
        got = [compiled(*inputs) for inputs in all_inputs]
    except Exception as exc:  # noqa: BLE001 - every outcome becomes a report
        if stage == "compile":
            report["compile_seconds"] = time.perf_counter() - started
        # A clear hetcc error is an outcome, not a failure; an InternalError says it is a bug, and
        # anything else escaping hetcc is what this suite looks for.
        clear = isinstance(exc, HetccError) and not isinstance(exc, InternalError)
        report["status"] = "error" if clear else "crash"
        report["error"] = {"stage": stage, "type": type(exc).__name__, "message": str(exc)}
        if not clear:
            report["error"]["traceback"] = traceback.format_exc(limit=-8)
        return _judge(report)
    _record_plan(report, compiled.plan, target)
    worst, problem = 0.0, None
    for want, have in zip(wanted, got):
        error, what, tolerance = compare_outputs(have, want)
        worst = max(worst, error)
        report["tolerance"].update(tolerance)
        problem = problem or what
    report["max_error"] = worst
    if problem:
        report["status"] = "wrong"
        report["error"] = {"stage": "compare", "type": "WrongResult", "message": problem}
    else:
        report["status"] = "native" if report["native"] else "fallback"
    return _judge(report)


def _build(case: Case) -> Built:
    built = case.build()
    if not isinstance(built, Built):
        raise InternalError(f"conformance case {case.name} built {type(built).__name__}, not a Built")
    return built


def _eager(model, all_inputs) -> list:
    import torch

    with torch.no_grad():
        return [model(*inputs) for inputs in all_inputs]


def _record_plan(report: dict, plan, target: str) -> None:
    others = [s for s in plan.segments if s.target != target]
    fell_back = {node: why for s in others for node, why in s.fell_back.items()}
    reasons: dict[str, int] = {}
    for why in fell_back.values():
        reasons[why] = reasons.get(why, 0) + 1
    report.update(
        native=not others, segments=len(plan.segments), targets_used=plan.targets_used(),
        fell_back=fell_back, fallback_reasons=reasons, notes=list(plan.notes),
        lower_seconds=sum(s.lower_seconds or 0.0 for s in plan.segments),
        segment_details=[{"name": s.name, "target": s.target, "nodes": len(s.nodes), "ops": s.ops,
                          "max_error": s.max_error, "lower_seconds": s.lower_seconds}
                         for s in plan.segments])


def _judge(report: dict) -> dict:
    """Mark a regression: a case pinned as native that is not (fell back, or raised)."""
    report["regression"] = report["expected"] == "native" and report["status"] != "native"
    return report


def compare_outputs(got, want) -> tuple[float, str | None, dict]:
    """Max abs error of ``got`` against ``want`` (any pytree of tensors), what is wrong (None when
    every element is within hetcc.verify's tolerance for its dtype), and the tolerances used."""
    import torch
    import torch.utils._pytree as pytree

    from hetcc.verify import Tolerances, tensor_error

    tolerances = Tolerances()
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    if got_spec != want_spec:
        return float("inf"), f"output structure {got_spec} differs from eager's {want_spec}", {}
    worst, problem, used = 0.0, None, {}
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        if not isinstance(w, torch.Tensor):
            if g != w:
                problem = problem or f"output {i} is {g!r}, eager gives {w!r}"
            continue
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            problem = problem or f"output {i} is {_describe(g)}, eager gives {_describe(w)}"
            continue
        rtol, atol = tolerances.for_dtype(w.dtype)
        used[dtype_name(w.dtype)] = [rtol, atol]
        if w.numel() == 0:
            continue
        error, off = tensor_error(g, w, rtol, atol)  # the rule compile verifies by
        worst = max(worst, error)
        if off:
            problem = problem or (f"output {i} differs from eager PyTorch: max abs error {error:.3g} "
                                  f"(rtol {rtol}, atol {atol}; {off} of {w.numel()} elements off)")
    return worst, problem, used


def _describe(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"{dtype_name(value.dtype)}[{', '.join(map(str, value.shape))}]"
    return type(value).__name__


# ---- reports on disk, and the coverage table ----

FAILED = ("wrong", "crash")


def failed(report: dict) -> bool:
    """A wrong result, a crash that is not a clear hetcc error, or a pinned case that regressed."""
    return report["status"] in FAILED or bool(report.get("regression"))


def report_path(out_dir, case: str, target: str) -> Path:
    return Path(out_dir) / f"{case}--{target.replace(':', '-')}.json"


def write_report(report: dict, out_dir) -> Path:
    path = report_path(out_dir, report["case"], report["target"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_reports(out_dir) -> list[dict]:
    """Every conformance report in ``out_dir`` (other JSON files there are left alone)."""
    directory = Path(out_dir)
    if not directory.is_dir():
        raise HetccError(f"{directory} is not a directory of conformance reports")
    reports = []
    for path in sorted(directory.glob("*--*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HetccError(f"{path} is not a readable conformance report: {exc}") from exc
        if isinstance(data, dict) and data.get("schema") == SCHEMA and {"case", "target", "status"} <= set(data):
            reports.append(data)
    if not reports:
        raise HetccError(f"{directory} holds no conformance reports (files named CASE--TARGET.json); "
                         "write some with `hetcc conformance --out DIR`")
    return reports


def cell(report: dict) -> str:
    """One word for a (case, target) in the coverage table, with the fall-back count or error."""
    status = report["status"]
    if status == "fallback":
        text = f"fallback ({len(report['fell_back']) or len(report['notes'])})"
    elif status in ("error", "crash", "wrong"):
        text = status.upper() if status in FAILED else "error"
    else:
        text = "native"
    return text + (" REGRESSED" if report.get("regression") else "")


def coverage(reports: list[dict]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Targets (columns, sorted), (kind, case) rows in the suite's order (unknown cases last, by
    name), and (case, target) -> report; the same reports give the same table in any order."""
    order = {name: i for i, name in enumerate([c.name for c in _op_cases()] + list(MODEL_CASES))}
    targets = sorted({r["target"] for r in reports})
    rows = sorted({(r.get("kind", ""), r["case"]) for r in reports},
                  key=lambda row: (row[0] != "op", order.get(row[1], len(order)), row[1]))
    table = {(r["case"], r["target"]): r for r in reports}
    return targets, rows, table


def coverage_markdown(reports: list[dict]) -> str:
    """The coverage table in markdown: a row per case, a column per target, and native counts."""
    targets, rows, table = coverage(reports)
    lines = ["| case | " + " | ".join(f"`{t}`" for t in targets) + " |",
             "| --- | " + " | ".join("---" for _ in targets) + " |"]
    for kind, case in rows:
        cells = []
        for t in targets:
            r = table.get((case, t))
            cells.append("-" if r is None else cell(r) + (
                f" {r['max_error']:.1e}" if r.get("max_error") is not None else ""))
        lines.append(f"| {case} ({kind}) | " + " | ".join(cells) + " |")
    totals = []
    for t in targets:
        ran = [table[(c, t)] for _, c in rows if (c, t) in table]
        totals.append(f"{sum(r['status'] == 'native' for r in ran)}/{len(ran)} native")
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"
