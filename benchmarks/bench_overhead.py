"""hetcc's own cost per call, and per hand-over between runtimes (issue 10 item 4).

For each CPU runtime, a model small enough that the runtime's work is a few microseconds is
compiled onto it alone and called three ways, interleaved in the same rounds:

- *native*: the runtime's own API at its fastest from Python (ONNX Runtime ``session.run`` on numpy
  arrays; an OpenVINO infer request reused, its input tensors set on the arrays' memory and its
  outputs copied out; torch's exported module); OpenVINO's documented ``request.infer(arrays)``
  is shown beside it;
- *segment*: hetcc's executable for the one segment (tensor -> runtime -> tensor);
- *hetcc*: the compiled model, ``cm(x)``: input checks, the segment, the outputs.

hetcc's own cost is hetcc - native. A second model is cut in two (its first layer pinned to ONNX
Runtime, the rest to OpenVINO) and compared with the same two native calls chained by hand: the
difference is the hand-over of one tensor plus hetcc's own cost.

    python benchmarks/bench_overhead.py [--rounds 30] [--calls 2000] [--json overhead.json]

Per-call times are medians over rounds of the mean of ``--calls`` calls, with the p10-p90 spread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hetcc  # noqa: E402
from hetcc.measure.bench import machine_info  # noqa: E402


class Small(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.first = nn.Linear(width, width)
        self.second = nn.Linear(width, width)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def _native(step):
    """The runtime's own call for one compiled segment, on numpy (or torch for torch), or None."""
    run = step.run
    if step.target == "onnxruntime:cpu":
        names = [n for n in run.input_names if n is not None]
        return "numpy", lambda arrays: run.session.run(run.output_names, dict(zip(names, arrays)))
    if step.target == "openvino:cpu":
        # the request's own calls, the fastest way to call OpenVINO from Python: small inputs
        # copied into the request's buffers, large ones set as shared tensors; its documented
        # request.infer(arrays) costs ~30 us more (shown as "infer()" in the table)
        import numpy as np
        import openvino as ov

        from hetcc.backends.openvino_backend import COPY_IN_BYTES

        request = run.compiled.create_infer_request()
        n_out = len(run.compiled.outputs)
        buffers = [request.get_input_tensor(i).data for i in range(len(run.compiled.inputs))]

        def call(arrays):
            for i, a in enumerate(arrays):
                if a.nbytes <= COPY_IN_BYTES:
                    np.copyto(buffers[i], a)
                else:
                    request.set_input_tensor(i, ov.Tensor(a, shared_memory=True))
            request.infer()
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]
        return "numpy", call
    if step.target == "torch:cpu":
        module = run.module

        def call(tensors):
            with torch.no_grad():
                return module(*tensors)
        return "torch", call
    return None


def _timer(fn, args, calls: int):
    def once():
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        return (time.perf_counter() - start) / calls
    return once


def measure(variants: dict, rounds: int) -> dict:
    """Interleaved: each round times every variant once, in a rotating order."""
    samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(variants[name]())
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {"median_us": statistics.median(values) * 1e6,
                     "p10_us": values[len(values) // 10] * 1e6, "p90_us": values[(9 * len(values)) // 10] * 1e6}
    return out


def single_runtime_rows(rounds: int, calls: int) -> list[dict]:
    torch.manual_seed(0)
    model, x = Small().eval(), torch.randn(1, 16)
    rows = []
    for target in ("onnxruntime:cpu", "openvino:cpu", "torch:cpu"):
        cm = hetcc.compile(model, (x,), targets=[target], tune="off")
        if cm.plan.targets_used() != [target] or len(cm.runtime.steps) != 1:
            rows.append({"target": target, "skipped": f"plan is {cm.plan.targets_used()}"})
            continue
        step = cm.runtime.steps[0]
        kind, native = _native(step)
        arg = [x.numpy()] if kind == "numpy" else [x]
        variants = {"native": _timer(native, (arg,), calls), "segment": _timer(step.run, (x,), calls),
                    "hetcc": _timer(cm, (x,), calls)}
        if target == "openvino:cpu":
            request = step.run.compiled.create_infer_request()
            variants["infer()"] = _timer(lambda a: request.infer(a, share_inputs=True), (arg,), calls)
        got = measure(variants, rounds)
        rows.append({"target": target, **{k: v for k, v in got.items()},
                     "hetcc_own_us": got["hetcc"]["median_us"] - got["native"]["median_us"]})
    return rows


def handover_row(rounds: int, calls: int) -> dict:
    torch.manual_seed(0)
    model, x = Small(64).eval(), torch.randn(8, 64)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "openvino:cpu"], tune="off",
                       pins={"first": "onnxruntime:cpu", "second": "openvino:cpu"})
    steps = cm.runtime.steps
    if [s.target for s in steps] != ["onnxruntime:cpu", "openvino:cpu"]:
        return {"skipped": f"plan is {[s.target for s in steps]}"}
    (_, first), (_, second) = _native(steps[0]), _native(steps[1])
    crossing = len(steps[0].outputs)

    def chained(arrays):
        return second(list(first(arrays)))

    got = measure({"native chain": _timer(chained, ([x.numpy()],), calls), "hetcc": _timer(cm, (x,), calls)},
                  rounds)
    extra = got["hetcc"]["median_us"] - got["native chain"]["median_us"]
    return {"plan": "onnxruntime:cpu -> openvino:cpu", "tensors_handed_over": crossing, **got,
            "hetcc_extra_us": extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    rows = single_runtime_rows(args.rounds, args.calls)
    handover = handover_row(args.rounds, max(1, args.calls // 4))
    print(f"{'target':<17}{'native us':>11}{'segment us':>12}{'hetcc us':>10}{'hetcc own us':>14}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['target']:<17} skipped: {row['skipped']}")
            continue
        print(f"{row['target']:<17}{row['native']['median_us']:>11.1f}{row['segment']['median_us']:>12.1f}"
              f"{row['hetcc']['median_us']:>10.1f}{row['hetcc_own_us']:>14.1f}"
              + (f"   (OpenVINO's request.infer(): {row['infer()']['median_us']:.1f} us)" if "infer()" in row else ""))
    if "skipped" in handover:
        print(f"hand-over: skipped: {handover['skipped']}")
    else:
        print(f"hand-over {handover['plan']}: native chain {handover['native chain']['median_us']:.1f} us, "
              f"hetcc {handover['hetcc']['median_us']:.1f} us, extra {handover['hetcc_extra_us']:.1f} us "
              f"for {handover['tensors_handed_over']} tensor(s) and hetcc's own cost")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "rounds": args.rounds,
                                               "calls": args.calls, "runtimes": rows, "handover": handover},
                                              indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
