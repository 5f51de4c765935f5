"""Planning for devices that are not here: the pipelined-throughput solver against brute force, the
per-device busy times against the latency model, and hetcc.predict / `hetcc plan` end to end."""
import dataclasses
import json
import math
import random

import pytest
import torch

import decoders
import mlp
from hetcc.cli import main
from hetcc.errors import HetccError, InputError, PlacementError
from hetcc.passes.pipeline import bottleneck, brute_force_pipeline, solve_pipeline
from hetcc.passes.problem import HOST, PlacementProblem, Value, evaluate, stage_seconds
from hetcc import predict

MLP_BYTES = 4 * (256 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 1024 * 64 + 64)

SMALL_GPUS = """
small-gpu:
  base: h100
  mem_capacity_gb: 0.007
small-gpu-2:
  base: h100
  mem_capacity_gb: 0.007
tiny-gpu:
  base: h100
  mem_capacity_gb: 0.001
"""


def random_problem(rng: random.Random, n: int, k: int) -> PlacementProblem:
    cost = tuple(tuple(math.inf if t and rng.random() < 0.1 else rng.uniform(1, 10) for t in range(k))
                 for _ in range(n))
    values = [Value(HOST, (0,), rng.randint(1, 100))]
    for i in range(n - 1):
        extra = [j for j in range(i + 2, n) if rng.random() < 0.2]
        values.append(Value(i, tuple(sorted({i + 1, *extra})), rng.randint(1, 100)))
    values.append(Value(n - 1, (), rng.randint(1, 100), True))
    latency = [[0.0 if s == t else rng.uniform(0, 1) for t in range(k + 1)] for s in range(k + 1)]
    bandwidth = [[math.inf if s == t else rng.uniform(20, 200) for t in range(k + 1)] for s in range(k + 1)]
    return PlacementProblem(
        tuple(f"n{i}" for i in range(n)), tuple(f"t{t}" for t in range(k)), cost, tuple(values),
        tuple(rng.randint(0, 10) for _ in range(n)),
        tuple(rng.choice([math.inf, rng.uniform(5, 40)]) for _ in range(k)),
        tuple(map(tuple, latency)), tuple(map(tuple, bandwidth)),
        tuple(rng.uniform(0, 1) for _ in range(k)) + (0.0,))


@pytest.mark.parametrize("seed", range(6))
def test_pipeline_solver_matches_brute_force(seed):
    rng = random.Random(seed)
    checked = 0
    for _ in range(25):
        p = random_problem(rng, rng.randint(1, 7), rng.randint(2, 3))
        best, neck = brute_force_pipeline(p)
        if not best:
            with pytest.raises(PlacementError):
                solve_pipeline(p)
            continue
        got = solve_pipeline(p)
        assert got.cost == pytest.approx(neck, rel=1e-6)
        assert got.cost == pytest.approx(bottleneck(p, got.assignment), rel=1e-12)
        # among the placements with the least bottleneck, the least latency
        assert evaluate(p, got.assignment) == pytest.approx(evaluate(p, best), rel=1e-6)
        assert got.optimal
        checked += 1
    assert checked >= 15


def test_busy_times_add_up_to_the_latency():
    """Every node and every hand-over is charged to exactly one device."""
    rng = random.Random(7)
    for _ in range(200):
        p = random_problem(rng, rng.randint(1, 8), rng.randint(1, 4))
        a = tuple(rng.randrange(p.k) for _ in range(p.n))
        total = evaluate(p, a)
        busy = stage_seconds(p, a)
        if math.isinf(total):
            assert all(math.isinf(b) for b in busy)
        else:
            assert sum(busy) == pytest.approx(total, rel=1e-12)


def test_pipelining_beats_one_device_when_stages_balance():
    # two equal halves, each 10 s on either device, a cheap link: one device takes 20 s per request,
    # two devices in a pipeline take 10 s each, so throughput doubles while latency grows.
    p = PlacementProblem(("a", "b"), ("d0", "d1"), ((10.0, 10.0), (10.0, 10.0)),
                         (Value(HOST, (0,), 1), Value(0, (1,), 1), Value(1, (), 1, True)), (0, 0),
                         (math.inf, math.inf), ((0.0,) * 3,) * 3, ((math.inf,) * 3,) * 3, (0.1, 0.1, 0.0))
    got = solve_pipeline(p)
    assert sorted(got.assignment) == [0, 1]
    assert got.cost == pytest.approx(10.1)
    assert evaluate(p, got.assignment) > evaluate(p, (0, 0))


@pytest.fixture(scope="module")
def mlp_model():
    return mlp.build()


def test_predict_mlp_across_registry_devices(mlp_model):
    model, inputs = mlp_model
    p = predict(model, inputs, "h100,mi300x,epyc")
    assert p.devices == ("h100-sxm", "mi300x", "epyc-9654")
    assert "PREDICTION" in p.summary() and "nothing was lowered" in p.summary()
    assert p.to_dict()["prediction"] is True
    # latency is the segments plus every cut's hand-over
    assert p.latency_seconds == pytest.approx(sum(s.seconds for s in p.segments)
                                              + sum(c.seconds for c in p.cuts), rel=1e-9)
    assert sum(d.busy_seconds for d in p.loads) == pytest.approx(p.latency_seconds, rel=1e-9)
    assert p.throughput == pytest.approx(1 / max(d.busy_seconds for d in p.loads))
    assert sum(s.resident_bytes for s in p.segments) == MLP_BYTES
    assert {c.source for c in p.cuts} | {c.destination for c in p.cuts} >= {"host"}


def test_objectives_trade_latency_for_throughput_and_cost(mlp_model):
    model, inputs = mlp_model
    devices = ["h100", "h100", "mi300x"]
    lat = predict(model, inputs, devices, objective="latency")
    thr = predict(model, inputs, devices, objective="throughput")
    cost = predict(model, inputs, devices, objective="cost")
    assert lat.latency_seconds <= thr.latency_seconds * (1 + 1e-9)
    assert thr.throughput >= lat.throughput * (1 - 1e-9)
    for single in ("h100", "mi300x"):
        alone = predict(model, inputs, [single], objective="throughput")
        assert cost.cost_per_million <= alone.cost_per_million * (1 + 1e-9)
    assert lat.devices == ("h100-sxm#0", "h100-sxm#1", "mi300x")


def test_bf16_uses_the_bf16_peak(mlp_model):
    model, inputs = mlp.build(batch=4096)
    fp32 = predict(model, inputs, ["h100"])
    bf16 = predict(model, inputs, ["h100"], dtype="bf16")
    # the GEMMs are compute-bound at this batch: tensor-core bf16 is ~15x the fp32 CUDA-core peak
    assert bf16.segments[0].seconds < fp32.segments[0].seconds / 3
    assert bf16.segments[0].resident_bytes == MLP_BYTES // 2
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not cast


def test_capacity_splits_or_says_nothing_fits(mlp_model, tmp_path):
    model, inputs = mlp_model
    devices_file = tmp_path / "gpus.yaml"
    devices_file.write_text(SMALL_GPUS)
    p = predict(model, inputs, ["small-gpu", "small-gpu-2"], device_files=[devices_file])
    assert {s.device for s in p.segments} == {"small-gpu", "small-gpu-2"}
    for load in p.loads:
        assert 0 < load.resident_bytes <= load.capacity
    with pytest.raises(PlacementError, match="capacity exceeded"):
        predict(model, inputs, ["tiny-gpu", "small-gpu"], device_files=[devices_file])


def test_peer_link_carries_device_to_device_hand_overs(mlp_model, tmp_path):
    model, inputs = mlp_model
    devices_file = tmp_path / "gpus.yaml"
    devices_file.write_text(SMALL_GPUS)
    p = predict(model, inputs, ["small-gpu", "small-gpu-2"], device_files=[devices_file])
    inner = [c for c in p.cuts if "host" not in (c.source, c.destination)]
    assert inner
    for c in inner:  # NVLink: 450 GB/s per direction, 5 us set-up, plus the receiver's call
        assert c.seconds == pytest.approx(5e-6 + c.nbytes / 450e9 + 20e-6, rel=1e-6)


def test_cost_needs_prices(mlp_model):
    model, inputs = mlp_model
    with pytest.raises(HetccError, match="epyc-9654 has none"):
        predict(model, inputs, ["h100", "epyc"], objective="cost")


def test_decoder_on_meta_with_resident_cache():
    cfg = decoders.DecoderConfig.gqa(kv_heads=2, vocab=512, d_model=128, layers=2, heads=4, head_dim=32,
                                     ffn=256)
    with torch.device("meta"):
        model = decoders.Decoder(cfg).eval()
    ids = torch.zeros(4, 1, dtype=torch.long, device="meta")
    cache = tuple(torch.zeros(4, 2, 64, 32, device="meta") for _ in range(4))
    cache_bytes = 4 * (4 * 2 * 64 * 32 * 4)
    moving = predict(model.decode, (ids, cache), ["h100"])
    staying = predict(model.decode, (ids, cache), ["h100"], resident_inputs=["cache"])
    assert staying.loads[0].resident_bytes == moving.loads[0].resident_bytes + cache_bytes
    assert not any(c.value.startswith("cache") for c in staying.cuts)
    assert any(c.value.startswith("cache") for c in moving.cuts)
    # the updated cache stays too: only the logits go back to the host
    assert sum(c.nbytes for c in staying.cuts if c.destination == "host") == 4 * 1 * 512 * 4
    # and nothing is charged for the cache per request: latency is the segments plus the cuts
    for p in (moving, staying):
        assert p.latency_seconds == pytest.approx(sum(s.seconds for s in p.segments)
                                                  + sum(c.seconds for c in p.cuts), rel=1e-9)
    with pytest.raises(InputError, match="match no model input"):
        predict(model.decode, (ids, cache), ["h100"], resident_inputs=["kv"])


def test_profiles_by_alias_and_exported_programs(mlp_model):
    from hetcc.cost_model.planning import ACCELERATOR

    model, inputs = mlp_model
    base = predict(model, inputs, ["h100"])
    slow = dataclasses.replace(ACCELERATOR, efficiency={"default": 0.01})
    slower = predict(model, inputs, ["h100"], profiles={"h100": slow})  # an alias of h100-sxm
    assert slower.latency_seconds > 5 * base.latency_seconds
    with pytest.raises(HetccError, match="not among the devices"):
        predict(model, inputs, ["h100"], profiles={"mi300x": slow})
    ep = torch.export.export(model, inputs)
    assert predict(ep, inputs, ["h100"], dtype="bf16").segments[0].resident_bytes == MLP_BYTES // 2
    with pytest.raises(HetccError, match="time_limit"):
        predict(model, inputs, ["h100"], time_limit=0)


def test_pins_and_bad_arguments(mlp_model):
    model, inputs = mlp_model
    p = predict(model, inputs, ["h100", "epyc"], pins={"net.0": "epyc"})
    first = [s for s in p.segments if any("linear" in n or "addmm" in n for n in s.nodes)][0]
    assert first.device == "epyc-9654"
    with pytest.raises(HetccError, match="not among the devices"):
        predict(model, inputs, ["h100"], pins={"net.0": "epyc"})
    with pytest.raises(HetccError, match="unknown device 'h1000'"):
        predict(model, inputs, ["h1000"])
    with pytest.raises(HetccError, match="objective"):
        predict(model, inputs, ["h100"], objective="speed")
    with pytest.raises(HetccError, match="no devices"):
        predict(model, inputs, [])


def test_cli_plan_json_and_devices_file(tmp_path, capsys):
    devices_file = tmp_path / "gpus.yaml"
    devices_file.write_text(SMALL_GPUS.split("tiny-gpu")[0])
    model = f"{mlp.__file__}:build"
    assert main(["plan", model, "--devices", str(devices_file), "--json"]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    out = json.loads(text)
    assert out["prediction"] is True and out["optimal"] is True and out["gap"] == 0.0
    assert set(out["devices"]) == {"small-gpu", "small-gpu-2"}
    assert set(out["devices_used"]) == {"small-gpu", "small-gpu-2"}
    assert main(["plan", model, "--devices", "h100,epyc", "--objective", "throughput"]) == 0
    text = capsys.readouterr().out
    assert "PREDICTION" in text and "nothing was lowered" in text and "requests/s" in text
    assert "placement proven optimal" in text
    assert main(["plan", model, "--devices", "h100,nope"]) == 1
    assert "unknown device 'nope'" in capsys.readouterr().err
    assert main(["plan", model, "--devices", str(tmp_path / "missing.yaml")]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_plan_meta_builds_without_weights(tmp_path, capsys):
    source = tmp_path / "wide.py"
    source.write_text("import torch\nfrom torch import nn\n\ndef build():\n"
                      "    model = nn.Sequential(nn.Linear(50000, 50000), nn.ReLU()).eval()\n"
                      "    return model, (torch.zeros(2, 50000),)\n")
    # 10 GB of fp32 weights: only the meta device makes this plannable here
    assert main(["plan", f"{source}:build", "--devices", "h100", "--meta", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loads"][0]["resident_bytes"] == 4 * (50000 * 50000 + 50000)


def test_plan_states_the_gap_of_an_unproven_placement(mlp_model, capsys):
    from dataclasses import replace

    from hetcc.cli.plan import _render

    model, inputs = mlp_model
    p = predict(model, inputs, ["h100", "epyc"])
    _render(replace(p, optimal=False, gap=0.0062))
    assert "within 0.62% of the optimum (proven bound), not proven optimal" in capsys.readouterr().out
    _render(replace(p, optimal=False, gap=math.inf))  # no bound: say only that
    out = capsys.readouterr().out
    assert "not proven optimal" in out and "within" not in out
