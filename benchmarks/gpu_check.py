"""Everything hetcc does on a GPU, checked in one run that fits a short GPU lease (~8 minutes).

Parts, in this order, each with its share of the time budget; a part that cannot run here is
skipped with the reason, and a part the budget no longer covers is skipped as "out of time":

  environment  GPU, driver-side versions, every target and why it is or is not usable here
  tests        pytest -m gpu (tests marked ``gpu``: compile, verify, threads, bundles, copies)
  conformance  hetcc conformance on every usable GPU target: zero wrong results to pass
  capacity     a model whose embedding table exceeds a GPU memory budget: hetcc's CPU+GPU plan
               (the table on a CPU runtime, the layers on torch:cuda) against all-CPU (the better
               of OpenVINO through hetcc and eager torch) and all-GPU under the same budget (eager
               torch streaming the table from pinned host memory each call); passes at >= 1.5x the
               better of the two. All-GPU without the budget is reported beside it, not counted.
  handover     two runtimes on one GPU (torch:cuda and onnxruntime:cuda or tensorrt:cuda): the
               cut between them makes no host copy (the runtime's copies are counted)
  trt_mix      a TensorRT + torch:cuda plan, compiled, verified and timed

Writes one JSON report (``--out``, refused if it exists unless ``--overwrite``). Exit status: 0
when nothing failed (skips are not failures), 1 when a part failed, 2 for bad arguments.

    python benchmarks/gpu_check.py --out gpu_check.json [--budget 480] [--parts capacity,tests]
    bash scripts/gpu_check.sh            # installs what it needs, then runs this

Figures from a run are in docs/gpu_backends.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("environment", "handover", "trt_mix", "capacity", "tests", "conformance")
SHARE = {"tests": 0.25, "conformance": 0.30, "capacity": 0.30, "handover": 0.05, "trt_mix": 0.10}
"""Share of the budget each part may use at most (what one part leaves, the next may take)."""
SCHEMA = "hetcc-gpu-check/1"
SPEEDUP_GOAL = 1.5
EXIT_FAILED, EXIT_USAGE = 1, 2
MIN_LEFT = 5.0
"""Seconds a command needs left in the budget to be started at all."""


class Skip(Exception):
    """A part that cannot run here; its message is the reason."""


def gpu_targets() -> dict[str, str]:
    """Every GPU target hetcc knows -> "" when usable here, else why not."""
    from hetcc.backends.registry import get_backend, installed
    from hetcc.target import Target

    out = {}
    for name in sorted(installed()):
        try:
            backend = get_backend(name)
        except Exception as exc:  # a broken plugin is reported, not fatal
            out[f"{name}:?"] = f"backend failed to import: {exc}"
            continue
        for device in backend.devices:
            if device == "cpu":
                continue
            target = Target(name, device)  # a GPU as device 0; iree's GPU targets as "any"
            out[str(target)] = "" if backend.is_available(target) else backend.why_unavailable(target)
    return out


def environment(args, deadline) -> dict:
    import torch

    import hetcc

    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "hetcc": hetcc.__version__, "gpu": None, "targets": gpu_targets()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts["gpu"] = {"name": props.name, "memory_bytes": int(props.total_memory),
                        "compute_capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    for module in ("onnxruntime", "openvino", "tensorrt", "onnx"):
        try:
            facts[module] = __import__(module).__version__
        except Exception as exc:
            facts[module] = f"absent ({type(exc).__name__})"
    try:
        import onnxruntime

        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        pass
    return facts


def usable() -> list[str]:
    return [t for t, why in gpu_targets().items() if not why]


def need_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        from hetcc.gpus import cuda_problem
        from hetcc.target import Target

        raise Skip(f"no GPU: {cuda_problem(Target.parse('torch:cuda:0'))}")


def run_tests(args, deadline) -> dict:
    need_gpu()
    try:
        import pytest  # noqa: F401
    except ImportError as exc:
        raise Skip(f"pytest is not installed here ({exc}): pip install pytest") from exc
    xml = Path(args.scratch) / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={xml}", "tests/test_gpu_backends.py", "tests/test_handover.py"]
    proc = _run(command, deadline)
    counts, failures, skips = _junit(xml)
    result = {"command": " ".join(command[2:]), **counts, "failures": failures, "skipped": skips,
              "output_tail": proc.stdout[-3000:]}
    result["status"] = "pass" if proc.returncode == 0 and counts.get("passed", 0) else "fail"
    return result


def run_conformance(args, deadline) -> dict:
    from hetcc.measure.conformance import failed, read_reports

    need_gpu()
    targets = usable()
    if not targets:
        raise Skip("no GPU target is usable here: " + "; ".join(f"{t}: {w}" for t, w in gpu_targets().items()))
    per_target, wrong, unfinished = {}, 0, []
    for target in targets:
        out = Path(args.scratch) / f"conformance-{target.replace(':', '_')}"
        command = [sys.executable, "-m", "hetcc", "conformance", "--targets", target, "--json", "--out", str(out)]
        try:
            proc = _run(command, deadline)
            reports = json.loads(proc.stdout)["reports"]
        except Skip as exc:  # out of time: keep what the cases that finished wrote
            proc = subprocess.CompletedProcess(command, None, "", str(exc))
            reports = read_reports(out) if out.is_dir() else []
            unfinished.append(f"{target}: {exc}; {len(reports)} case(s) finished")
        except (ValueError, KeyError):
            per_target[target] = {"error": (proc.stderr or proc.stdout)[-2000:], "exit": proc.returncode}
            wrong += 1
            continue
        statuses: dict[str, int] = {}
        for r in reports:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        bad = [r for r in reports if failed(r)]
        wrong += len(bad)
        per_target[target] = {"exit": proc.returncode, "cases": len(reports), "statuses": statuses,
                              "failed": [{"case": r["case"], "status": r["status"], "error": r.get("error")}
                                         for r in bad],
                              "fell_back": {r["case"]: r.get("fallback_reasons") for r in reports
                                            if r.get("fell_back")}}
    result = {"status": "pass" if wrong == 0 else "fail", "targets": per_target, "wrong": wrong}
    if unfinished and not wrong:  # none wrong so far, but not every case ran: not a pass
        result.update(status="skip", reason="; ".join(unfinished))
    return result


def run_capacity(args, deadline) -> dict:
    need_gpu()
    from capacity_model import capacity_check  # benchmarks/capacity_model.py

    if "openvino:cpu" not in _cpu_targets():
        raise Skip("openvino:cpu is not usable here (pip install openvino): the CPU+GPU plan pairs it with torch:cuda")
    return capacity_check(args.scale, deadline, SPEEDUP_GOAL)


def run_handover(args, deadline) -> dict:
    need_gpu()
    here = usable()
    others = [t for t in here if t.split(":")[0] in ("onnxruntime", "tensorrt")]
    if "torch:cuda" not in here or not others:
        raise Skip("needs torch:cuda and a second runtime on the same GPU (onnxruntime:cuda with "
                   "onnxruntime-gpu, or tensorrt:cuda with TensorRT); usable GPU targets here: "
                   + (", ".join(here) or "none"))
    from capacity_model import handover_check

    return handover_check(others[0])


def run_trt_mix(args, deadline) -> dict:
    need_gpu()
    why = gpu_targets().get("tensorrt:cuda", "no tensorrt backend is installed")
    if why:
        raise Skip(f"tensorrt:cuda is not usable here: {why}")
    from capacity_model import trt_mix_check

    return trt_mix_check()


RUNNERS = {"environment": environment, "tests": run_tests, "conformance": run_conformance,
           "capacity": run_capacity, "handover": run_handover, "trt_mix": run_trt_mix}


def _cpu_targets() -> list[str]:
    from hetcc.backends.registry import usable_targets

    return usable_targets()


def _run(command, deadline) -> subprocess.CompletedProcess:
    left = deadline - time.monotonic()
    if left <= MIN_LEFT:
        raise Skip("out of time")
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired as exc:
        raise Skip(f"out of time after {left:.0f} s: {' '.join(map(str, command[2:]))}") from exc


def _junit(path: Path):
    """(counts, failures, skip reasons) from a pytest junit file; empty when it is missing."""
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {}, [], []
    cases = ET.parse(path).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, skips = [], []
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failed is not None:
            counts["failed"] += 1
            failures.append({"test": name, "message": (failed.get("message") or "")[:1000]})
        elif skipped is not None:
            counts["skipped"] += 1
            skips.append({"test": name, "reason": (skipped.get("message") or "")[:300]})
        else:
            counts["passed"] += 1
    return counts, failures, skips


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON report to write (refused if it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--scale", type=float, default=1.0,
                   help="size of the capacity model (1: a 2 GiB table; 0.01 for a quick look)")
    p.add_argument("--scratch", default=None, help="folder for the test run's files (default: a temp dir)")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        p.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")
    if not args.budget > 0 or not args.scale > 0:
        p.error("--budget and --scale must be positive numbers")
    if Path(args.out).exists() and not args.overwrite:
        p.error(f"{args.out} exists; pass --overwrite to replace it, or choose another --out")
    args.parts = parts
    return args


def main(argv=None) -> int:
    import tempfile

    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args.scratch = args.scratch or tempfile.mkdtemp(prefix="hetcc-gpu-check-")
    started = time.monotonic()
    end = started + args.budget
    report = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "budget_seconds": args.budget, "parts": {}}
    for part in args.parts:
        begun = time.monotonic()
        share = end if part == "environment" else min(end, begun + SHARE[part] * args.budget * 1.5)
        try:
            result = RUNNERS[part](args, share)
            result.setdefault("status", "info" if part == "environment" else "pass")
        except Skip as exc:
            result = {"status": "skip", "reason": str(exc)}
        except Exception as exc:  # a part's crash is its failure; the run goes on
            import traceback

            result = {"status": "fail", "reason": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = round(time.monotonic() - begun, 1)
        report["parts"][part] = result
        print(f"{part:12s} {result['status']:5s} {result['seconds']:6.1f}s  {result.get('reason', '')[:150]}",
              file=sys.stderr, flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["failed"] = [p for p, r in report["parts"].items() if r["status"] == "fail"]
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return EXIT_FAILED if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
