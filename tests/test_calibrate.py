"""`hetcc calibrate` and calibrated profiles: the CLI writes a profile that reads back, compile picks
it up (from the cache dir or $HETCC_PROFILE) and its numbers change the plan's predictions, and a
corrupt or newer profile is a clear error naming the file."""
import json
import logging

import mlp
import pytest
from hetcc.cost_model.devices import DeviceSpec, _cpu_key
from hetcc.cost_model.profiles import (
    DEFAULT_PROFILES,
    profile_path,
    profile_to_json,
    read_profile,
)

import hetcc
from hetcc.cli import main
from hetcc.errors import HetccError

DEVICE = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=8e9,
                    source="hand-written for a test")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HETCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HETCC_PROFILE", raising=False)


def _write(path, efficiency: float, **changes):
    base = DEFAULT_PROFILES["torch"]
    from dataclasses import replace

    slow = replace(base, efficiency={k: v * efficiency for k, v in base.efficiency.items()})
    data = {**profile_to_json(_cpu_key(), DEVICE, {"torch": slow}, {"torch:cpu": {}}), **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _predicted(**kw):
    model, inputs = mlp.build(batch=4)
    return hetcc.compile(model, inputs, targets=["torch:cpu"], measure=False, **kw).plan.predicted_seconds


def test_cli_writes_a_profile_to_the_cache_and_json(capsys):
    code = main(["calibrate", "--targets", "torch:cpu", "--seconds", "0.05", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["profile"] == str(profile_path())
    assert data["format"] == "hetcc-profile" and data["version"] == 1 and data["key"] == _cpu_key()
    assert set(data["backends"]) == {"torch"}
    assert {"overhead", "matmul", "handoff_per_value"} <= set(data["timings"]["torch:cpu"])
    assert len(data["device"]["extra"]["fp32_flops_samples"]) == 3
    assert data["device"]["peak_flops"]["fp32"] == max(data["device"]["extra"]["fp32_flops_samples"])
    profile = read_profile(profile_path())
    assert profile.backends["torch"].eff("matmul") > 0 and profile.backends["torch"].call_overhead > 0


def test_compile_uses_the_cached_profile_and_hetcc_profile(tmp_path, monkeypatch, caplog):
    path = _write(profile_path(), 1.0)
    with caplog.at_level(logging.INFO, logger="hetcc"):
        fast = _predicted()
    assert f"calibrated profile {path}" in caplog.text
    _write(profile_path(), 0.1)  # the same backend, 10x slower
    slow = _predicted()
    assert slow > 5 * fast
    # profiles= still wins over the calibrated profile
    assert _predicted(profiles={"torch": read_profile(_write(tmp_path / "x.json", 1.0)).backends["torch"]}) \
        == pytest.approx(fast)
    monkeypatch.setenv("HETCC_PROFILE", str(_write(tmp_path / "fast.json", 1.0)))
    assert _predicted() == pytest.approx(fast)


@pytest.mark.parametrize("changes, fragment", [
    ({"version": 2}, "version 2 is newer"),
    ({"format": "something"}, "field 'format'"),
    ({"backends": {"torch": {"efficiency": {"matmul": -1}, "per_node": 0, "call_overhead": 0}}},
     "backends.torch.efficiency.matmul"),
    ({"device": {"peak_flops": {}}}, "device.peak_flops"),
])
def test_bad_profile_is_a_clear_error_naming_the_file(changes, fragment):
    path = _write(profile_path(), 1.0, **changes)
    with pytest.raises(HetccError, match=fragment) as info:
        _predicted()
    assert str(path) in str(info.value)


def test_corrupt_profile_and_missing_hetcc_profile(tmp_path, monkeypatch):
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(HetccError, match="not valid JSON") as info:
        _predicted()
    assert str(path) in str(info.value)
    monkeypatch.setenv("HETCC_PROFILE", str(tmp_path / "missing.json"))
    with pytest.raises(HetccError, match="missing.json: no such file"):
        _predicted()


def test_cli_rejects_bad_options(capsys):
    for argv, fragment in ((["--targets", "torch:cuda"], "CPU targets only"),
                           (["--targets", "nosuch:cpu"], "nosuch"), (["--seconds", "0"], "--seconds")):
        code = main(["calibrate", *argv])
        _, err = capsys.readouterr()
        assert code == 1 and "Traceback" not in err and fragment in err, err
        assert len(err.strip().splitlines()) == 1, err
