"""Predicted against measured: the cost model's time per segment and end to end, against the clock.

For each model (the examples plus a few defined here so the points span compute-bound,
bandwidth-bound and overhead-bound work) and each CPU target usable here, the model is compiled for
that target alone (tune="off"), and a few forced split plans are compiled too; every plan is then
measured with hetcc.measure.bench's interleaved method (per segment through Runtime.timed_call, end
to end through the plain call) and compared with its predictions (hetcc.measure.accuracy says what a
prediction counts). Reported: per point the prediction, the fast end (p10) and median of the
measurements and the absolute percentage error (APE); per target, regime, op class and overall the
median APE and Spearman's rank correlation. docs/cost_model.md ("Predicted against measured") has
the figures. Not a test: run it by hand, on a quiet machine if you can.

    python benchmarks/bench_cost_model.py [--models mlp,tiny] [--runs 15] [--profile FILE | --defaults]
                                          [--json [FILE]]

The profile: --profile FILE (from `hetcc calibrate -o FILE`), else this machine's calibrated profile
in the cache dir, else one is measured first (as `hetcc calibrate` does) and written there.
--defaults uses the built-in profiles and the cached CPU spec instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import hetcc  # noqa: E402
from hetcc.measure import accuracy  # noqa: E402
from hetcc.errors import HetccError  # noqa: E402

err = Console(stderr=True, highlight=False)


# ---- models defined here, one per regime the examples cover thinly ----

class GemmStack(nn.Module):
    """Compute-bound: four 1024x1024 Linear layers on 256 rows (~2.1 GFLOP)."""

    def __init__(self, width=1024, depth=4):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))

    def forward(self, x):
        return self.layers(x)


class Depthwise(nn.Module):
    """Bandwidth-bound convolutions: MobileNet-style depthwise 3x3 + pointwise 1x1 blocks."""

    def __init__(self, channels=96, blocks=3):
        super().__init__()
        self.blocks = nn.Sequential(*(nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.ReLU6(),
            nn.Conv2d(channels, channels, 1), nn.ReLU6()) for _ in range(blocks)))

    def forward(self, x):
        return self.blocks(x)


class NormChain(nn.Module):
    """Bandwidth-bound elementwise and norm ops on 8 MiB activations."""

    def __init__(self, width=2048):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.rand(width) + 0.5)
        self.shift = nn.Parameter(torch.randn(width) * 0.1)

    def forward(self, x):
        y = nn.functional.gelu(self.norm1(x)) * self.scale + self.shift
        y = nn.functional.silu(y) + x
        return self.norm2(y).softmax(-1)


class LongAttention(nn.Module):
    """Attention-bound: one self-attention block over 1024 tokens (8 heads of 64)."""

    def __init__(self, d=512, heads=8):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=-1))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Tiny(nn.Module):
    """Overhead-bound: a few hundred FLOPs, so the calls are all there is to time."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.lin(x))


def _seeded(make, *shape):
    def build():
        torch.manual_seed(0)
        model = make().eval()
        return model, (torch.randn(*shape),)
    return build


def _decoder(phase: str):
    def build():
        from decoders import configs

        core = configs(layers=2)["gqa"].build()
        g = torch.Generator().manual_seed(0)
        if phase == "prefill":
            return core.prefill, (torch.randint(0, 1024, (1, 64), generator=g),)
        with torch.no_grad():
            _, cache = core.prefill(torch.randint(0, 1024, (1, 256), generator=g))
        return core.decode, (torch.randint(0, 1024, (1, 1), generator=g), cache)
    return build


def _example(name: str):
    def build():
        import importlib

        return importlib.import_module(name).build()
    return build


MODELS = {
    "mlp": _example("mlp"), "cnn": _example("cnn"), "encoder": _example("encoder"),
    "gpt": _example("gpt"), "mixed": _example("mixed"),
    "gqa-prefill": _decoder("prefill"), "gqa-decode": _decoder("decode"),
    "gemm-stack": _seeded(GemmStack, 256, 1024), "depthwise": _seeded(Depthwise, 4, 96, 56, 56),
    "norm-chain": _seeded(NormChain, 1024, 2048), "long-attention": _seeded(LongAttention, 1, 1024, 512),
    "tiny": _seeded(Tiny, 1, 8),
}

SPLITS = {
    # model -> [(label, targets, pins)]: plans forced to cross runtimes, for multi-segment points
    "mlp": [("split ort/torch", ["onnxruntime:cpu", "torch:cpu"],
             {"net.0": "torch:cpu", "net.6": "onnxruntime:cpu"})],
    "mixed": [("split ort/ov", ["onnxruntime:cpu", "openvino:cpu"],
               {"table": "onnxruntime:cpu", "mlp": "openvino:cpu"})],
    "encoder": [("split ort/torch", ["onnxruntime:cpu", "torch:cpu"],
                 {"layers.0": "onnxruntime:cpu", "layers.1": "torch:cpu"})],
    "gemm-stack": [("split 3 ways", ["onnxruntime:cpu", "openvino:cpu", "torch:cpu"],
                    {"layers.0": "torch:cpu", "layers.1": "onnxruntime:cpu", "layers.2": "openvino:cpu",
                     "layers.3": "torch:cpu"})],
    "cnn": [("split ov/torch", ["openvino:cpu", "torch:cpu"],
             {"features.0": "openvino:cpu", "features.3": "torch:cpu"})],
}


# ---- the profile ----

def load_profiles(path: str | None, defaults: bool, targets: list[str]):
    """(backend profiles, device per target, where they came from)."""
    from hetcc.cost_model.devices import this_cpu
    from hetcc.cost_model.profiles import calibrated, profile_for, profile_path, read_profile

    backends = {t.split(":")[0] for t in targets} | {"torch"}
    if defaults:
        device = this_cpu()
        return ({b: profile_for(b) for b in backends}, {t: device for t in targets},
                f"built-in defaults (cost_model/profiles.py), CPU spec {device.source}")
    if path:
        calibration, source = read_profile(path), "given with --profile"
    else:
        calibration = calibrated()  # $HETCC_PROFILE or this machine's cached profile
        source = "from $HETCC_PROFILE" if os.environ.get("HETCC_PROFILE") else "cached for this machine"
        if calibration is None:
            calibration, source = _calibrate_now(targets, profile_path()), "measured now"
    missing = sorted(b for b in backends if b not in calibration.backends)
    if missing:
        source += f"; not calibrated there, so built-in defaults: {', '.join(missing)}"
    return ({b: profile_for(b, None, calibration) for b in backends},
            {t: calibration.device for t in targets}, f"calibrated profile {calibration.path} ({source})")


def _calibrate_now(targets: list[str], path: Path):
    """What `hetcc calibrate` does: measure the CPU and each target, write the profile, read it back."""
    from hetcc.measure.calibrate import calibrate
    from hetcc.cost_model.profiles import read_profile

    err.print(f"no calibrated profile for this machine: measuring one (as `hetcc calibrate`) into {path}")
    with contextlib.redirect_stdout(sys.stderr):
        data = calibrate(targets, progress=lambda stage, detail: err.print(f"  calibrate: {stage}: {detail}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)
    return read_profile(path)


# ---- running ----

def plans_for(name: str, model, inputs, targets: list[str], profiles, devices, splits: bool,
              skipped: list) -> dict:
    """label -> CompiledModel: the model on each target alone, then its forced splits. A plan that
    runs nothing on its target (the backend rejected the model and torch:cpu took it all) would
    only repeat torch:cpu's points: it goes to ``skipped`` with the reason instead."""
    options = {"tune": "off", "profiles": profiles, "devices": devices}
    out = {}
    for t in targets:
        compiled = hetcc.compile(model, inputs, targets=[t], **options)
        if t in compiled.plan.targets_used():
            out[t] = compiled
        else:
            skipped.append({"model": name, "plan": t, "why": (compiled.plan.notes or ("nothing ran there",))[0]})
    for label, split_targets, pins in SPLITS.get(name, []) if splits else []:
        if all(t in targets for t in split_targets):
            compiled = hetcc.compile(model, inputs, targets=split_targets, pins=pins, **options)
            if len(compiled.plan.segments) > 1:
                out[label] = compiled
            else:
                skipped.append({"model": name, "plan": label, "why": "the pins gave one segment"})
    return out


def run(models: list[str], targets: list[str], profiles, devices, runs: int, splits: bool,
        skipped: list) -> list:
    points = []
    for name in models:
        started = time.perf_counter()
        model, inputs = MODELS[name]()
        with contextlib.redirect_stdout(sys.stderr):  # runtimes' chatter must not reach --json
            plans = plans_for(name, model, inputs, targets, profiles, devices, splits, skipped)
        compiled_at = time.perf_counter()
        found = accuracy.collect(name, plans, inputs, profiles, devices, runs=runs, seed=0)
        points.extend(found)
        whole = [p for p in found if p.kind == accuracy.END_TO_END]
        err.print(f"{name}: {len(plans)} plans, {len(found)} points; compile {compiled_at - started:.1f}s, "
                  f"measure {time.perf_counter() - compiled_at:.1f}s; end-to-end APE "
                  + ", ".join(f"{p.plan} {p.ape:.0%}" for p in whole))
    return points


def report(points, machine: dict, profile_source: str, args, seconds: float, quiet: dict,
           skipped: list) -> dict:
    from hetcc.measure.bench import versions

    def table(by):
        return {"fast end (p10)": accuracy.summaries(points, by),
                "median (p50)": accuracy.summaries(points, by, "measured_p50")}

    overall = {kind: {"fast end (p10)": accuracy.summarize(ps),
                      "median (p50)": accuracy.summarize(ps, "measured_p50")}
               for kind, ps in (("all", points),
                                *((k, [p for p in points if p.kind == k])
                                  for k in (accuracy.SEGMENT, accuracy.END_TO_END)))}
    whole = [p for p in points if p.kind == accuracy.END_TO_END]
    # where the solver's objective charges a plan more than its segments add up to (per-value call
    # overheads, passes/problem.py), and what hetcc's own work adds to the measured call
    surplus = [{"model": p.model, "plan": p.plan, "predicted": p.predicted,
                "segments_predicted": p.segments_predicted, "surplus_s": p.predicted - p.segments_predicted}
               for p in whole if p.predicted > 1.1 * p.segments_predicted]
    runtime = sorted(p.measured - p.segments_measured for p in whole)
    quiet["median_p50_over_p10"] = statistics.median(p.measured_p50 / p.measured for p in points) if points else None
    return {"machine": machine, "versions": versions({p.target.split(":")[0] for p in points
                                                      if p.target != "mixed"}),
            "profile": profile_source, "runs": args.runs, "seconds": round(seconds, 1), "quiet": quiet,
            "skipped": skipped, "objective_surplus": surplus,
            "hetcc_own_per_call_s": runtime[len(runtime) // 2] if runtime else None,
            "overall": overall, "by_target": table("target"), "by_regime": table("regime"),
            "by_op_class": table("op_class"), "points": [p.to_dict() for p in points]}


def render(doc: dict) -> None:
    out = Console(highlight=False, width=160 if not sys.stdout.isatty() else None)
    t = Table(title="predicted against measured, per point (APE against the fast end, p10)")
    for col in ("model", "plan", "segment", "target", "regime", "class", "pred ms", "p10 ms", "p50 ms", "APE"):
        t.add_column(col, justify="right" if col.endswith(("ms", "APE")) else "left")
    for p in doc["points"]:
        t.add_row(p["model"], p["plan"], p["segment"] or "(end to end)", p["target"], p["regime"], p["op_class"],
                  f"{p['predicted'] * 1e3:.3f}", f"{p['measured'] * 1e3:.3f}", f"{p['measured_p50'] * 1e3:.3f}",
                  f"{p['ape']:.0%}")
    out.print(t)
    s = Table(title="summary: median APE, Spearman rho, median predicted/measured, count")
    for col in ("group", "APE p10", "rho p10", "ratio p10", "APE p50", "rho p50", "n"):
        s.add_column(col, justify="left" if col == "group" else "right")
    rows = [(f"overall: {k}", v) for k, v in doc["overall"].items()]
    for by in ("by_target", "by_regime", "by_op_class"):
        rows += [(f"{by[3:]}: {k}", {"fast end (p10)": v, "median (p50)": doc[by]["median (p50)"][k]})
                 for k, v in doc[by]["fast end (p10)"].items()]
    for label, v in rows:
        fast, mid = v["fast end (p10)"], v["median (p50)"]
        s.add_row(label, f"{fast['median_ape']:.0%}", _rho(fast["spearman"]), f"{fast['median_ratio']:.2f}",
                  f"{mid['median_ape']:.0%}", _rho(mid["spearman"]), str(fast["count"]))
    out.print(s)
    for x in doc["objective_surplus"]:
        out.print(f"{x['model']} {x['plan']}: Plan.predicted_seconds {x['predicted'] * 1e3:.3f} ms is "
                  f"{x['surplus_s'] * 1e6:.0f} µs more than its segments' predictions add up to "
                  f"(the solver charges a call overhead per value entering a segment)", markup=False)
    for x in doc["skipped"]:
        out.print(f"skipped {x['model']} on {x['plan']}: {x['why'][:150]}", markup=False)
    q = doc["quiet"]
    out.print(f"profile: {doc['profile']}\nmachine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, "
              f"{doc['machine']['memory_gib']} GiB; {doc['runs']} rounds; took {doc['seconds']}s; load average "
              f"{q['load_before']:.2f} before, {q['load_after']:.2f} after; median p50/p10 "
              f"{q['median_p50_over_p10']:.2f}; hetcc's own work per call (median, end to end minus "
              f"segments) {doc['hetcc_own_per_call_s'] * 1e6:.0f} µs", markup=False)


def _rho(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def main(argv=None) -> int:
    from hetcc.backends.registry import usable_targets
    from hetcc.measure.bench import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--targets", help="comma-separated CPU targets (default: every usable CPU target here)")
    parser.add_argument("--runs", type=int, default=15, help="interleaved rounds per model (default 15)")
    parser.add_argument("--profile", metavar="FILE", help="a calibrated profile (`hetcc calibrate -o FILE`)")
    parser.add_argument("--defaults", action="store_true", help="use the built-in profiles, not a calibrated one")
    parser.add_argument("--no-splits", action="store_true", help="skip the forced split plans")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE, or to stdout instead of the tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    here = [t for t in usable_targets() if t.endswith(":cpu")]
    targets = args.targets.split(",") if args.targets else here
    if not set(targets) <= set(here):
        parser.error(f"not usable here: {', '.join(sorted(set(targets) - set(here)))}; usable: {', '.join(here)}")
    if args.profile and args.defaults:
        parser.error("--profile and --defaults exclude each other")
    if args.runs < 5:
        parser.error("--runs must be at least 5 (fewer give no usable percentiles)")
    started, quiet = time.perf_counter(), {"load_before": os.getloadavg()[0]}
    try:
        profiles, devices, source = load_profiles(args.profile, args.defaults, targets)
    except HetccError as exc:
        parser.error(str(exc))
    err.print(f"profile: {source}")
    skipped: list = []
    points = run(models, targets, profiles, devices, args.runs, not args.no_splits, skipped)
    quiet["load_after"] = os.getloadavg()[0]
    doc = report(points, machine_info(), source, args, time.perf_counter() - started, quiet, skipped)
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    if args.json == "-":
        print(json.dumps(doc, indent=1))
    else:
        render(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
