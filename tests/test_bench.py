"""`hetcc bench` and its regression gate: the comparison logic on made-up results, a real slowdown
injected into a backend and caught by the gate in-process, and the CLI's JSON, exit codes and
bundle mode on a tiny model."""
import copy
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend
from hetcc.backends.registry import register_backend
from hetcc.cli import main
from hetcc.cost_model.profiles import DEFAULT_PROFILES
from hetcc.measure import bench, bench_gate
from hetcc.measure.bench_run import prepare_model
from hetcc.timing import cores

MACHINE = "x86_64-2cpu"


def results(ratios: dict, machine_class=MACHINE, model="m.py:build", reference_ms=2.0, targets=None):
    """A results document as bench_run writes it, with the given {variant: ratio_fast}."""
    rows = [{"variant": "eager", "label": "torch eager", "batch": 8, "reference": True, "targets": [],
             "ratio": 1.0, "ratio_fast": 1.0, "reference_median_s": reference_ms / 1e3,
             "latency": {"median_s": reference_ms / 1e3}}]
    for variant, ratio in ratios.items():
        rows.append({"variant": variant, "label": variant, "batch": 8, "reference": False,
                     "targets": targets or [variant], "ratio": ratio, "ratio_fast": ratio,
                     "reference_median_s": reference_ms / 1e3,
                     "latency": {"median_s": ratio * reference_ms / 1e3}})
    return {"model": model, "reference": "eager", "results": rows, "versions": {},
            "machine": {"machine_class": machine_class, "cpu": "test CPU"}}


def baseline_of(*runs):
    base = bench_gate.empty()
    for run in runs:
        base = bench_gate.merge(base, run)
    return base


def statuses(gate):
    return {r["variant"]: r["status"] for r in gate["rows"]}


# ---- the comparison ----

def test_unchanged_ratios_pass_and_a_grown_ratio_fails_naming_variant_and_factor():
    base = baseline_of(results({"plan": 0.6, "openvino:cpu": 0.7}))
    assert not bench_gate.compare(results({"plan": 0.61, "openvino:cpu": 0.69}), base, 1.25)["failed"]
    gate = bench_gate.compare(results({"plan": 0.6, "openvino:cpu": 1.4}), base, 1.25)
    assert gate["failed"] and statuses(gate) == {"plan": "ok", "openvino:cpu": "regressed"}
    (bad,) = [r for r in gate["rows"] if r["status"] == "regressed"]
    assert "openvino:cpu" in bad["message"] and "2.00x slower" in bad["message"]
    assert "openvino:cpu 2.00x" in bench_gate.verdict(gate)


def test_threshold_edge_exactly_the_factor_passes():
    base = baseline_of(results({"plan": 0.5}))
    assert not bench_gate.compare(results({"plan": 0.625}), base, 1.25)["failed"]  # 1.25x exactly
    assert bench_gate.compare(results({"plan": 0.62501}), base, 1.25)["failed"]
    with pytest.raises(bench_gate.BaselineError, match=">= 1"):
        bench_gate.compare(results({"plan": 0.5}), base, 0.9)


def test_missing_entries_are_reported_not_failed():
    base = baseline_of(results({"plan": 0.6}))
    gate = bench_gate.compare(results({"plan": 0.6, "torch:cpu": 9.0}), base, 1.25)
    assert not gate["failed"] and statuses(gate) == {"plan": "ok", "torch:cpu": "missing"}
    other_model = bench_gate.compare(results({"plan": 9.0}, model="other.py:build"), base, 1.25)
    assert not other_model["failed"] and statuses(other_model) == {"plan": "missing"}


def test_a_baseline_for_another_machine_class_does_not_fail():
    base = baseline_of(results({"plan": 0.1}, machine_class="aarch64-8cpu"))
    gate = bench_gate.compare(results({"plan": 0.9}), base, 1.25)
    assert not gate["failed"]
    assert statuses(gate) == {"plan": "no baseline for this machine class"}
    assert "no baseline for this machine class (x86_64-2cpu)" in gate["notes"][0]
    assert "aarch64-8cpu" in gate["notes"][0]


def test_other_targets_are_not_comparable_and_a_big_gain_is_reported():
    base = baseline_of(results({"plan": 0.6}, targets=["openvino:cpu", "torch:cpu"]))
    gate = bench_gate.compare(results({"plan": 2.0}, targets=["onnxruntime:cpu"]), base, 1.25)
    assert not gate["failed"] and statuses(gate) == {"plan": "not comparable"}
    base = baseline_of(results({"plan": 0.6}))
    gate = bench_gate.compare(results({"plan": 0.3}), base, 1.25)
    assert statuses(gate) == {"plan": "faster"} and "--update-baseline" in gate["rows"][0]["message"]


def test_merge_replaces_same_key_keeps_others_and_file_round_trips(tmp_path):
    base = baseline_of(results({"plan": 0.6}), results({"plan": 0.2}, machine_class="aarch64-8cpu"))
    base = bench_gate.merge(base, results({"plan": 0.7}))
    by_class = {e["machine_class"]: e["ratio_fast"] for e in base["entries"]}
    assert by_class == {MACHINE: 0.7, "aarch64-8cpu": 0.2}
    path = tmp_path / "baseline.json"
    bench_gate.save(path, base)
    assert bench_gate.load(path) == base
    for bad, match in (({"format": "x"}, "not a hetcc bench baseline"),
                       ({"format": bench_gate.FORMAT, "version": 99, "entries": []}, "version 99"),
                       ({"format": bench_gate.FORMAT, "version": 1, "entries": [{"model": "m"}]},
                        "ratio_fast")):
        path.write_text(json.dumps(bad))
        with pytest.raises(bench_gate.BaselineError, match=match):
            bench_gate.load(path)
    with pytest.raises(bench_gate.BaselineError, match="not found"):
        bench_gate.load(tmp_path / "missing.json")


def test_gate_measures_again_on_a_busy_machine_and_judges_the_quietest_attempt():
    base = baseline_of(results({"plan": 0.6}, reference_ms=2.0))
    # A neighbour slows the reference 30x and the variant less: the ratio moves either way.
    attempts = iter([results({"plan": 2.0}, reference_ms=60.0), results({"plan": 0.62}, reference_ms=2.1)])
    out = bench_gate.run_gate(lambda seed: next(attempts), base, 1.25, retries=2, wait=0)
    assert not out["gate"]["failed"] and out["gate"]["attempts"] == 2
    assert out["gate"]["reference_ms_per_attempt"] == [60.0, 2.1]
    # A real slowdown fails every attempt.
    slow = [results({"plan": 1.2}, reference_ms=2.0) for _ in range(3)]
    out = bench_gate.run_gate(lambda seed: slow[seed], base, 1.25, retries=2, wait=0)
    assert out["gate"]["failed"] and out["gate"]["attempts"] == 3


def test_stats_and_machine_class():
    s = bench.stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median_s"] == 3.0 and s["p25_s"] == 2.0 and s["iqr_s"] == 2.0 and s["p10_s"] == pytest.approx(1.4)
    assert bench.machine_class().endswith(f"-{cores()}cpu")


def test_timed_call_returns_the_same_outputs_and_a_time_per_segment():
    import hetcc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(4, 8)
    cm = hetcc.compile(model, (x,), ["onnxruntime:cpu", "torch:cpu"], measure=False,
                       pins={"0": "onnxruntime:cpu", "2": "torch:cpu"})
    assert len(cm.plan.segments) == 2
    out, seconds = cm.runtime.timed_call(x)
    torch.testing.assert_close(out, cm(x))
    assert list(seconds) == [s.name for s in cm.plan.segments] and all(t > 0 for t in seconds.values())


# ---- a real slowdown, caught ----

REPEAT = {"n": 1}


class SimulatedTime:
    """Stands in for the time module inside ``hetcc.measure.bench``: every read of the clock
    takes 1 ms and a session run takes ``WORK`` more, so the measured ratios are exact. With the
    wall clock this test failed on CI: an unchanged ONNX Runtime came out 1.62x its own baseline
    while the other pytest worker shared its two cores. Timing on the real machine is the job of
    the gates that run after pytest, alone (scripts/test.sh)."""

    WORK = 1e-3

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1e-3
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def work(self):
        self.now += self.WORK


CLOCK = {"time": None}


class SlowOnnxRuntime(OnnxRuntimeBackend):
    """ONNX Runtime, but each segment call runs the session REPEAT times: a backend that got slower."""

    name = "slowort"

    def load(self, artifact, target):
        run = super().load(artifact, target)

        def slow(*xs):
            for _ in range(REPEAT["n"]):
                if CLOCK["time"] is not None:
                    CLOCK["time"].work()
                out = run(*xs)
            return out
        return slow


def test_gate_catches_a_backend_that_got_slower(monkeypatch):
    register_backend("slowort", SlowOnnxRuntime)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    inputs = (torch.randn(64, 256),)
    options = {"profiles": {"slowort": replace(DEFAULT_PROFILES["onnxruntime"], backend="slowort")},
               "measure": False}

    def prepared():
        return prepare_model(model, inputs, ["slowort:cpu", "torch:cpu"], name="slowort-mlp",
                             compile_options=options)

    def gate(bench_, baseline):
        return bench_gate.run_gate(lambda seed: bench_.run(warmup=3, runs=6, seed=seed), baseline,
                                   1.5, retries=2, wait=0)

    clock = SimulatedTime()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setitem(CLOCK, "time", clock)
    REPEAT["n"] = 1
    unchanged = prepared()
    assert "slowort:cpu" in unchanged.variants[0].plan
    baseline = bench_gate.merge(bench_gate.empty(), unchanged.run(warmup=3, runs=6))
    ok = gate(unchanged, baseline)["gate"]
    assert not ok["failed"], bench_gate.verdict(ok)
    assert ok["attempts"] == 1
    assert statuses(ok) == dict.fromkeys(["plan", "slowort:cpu", "torch:cpu"], "ok")
    assert all(r["change"] == pytest.approx(1.0) for r in ok["rows"])

    REPEAT["n"] = 4  # a new release of the backend does the work four times
    try:
        slowed = gate(prepared(), baseline)["gate"]
    finally:
        REPEAT["n"] = 1
    assert slowed["failed"] and slowed["attempts"] == 3  # measured again, as on a disturbed machine
    rows = {r["variant"]: r for r in slowed["rows"]}
    # one clock read (1 ms) plus one run (1 ms) was 2 ms; plus four runs it is 5 ms
    assert rows["slowort:cpu"]["status"] == "regressed"
    assert rows["slowort:cpu"]["change"] == pytest.approx(2.5)
    assert rows["plan"]["status"] == "regressed"  # the plan runs on slowort too
    assert rows["torch:cpu"]["status"] == "ok" and rows["torch:cpu"]["change"] == pytest.approx(1.0)
    message = rows["slowort:cpu"]["message"]
    assert "slowort:cpu" in message and f"{rows['slowort:cpu']['change']:.2f}x slower" in message
    assert bench_gate.verdict(slowed).startswith("regression gate FAILED: 2 variant(s)")


# ---- the CLI ----

TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), (torch.randn(4, 8),)


class FixedBatch(nn.Module):
    def forward(self, x):
        return x.reshape(4, 2, 4).sum(1)


def fixed_batch():
    return FixedBatch(), (torch.randn(4, 8),)
'''


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return path


def run_cli(capsys, *argv):
    code = main(["bench", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_bench_json_at_batch_sizes(tiny, tmp_path, capsys):
    written = tmp_path / "results.json"
    code, out, err = run_cli(capsys, f"{tiny}:build", "--targets", "onnxruntime:cpu", "--runs", "5",
                             "--warmup", "1", "--batch-sizes", "2,16", "--json", "-o", str(written))
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads(written.read_text())
    assert data["model"] == "tiny.py:build" and data["reference"] == "eager"
    assert data["machine"]["machine_class"] == bench.machine_class() and data["machine"]["cores"] >= 1
    assert {"hetcc", "torch", "onnxruntime"} <= set(data["versions"])
    assert data["settings"]["batch_sizes"] == [2, 16] and data["settings"]["runs"] == 5
    rows = {(r["variant"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {("plan", 2), ("eager", 2), ("plan", 16), ("eager", 16)}
    for (_, batch), r in rows.items():
        lat = r["latency"]
        assert lat["n"] >= 5 and lat["p10_s"] <= lat["median_s"] <= lat["p95_s"]
        assert r["throughput_per_s"] == pytest.approx(batch / r["latency"]["median_s"])
    assert rows[("eager", 2)]["ratio"] == 1.0 and rows[("plan", 16)]["ratio"] > 0
    assert [s["target"] for s in rows[("plan", 2)]["segments"]] == ["onnxruntime:cpu"]


def test_cli_bench_skips_batch_sizes_a_fixed_batch_model_cannot_take(tiny, capsys):
    code, out, err = run_cli(capsys, f"{tiny}:fixed_batch", "--targets", "onnxruntime:cpu", "--runs", "5",
                             "--warmup", "1", "--batch-sizes", "1,8", "--reference", "none", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {r["batch"] for r in data["results"]} == {4} and data["reference"] is None
    assert any("batch sizes skipped" in n for n in data["notes"]), data["notes"]
    assert all(r["ratio"] is None for r in data["results"])


def test_cli_gate_update_then_regression_exits_3(tiny, tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    common = [f"{tiny}:build", "--targets", "onnxruntime:cpu", "--runs", "5", "--warmup", "1",
              "--compare", str(baseline), "--retries", "0"]
    code, out, err = run_cli(capsys, *common, "--update-baseline", "--json")
    assert code == 0, err
    (entry,) = json.loads(baseline.read_text())["entries"]
    assert entry["variant"] == "plan" and entry["machine_class"] == bench.machine_class()
    shrunk = copy.deepcopy(json.loads(baseline.read_text()))
    shrunk["entries"][0]["ratio_fast"] = entry["ratio_fast"] / 10  # as if hetcc had been 10x faster
    baseline.write_text(json.dumps(shrunk))
    code, out, err = run_cli(capsys, *common, "--max-regression", "2")
    assert code == 3
    assert "REGRESSED" in out and "tiny.py:build plan (batch 4)" in out and "gate FAILED" in out
    shrunk["entries"][0]["machine_class"] = "riscv64-64cpu"
    baseline.write_text(json.dumps(shrunk))
    code, out, err = run_cli(capsys, *common, "--json")
    assert code == 0 and "no baseline for this machine class" in err


def test_cli_bench_bundle_uses_the_yardstick(tiny, tmp_path, capsys):
    import hetcc
    from hetcc.model_files import load_model

    model, inputs, _ = load_model(f"{tiny}:build")
    hetcc.compile(model, inputs, ["onnxruntime:cpu"], measure=False).save(tmp_path / "b")
    code, out, err = run_cli(capsys, str(tmp_path / "b"), "--runs", "5", "--warmup", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "bundle" and data["reference"] == "yardstick" and data["model"] == "b"
    assert any("yardstick" in n for n in data["notes"]) and any("synthetic" in n for n in data["notes"])
    assert {r["variant"] for r in data["results"]} == {"plan", "yardstick"}


def test_cli_bench_usage_errors(tiny, capsys):
    assert run_cli(capsys, f"{tiny}:build", "--update-baseline")[0] == 1
    assert run_cli(capsys, f"{tiny}:build", "--runs", "3", "--budget", "1")[0] == 2
    assert run_cli(capsys, f"{tiny}:build", "--batch-sizes", "0,2")[0] == 2
    code, _, err = run_cli(capsys, f"{tiny}:build", "--compare", "x.json", "--reference", "none")
    assert code == 1 and "--reference none" in err
