"""Device registry: built-in specs and their sources, names and aliases, user devices files."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hetcc.cost_model import devices
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.registry import (
    DTYPES,
    KINDS,
    DeviceSpecError,
    UnknownDeviceError,
    get_device,
    load_devices,
    registry,
    ridge_point,
)

from hetcc.errors import HetccError, TargetError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"h100-sxm", "h200", "b200", "a100-sxm-80gb", "l4", "mi300x", "mi250x", "gaudi3",
            "xeon-6980p", "epyc-9654", "cpu"}
BUILTINS = sorted(REQUIRED - {"cpu"})  # "cpu" is measured; its own tests below


@pytest.fixture
def fake_cpu(monkeypatch):
    """Replace the CPU measurement with a counted fake, so no test measures this machine."""
    calls = []

    def this_cpu(refresh=False):
        calls.append(refresh)
        return DeviceSpec(name="cpu", peak_flops={"fp32": 1e11}, mem_bandwidth=2e10,
                          mem_capacity=8e9, source="measured on fake-cpu|threads=2")

    monkeypatch.setattr(devices, "this_cpu", this_cpu)
    return calls


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- built-in devices ----------------------------------------------------------------------------

def test_registry_has_the_required_devices(fake_cpu):
    assert REQUIRED <= set(registry())
    assert not fake_cpu, "listing the registry must not measure the CPU"


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_numbers_are_positive_and_each_has_a_source(name):
    spec = get_device(name)
    assert spec.name == name
    assert "fp32" in spec.peak_flops
    for dtype, flops in spec.peak_flops.items():
        assert dtype in DTYPES and flops > 0 and math.isfinite(flops)
    assert 0 < spec.mem_bandwidth < math.inf and 0 < spec.mem_capacity < math.inf
    needed = [f"peak_flops.{d}" for d in spec.peak_flops] + ["mem_bandwidth", "mem_capacity",
                                                               "price_per_hour"]
    if math.isfinite(spec.host_link_bandwidth):
        assert spec.host_link and spec.host_link_bandwidth > 0
        needed.append("host_link_bandwidth")
    else:
        assert spec.host_link is None and spec.extra["kind"] == "cpu"
    if spec.peer_link_bandwidth is not None:
        assert spec.peer_link and spec.peer_link_bandwidth > 0
        needed.append("peer_link_bandwidth")
    assert spec.price_per_hour is None or spec.price_per_hour > 0
    for key in needed:
        assert len(spec.sources.get(key, "")) > 20, f"{name}: no real source for {key}"
    assert spec.extra["kind"] in KINDS and spec.extra["description"]


def test_peaks_are_dense_and_links_per_direction():
    h100 = get_device("h100")
    assert h100.peak_flops["bf16"] == pytest.approx(989.4e12)  # 1,979 on the datasheet is sparse
    assert "sparsity" in h100.sources["peak_flops.bf16"]
    assert h100.peer_link_bandwidth == 450e9 and "900 GB/s" in h100.peer_link
    assert h100.host_link_bandwidth == 64e9 and "PCIe 5.0" in h100.host_link
    assert get_device("mi300x").peer_link_bandwidth == 448e9
    assert get_device("a100").host_link_bandwidth == 32e9


@pytest.mark.parametrize("name", BUILTINS)
def test_ridge_points_rise_with_narrower_dtypes(name):
    spec = get_device(name)
    ridges = [ridge_point(spec, d) for d in ("fp32", "tf32", "bf16", "fp8") if d in spec.peak_flops]
    assert ridges == sorted(ridges)
    if "int8" in spec.peak_flops:
        assert ridge_point(spec, "int8") >= ridge_point(spec, "bf16")


def test_ridge_points_across_devices():
    h100, h200, b200 = get_device("h100"), get_device("h200"), get_device("b200")
    assert ridge_point(h100, "bf16") > 10 * ridge_point(h100, "fp32")
    assert ridge_point(h100) == pytest.approx(h100.ridge_point)
    # same compute, more bandwidth: H200 turns compute-bound later
    assert ridge_point(h200, "bf16") < ridge_point(h100, "bf16")
    assert b200.mem_bandwidth > h200.mem_bandwidth > h100.mem_bandwidth
    assert get_device("mi300x").mem_capacity > h200.mem_capacity > h100.mem_capacity
    # a missing dtype falls back to fp32 (EPYC has no verified bf16 rate)
    epyc = get_device("epyc")
    assert ridge_point(epyc, "bf16") == ridge_point(epyc, "fp32")


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias,name", [
    ("h100", "h100-sxm"), ("H100", "h100-sxm"), ("H100_SXM", "h100-sxm"), ("h100 sxm", "h100-sxm"),
    ("H200", "h200"), ("b200", "b200"), ("A100", "a100-sxm-80gb"), ("L4", "l4"),
    ("MI300X", "mi300x"), ("mi250x", "mi250x"), ("epyc", "epyc-9654"), ("xeon", "xeon-6980p"),
    ("gaudi3", "gaudi3"), ("Gaudi-3", "gaudi3"),
])
def test_names_are_case_insensitive_with_aliases(alias, name):
    assert get_device(alias).name == name
    assert alias in registry()


def test_unknown_name_lists_close_matches_first_then_all_names():
    with pytest.raises(TargetError) as info:
        get_device("h10")
    msg = str(info.value)
    assert isinstance(info.value, (UnknownDeviceError, KeyError))
    assert "unknown device 'h10'" in msg
    assert msg.index("close matches: h100") < msg.index("Known devices")
    for name in REQUIRED:
        assert name in msg
    assert "nope" not in registry() and registry().get("nope") is None


# --- this machine's CPU ------------------------------------------------------------------------

def test_cpu_is_measured_lazily_once(fake_cpu):
    reg = registry()
    assert "cpu" in reg and not fake_cpu
    spec = reg["CPU"]
    assert reg["cpu"] is spec and len(fake_cpu) == 1
    assert spec.name == "cpu" and spec.extra["kind"] == "cpu"
    for key in ("peak_flops.fp32", "mem_bandwidth", "mem_capacity"):
        assert spec.sources[key]
    assert "fake-cpu" in spec.sources["peak_flops.fp32"]


def test_importing_the_registry_measures_nothing(tmp_path):
    env = dict(os.environ, HETCC_CACHE_DIR=str(tmp_path))
    code = "import hetcc.cost_model.registry as r; r.registry(); r.get_device('h100')"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not list(tmp_path.glob("cpu_spec*.json"))


# --- devices files -------------------------------------------------------------------------------

NEW_YAML = """\
my-npu:
  aliases: [npu]
  kind: accelerator
  description: a made-up NPU
  peak_tflops: {fp32: 50, bf16: 400}
  mem_bandwidth_gbs: 1000
  mem_capacity_gib: 32
  host_link: {name: PCIe 4.0 x16, gbs: 32, latency_us: 5}
  price_per_hour: 1.25
  sources:
    peak_tflops: vendor brochure 2025
"""


def test_yaml_new_device(tmp_path, fake_cpu):
    path = write(tmp_path, "devices.yaml", NEW_YAML)
    (spec,) = load_devices(path).values()
    assert spec.name == "my-npu"
    assert spec.peak_flops == {"fp32": 50e12, "bf16": 400e12}
    assert spec.mem_bandwidth == 1000e9 and spec.mem_capacity == 32 * 2**30
    assert spec.host_link_bandwidth == 32e9 and spec.host_link_latency == pytest.approx(5e-6)
    assert spec.peer_link is None and spec.price_per_hour == 1.25
    assert spec.sources["peak_flops.bf16"] == "vendor brochure 2025"
    assert str(path) in spec.sources["mem_bandwidth"] and str(path) in spec.sources["host_link_bandwidth"]
    reg = registry(extra_files=[path])
    assert reg["NPU"] == spec and "h100-sxm" in reg
    assert get_device("npu", extra_files=[path]).name == "my-npu"
    assert not fake_cpu


def test_yaml_partial_override_with_base(tmp_path):
    path = write(tmp_path, "capped.yml", """\
h100-capped:
  base: H100
  peak_tflops: {bf16: 600}
  price_per_hour: 1.0
  sources: {peak_tflops.bf16: "measured with hetcc calibrate, 2026-06"}
""")
    h100, capped = get_device("h100"), load_devices(path)["h100-capped"]
    assert capped.peak_flops["bf16"] == 600e12
    assert capped.peak_flops["fp32"] == h100.peak_flops["fp32"]
    assert capped.mem_bandwidth == h100.mem_bandwidth and capped.peer_link == h100.peer_link
    assert capped.sources["peak_flops.bf16"] == "measured with hetcc calibrate, 2026-06"
    assert capped.sources["peak_flops.fp32"] == h100.sources["peak_flops.fp32"]
    assert str(path) in capped.sources["price_per_hour"] and capped.price_per_hour == 1.0
    assert registry([path])["h100"] == h100  # the base itself is unchanged


def test_json_override_of_a_known_device_in_place(tmp_path):
    path = write(tmp_path, "prices.json", '{"H100": {"price_per_hour": 1.5}, '
                                          '"mi300x": {"peer_link": null, "price_per_hour": null}}')
    loaded = load_devices(path)
    assert set(loaded) == {"h100-sxm", "mi300x"}
    reg = registry([path])
    assert reg["h100-sxm"].price_per_hour == 1.5
    assert reg["h100-sxm"].mem_bandwidth == get_device("h100").mem_bandwidth
    assert reg["mi300x"].peer_link is None and reg["mi300x"].price_per_hour is None
    assert "peer_link_bandwidth" not in reg["mi300x"].sources
    assert get_device("h100").price_per_hour != 1.5  # the built-ins are untouched


def test_json_new_device_and_later_files_win(tmp_path):
    first = write(tmp_path, "a.json", '{"box": {"kind": "cpu", "peak_tflops": {"fp32": 2}, '
                                      '"mem_bandwidth_gbs": 100, "mem_capacity_gb": 256}}')
    second = write(tmp_path, "b.yaml", "box: {mem_capacity_gb: 512}\n")
    spec = registry([first, second])["box"]
    assert spec.mem_capacity == 512e9 and spec.peak_flops == {"fp32": 2e12}
    assert math.isinf(spec.host_link_bandwidth)  # a cpu needs no host link


def test_base_cpu_stays_lazy(tmp_path, fake_cpu):
    path = write(tmp_path, "cpu.yaml", "my-cpu: {base: cpu, price_per_hour: 0.5}\n")
    reg = registry([path])
    assert not fake_cpu
    assert reg["my-cpu"].peak_flops == {"fp32": 1e11} and reg["my-cpu"].price_per_hour == 0.5
    assert len(fake_cpu) == 1


BAD = [  # (file text, device, field, what the message must say)
    ("x: {base: h100, mem_bandwith_gbs: 10}\n", "x", "mem_bandwith_gbs",
     "did you mean 'mem_bandwidth_gbs'"),
    ("x: {base: h100, mem_bandwidth_gbs: fast}\n", "x", "mem_bandwidth_gbs",
     "wrong type: got str 'fast'; expected a positive number of GB/s"),
    ("x: {base: h100, mem_bandwidth_gbs: 1e3}\n", "x", "mem_bandwidth_gbs", "write 1.0e+3"),
    ("x: {base: h100, mem_capacity_gb: -80}\n", "x", "mem_capacity_gb", "got -80"),
    ("x: {base: h100, price_per_hour: 0}\n", "x", "price_per_hour", "expected USD per device-hour"),
    ("x: {base: h100, mem_capacity_gb: true}\n", "x", "mem_capacity_gb", "wrong type: got bool"),
    ("x: {base: h100, peak_tflops: {fp32: 0}}\n", "x", "peak_tflops.fp32", "positive number"),
    ("x: {base: h100, peak_tflops: {bf61: 5}}\n", "x", "peak_tflops",
     "unknown dtype 'bf61' (did you mean 'bf16'?)"),
    ("x: {base: h100, peak_tflops: 5}\n", "x", "peak_tflops", "expected a mapping dtype"),
    ("x: {base: h1000}\n", "x", "base", "unknown base device 'h1000'; close matches: h100"),
    ("x: {peak_tflops: {fp32: 5}, mem_capacity_gb: 8, host_link: null}\n", "x", "mem_bandwidth_gbs",
     "missing required field(s) for a new device: 'mem_bandwidth_gbs'"),
    ("x: {peak_tflops: {bf16: 5}, mem_bandwidth_gbs: 8, mem_capacity_gb: 8, host_link: null}\n", "x",
     "peak_tflops", "missing required field(s) for a new device: 'peak_tflops'"),
    ("x: {peak_tflops: {fp32: 5}, mem_bandwidth_gbs: 8, mem_capacity_gb: 8}\n", "x", "host_link",
     "or null for the host"),
    ("x: {base: h100, host_link: {name: PCIe, gb: 32}}\n", "x", "host_link",
     "unknown key 'gb' (did you mean 'gbs'?)"),
    ("x: {base: h100, host_link: 32}\n", "x", "host_link", "expected {name: text, gbs: GB/s"),
    ("x: {base: h100, kind: tpu}\n", "x", "kind", "expected one of gpu, cpu, accelerator"),
    ("x: {base: h100, sources: {mem_bandwith_gbs: datasheet}}\n", "x", "sources.mem_bandwith_gbs",
     "did you mean 'mem_bandwidth_gbs'"),
    ("x: {base: h100, mem_capacity_gb: 1, mem_capacity_gib: 1}\n", "x", "mem_capacity_gib", "not both"),
    ("x: {base: h100, aliases: [h100-sxm]}\n", "x", "aliases", "already a device name"),
    ("x: 5\n", "x", None, "expected a mapping of fields"),
]


@pytest.mark.parametrize("text,device,field,expect", BAD, ids=[b[2] or "entry" for b in BAD])
def test_invalid_entries_name_file_device_and_field(tmp_path, text, device, field, expect):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(DeviceSpecError) as info:
        registry([path])
    msg = str(info.value)
    assert isinstance(info.value, HetccError)
    assert str(path) in msg and f"device '{device}'" in msg and expect in msg
    if field:
        assert f"field '{field}'" in msg
    # the same problem in JSON gives the same message
    import json

    import yaml

    jpath = write(tmp_path, "bad.json", json.dumps(yaml.safe_load(text)))
    with pytest.raises(DeviceSpecError, match=f"device '{device}'"):
        load_devices(jpath)


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    path = write(tmp_path, "two.yaml", "a: {base: h100, mem_capacity_gb: -1}\n"
                                       "b: {base: h100, price_per_hour: cheap}\n")
    with pytest.raises(DeviceSpecError) as info:
        registry([path])
    assert "device 'a': field 'mem_capacity_gb'" in str(info.value)
    assert "device 'b': field 'price_per_hour'" in str(info.value)


@pytest.mark.parametrize("name,text,expect", [
    ("syntax.yaml", "x:\n  base: h100\n   price_per_hour: 1\n", r"line 3, column \d+: invalid YAML"),
    ("syntax.json", '{"x": {"base": "h100",}}', r"line 1, column \d+: invalid JSON"),
    ("empty.yaml", "", "expected a mapping of device name -> fields, got nothing"),
    ("list.yaml", "- h100\n", "expected a mapping of device name -> fields, got a list"),
    ("devices.toml", "x = 1\n", "unknown file type '.toml'"),
    ("colon.yaml", "'tensorrt:h100': {base: h100}\n", "invalid device name 'tensorrt:h100'"),
])
def test_unreadable_files(tmp_path, name, text, expect):
    path = write(tmp_path, name, text)
    with pytest.raises(DeviceSpecError, match=expect) as info:
        load_devices(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DeviceSpecError, match="devices file .*nope.yaml not found"):
        registry([tmp_path / "nope.yaml"])


def test_old_cached_cpu_specs_still_load():
    old = {"name": "cpu", "peak_flops": {"fp32": 1e11}, "mem_bandwidth": 2e10, "mem_capacity": 8e9,
           "host_link_bandwidth": math.inf, "host_link_latency": 0.0, "source": "x", "extra": {}}
    spec = DeviceSpec(**old)
    assert spec.sources == {} and spec.price_per_hour is None and spec.peer_link is None


def test_docs_table_lists_every_builtin_device():
    text = (ROOT / "docs" / "devices.md").read_text()
    for name in BUILTINS:
        spec = get_device(name)
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row, f"docs/devices.md has no table row for {name}"
        assert f"{spec.mem_bandwidth / 1e9:g}" in row and f"{spec.mem_capacity / 1e9:g}" in row
