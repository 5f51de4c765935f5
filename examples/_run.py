"""Shared by the example scripts: compile for the CPU runtimes here, print the plan, check outputs."""
import argparse
import logging

import torch

import hetcc

CPU_TARGETS = "openvino:cpu,onnxruntime:cpu,torch:cpu"


def run_example(build):
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default=CPU_TARGETS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model, inputs = build()
    compiled = hetcc.compile(model, inputs, targets=args.targets.split(","))
    print(compiled.plan.summary())
    with torch.no_grad():
        want = model(*inputs)
    got = compiled(*inputs)
    err = (got - want).abs().max().item()
    print(f"max abs difference from eager PyTorch: {err:.2e}")
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3), "outputs differ from eager PyTorch"
