"""The main demo: compile every bundled example for the CPU runtimes available here, print each
plan, run it, and check the outputs against eager PyTorch; then a capacity-forced split saved as a
bundle, and a prediction for GPUs that are not here. Run: bash scripts/demo.sh"""
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnn  # noqa: E402
import encoder  # noqa: E402
import gpt  # noqa: E402
import mixed  # noqa: E402
import mlp  # noqa: E402

import hetcc  # noqa: E402
from hetcc.backends.registry import usable_targets  # noqa: E402

PREFERRED = ["openvino:cpu", "onnxruntime:cpu", "iree:cpu", "torch:cpu"]


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    here = usable_targets()
    targets = [t for t in PREFERRED if t in here]
    print(f"hetcc {hetcc.__version__}: targets usable here: {', '.join(here)}")
    print(f"compiling for: {', '.join(targets)}\n")
    failures = 0
    for name, module in [("mlp", mlp), ("cnn", cnn), ("encoder", encoder), ("gpt", gpt),
                         ("mixed", mixed)]:
        model, inputs = module.build()
        start = time.perf_counter()
        compiled = hetcc.compile(model, inputs, targets=targets, **getattr(module, "COMPILE_OPTIONS", {}))
        seconds = time.perf_counter() - start
        with torch.no_grad():
            want = model(*inputs)
        got = compiled(*inputs)
        err = (got - want).abs().max().item()
        ok = torch.allclose(got, want, rtol=1e-3, atol=1e-3)
        failures += not ok
        print(f"== {name}: compiled in {seconds:.1f}s, runs on {', '.join(compiled.plan.targets_used())}")
        print(compiled.plan.summary())
        print(f"max abs difference from eager PyTorch: {err:.2e} -> {'OK' if ok else 'MISMATCH'}\n")
    failures += capacity_split(targets)
    predict_elsewhere()
    print("all outputs match eager PyTorch" if not failures else f"{failures} example(s) MISMATCH")
    return 1 if failures else 0


def capacity_split(targets) -> int:
    """The embedding model again, with a 64 MB weight budget on every runtime but the last: its
    102 MB table cannot stay resident on them, so the plan must cut by capacity. Saved as a
    bundle, loaded back, and checked."""
    import tempfile

    if len(targets) < 2:
        return 0
    model, inputs = mixed.build()
    budget = {t: 64 * 2**20 for t in targets[:-1]}
    compiled = hetcc.compile(model, inputs, targets=targets, memory_limits=budget, tune="off")
    print(f"== mixed, at most 64 MB of weights on {' and '.join(budget)}: runs on "
          f"{', '.join(compiled.plan.targets_used())}")
    print(compiled.plan.summary())
    with tempfile.TemporaryDirectory() as tmp:
        compiled.save(f"{tmp}/mixed.bundle")
        loaded = hetcc.load(f"{tmp}/mixed.bundle")
        got = loaded(*inputs)
    with torch.no_grad():
        want = model(*inputs)
    ok = torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    print(f"saved as a bundle, loaded back: max abs difference {(got - want).abs().max().item():.2e} "
          f"-> {'OK' if ok else 'MISMATCH'}\n")
    return 0 if ok else 1


def predict_elsewhere() -> None:
    """The GPT example planned across an H100, an MI300X and an EPYC server CPU, none of which is
    here: a prediction from the cost model, nothing lowered (hetcc plan; docs/planning.md)."""
    model, inputs = gpt.build(batch=64)
    for objective in ("latency", "throughput"):
        forecast = hetcc.predict(model, inputs, ["h100", "mi300x", "epyc"], objective=objective)
        print(f"== gpt (batch 64) planned for {objective} on hardware that is not here")
        print(forecast.summary(), end="\n\n")


if __name__ == "__main__":
    sys.exit(main())
