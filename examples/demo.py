"""The main demo: compile every bundled example for the CPU runtimes available here, print each
plan, run it, and check the outputs against eager PyTorch. Run: bash scripts/demo.sh"""
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

PREFERRED = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]


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
    print("all outputs match eager PyTorch" if not failures else f"{failures} example(s) MISMATCH")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
