"""The GPU checks of benchmarks/gpu_check.py that compile models: the capacity-bound CPU+GPU plan,
the zero-copy cut between two runtimes on one GPU, and the TensorRT + torch:cuda mix.

Each returns a dict for the report with its figures and ``status`` ("pass"/"fail"); each compares
in one process, interleaved (hetcc.measure.bench.measure), never against a figure from another run."""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

TOKENS = (16, 256)
"""(batch, sequence) of the capacity model's input ids at scale 1."""


class CapacityModel(nn.Module):
    """An embedding table too big for the GPU budget, then layers that want the GPU: a recommender's
    or a language model's shape when its vocabulary table is large."""

    def __init__(self, vocab: int, dim: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
                                      for _ in range(layers)])

    def forward(self, ids):
        return self.layers(self.embed(ids))


def capacity_setup(scale: float):
    """(model, ids, GPU budget in bytes): a 2 GiB table at scale 1 and a budget of half of it."""
    small = scale < 0.1
    dim, hidden, layers = (256, 512, 2) if small else (1024, 4096, 4)
    vocab = max(1000, int(500_000 * scale))
    torch.manual_seed(0)
    with torch.no_grad():
        model = CapacityModel(vocab, dim, hidden, layers).eval()
    batch, seq = (2, 32) if small else TOKENS
    ids = torch.randint(0, vocab, (batch, seq))
    table = vocab * dim * 4
    layer_bytes = sum(p.numel() * p.element_size() for p in model.layers.parameters())
    budget = max(table // 2, int(layer_bytes * 1.5))
    return model, ids, budget, {"vocab": vocab, "dim": dim, "hidden": hidden, "layers": layers,
                                "tokens": batch * seq, "table_bytes": table, "layer_bytes": layer_bytes,
                                "gpu_budget_bytes": budget}


def median_ms(samples) -> dict:
    """A variant's per-call times in milliseconds (hetcc.measure.bench.stats: median, p10, p90)."""
    from hetcc.measure.bench import stats

    got = stats(samples.calls)
    return {"median_ms": round(got["median_s"] * 1e3, 3), "p10_ms": round(got["p10_s"] * 1e3, 3),
            "p90_ms": round(got["p90_s"] * 1e3, 3), "calls": got["n"]}


def capacity_check(scale: float, deadline: float, goal: float) -> dict:
    import torch.nn.functional as F

    import hetcc
    from hetcc.measure.bench import measure

    model, ids, budget, shape = capacity_setup(scale)
    result = {"model": shape}
    started = time.perf_counter()
    split = hetcc.compile(model, (ids,), ["torch:cuda:0", "openvino:cpu", "torch:cpu"], tune="off",
                          memory_limits={"torch:cuda:0": budget})
    result["split_plan"] = split.plan.summary()
    result["split_targets"] = split.plan.targets_used()
    result["split_predicted_ms"] = round(split.plan.predicted_seconds * 1e3, 3)
    all_cpu = hetcc.compile(model, (ids,), ["openvino:cpu", "torch:cpu"], tune="off")
    result["compile_seconds"] = round(time.perf_counter() - started, 1)

    layers_gpu = copy.deepcopy(model.layers).cuda()
    table = model.embed.weight.detach().pin_memory()  # the fastest a table can stream in

    def gpu_streaming(x):  # all-GPU under the budget: the table cannot stay, so it comes in each call
        with torch.no_grad():
            y = layers_gpu(F.embedding(x.cuda(), table.to("cuda", non_blocking=True))).cpu()
        return y

    whole_gpu = copy.deepcopy(model).cuda()

    def gpu_unbounded(x):  # for reference only: all-GPU if the budget were not there
        with torch.no_grad():
            return whole_gpu(x.cuda()).cpu()

    fns = {"hetcc cpu+gpu": split, "hetcc all-cpu (openvino)": all_cpu, "eager cpu": model,
           "eager gpu, table streamed": gpu_streaming, "eager gpu, no budget (reference)": gpu_unbounded}
    with torch.no_grad():
        want = model(ids)
    result["max_abs_error"] = {}
    for name, fn in fns.items():
        with torch.no_grad():
            got = fn(ids)
        result["max_abs_error"][name] = float((got - want).abs().max())
    with split.runtime.watch_copies() as copies:
        split(ids)
    result["split_copies_per_call"] = [{"to": loc, "shape": shape, "bytes": n} for loc, shape, n in copies]
    left = deadline - time.monotonic()
    samples = measure(fns, (ids,), budget=max(5.0, min(60.0, left * 0.6)), warmup=2)
    result["timings"] = {name: median_ms(s) for name, s in samples.items()}
    med = {name: t["median_ms"] for name, t in result["timings"].items()}
    best_cpu = min(med["hetcc all-cpu (openvino)"], med["eager cpu"])
    best_other = min(best_cpu, med["eager gpu, table streamed"])
    result["speedup_over_best_single_device"] = round(best_other / med["hetcc cpu+gpu"], 2)
    result["goal"] = goal
    correct = all(err < 1e-2 for err in result["max_abs_error"].values())
    split_ok = "torch:cuda:0" in result["split_targets"] and len(result["split_targets"]) > 1
    result["status"] = "pass" if correct and split_ok and result["speedup_over_best_single_device"] >= goal else "fail"
    if not split_ok:
        result["reason"] = f"the plan is not split across CPU and GPU: {result['split_targets']}"
    elif not correct:
        result["reason"] = f"a path differs from eager: {result['max_abs_error']}"
    return result


def _two_part_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(),
                          nn.Linear(1024, 256)).eval()
    return model, (torch.randn(64, 256),)


def handover_check(other: str) -> dict:
    """torch:cuda and ``other`` (a second runtime on GPU 0) each take half a model; called with
    a CUDA input and outputs kept on the GPU, the run must make no copy at all."""
    import hetcc

    model, (x,) = _two_part_model()
    cm = hetcc.compile(model, (x,), [other, "torch:cuda", "torch:cpu"], tune="off",
                       pins={"0": "torch:cuda", "1": "torch:cuda", "3": other, "4": other},
                       output_device="keep")
    used = cm.plan.targets_used()
    with cm.runtime.watch_copies() as copies:
        got = cm(x.cuda())
    err = float((got.cpu() - model(x).detach()).abs().max())
    ok = set(used) >= {other, "torch:cuda"} and not copies and got.is_cuda and err < 1e-3
    return {"status": "pass" if ok else "fail", "targets": used, "copies": copies, "max_abs_error": err,
            "output_device": str(got.device), "plan": cm.plan.summary()}


def trt_mix_check() -> dict:
    """TensorRT takes the layers; a float64 step TensorRT has no type for goes to torch:cuda."""
    import hetcc
    from hetcc.measure.bench import measure

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(256, 1024)
            self.b = nn.Linear(1024, 256)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h.double().cumsum(-1).float() / 1024  # float64: TensorRT refuses, torch:cuda takes it
            return self.b(h)

    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(64, 256)
    mixed = hetcc.compile(model, (x,), ["tensorrt:cuda", "torch:cuda", "torch:cpu"], tune="off")
    alone = hetcc.compile(model, (x,), ["torch:cuda", "torch:cpu"], tune="off")
    used = mixed.plan.targets_used()
    with mixed.runtime.watch_copies() as copies, torch.no_grad():
        err = float((mixed(x) - model(x)).abs().max())
    samples = measure({"tensorrt+torch:cuda": mixed, "torch:cuda alone": alone}, (x,), budget=10, warmup=2)
    ok = set(used) >= {"tensorrt:cuda", "torch:cuda"} and err < 1e-3
    return {"status": "pass" if ok else "fail", "targets": used, "max_abs_error": err,
            "copies_per_call": [{"to": loc, "shape": shape, "bytes": n} for loc, shape, n in copies],
            "timings": {name: median_ms(s) for name, s in samples.items()}, "plan": mixed.plan.summary()}
