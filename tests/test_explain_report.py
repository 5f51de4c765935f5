"""`hetcc explain` picture and HTML report: the bound of each segment on hand-made reports, a valid
PNG, a self-contained and escaped HTML page, and both from a real bundle's report.json."""
import json
import struct
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import hetcc
from hetcc.bundle import REPORT, read_manifest
from hetcc.cost_model import devices as devices_module
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import BackendProfile
from hetcc.cost_model.registry import get_device
from hetcc.explain.html import render_html, write_html
from hetcc.explain.plot import BOUNDS, CAPACITY_MARGIN, segment_bounds

ROOT = Path(__file__).resolve().parents[1]
# 100 GFLOP/s, 10 GB/s: ridge point 10 FLOP/B; 1 GB of memory.
CPU = DeviceSpec("cpu", {"fp32": 100e9}, 10e9, 1e9, source="hand-made for tests")
DEVICES = {"cpu": CPU}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def seg(name, target="torch:cpu", flops=1e9, moved=1e7, resident=1e6, predicted=0.02, measured=None,
        **extra):
    return {"name": name, "target": target, "nodes": ["a", "b"], "inputs": ["x"], "outputs": ["y"],
            "flops": flops, "bytes_moved": moved, "resident_bytes": resident,
            "predicted_seconds": predicted, "measured_seconds": measured,
            "ops": {"aten.mm.default": 2, "aten.view.default": 1}, "fell_back": {}, "max_error": 1e-6,
            **extra}


def report(*segments, notes=()):
    return {"targets": ["onnxruntime:cpu", "torch:cpu"], "objective": "latency",
            "predicted_seconds": sum(s["predicted_seconds"] for s in segments), "lower_bound": 0.0,
            "optimal": True, "solver": "milp", "solve_seconds": 0.01, "attempts": 1,
            "segments": list(segments), "notes": list(notes)}


FOUR = report(
    seg("gemm", flops=1e9, moved=1e7),                                   # OI 100 >= 10
    seg("stream", flops=1e7, moved=1e7, predicted=1e-3),                 # OI 1 < 10
    seg("table", flops=1e7, moved=1e7, resident=0.95e9),                 # 95% of 1 GB
    seg("tiny", target="onnxruntime:cpu", flops=1e4, moved=1e3, predicted=3e-5),  # 24 us of 30 us
    notes=["a note"],
)


@pytest.fixture(autouse=True)
def _never_measure(monkeypatch):
    """A test that forgot to pass devices must fail, not quietly time this machine."""
    def refuse(*_, **__):
        raise AssertionError("this_cpu() was called: pass devices=")
    monkeypatch.setattr(devices_module, "this_cpu", refuse)


def by_name(bounds):
    return {b["name"]: b for b in bounds}


# ---- bounds ------------------------------------------------------------------------------------

def test_each_of_the_four_bounds():
    got = by_name(segment_bounds(FOUR, DEVICES))
    assert {n: b["bound"] for n, b in got.items()} == {
        "gemm": "compute", "stream": "bandwidth", "table": "capacity", "tiny": "call overhead"}
    assert set(BOUNDS) == {b["bound"] for b in got.values()}
    gemm = got["gemm"]
    assert gemm["intensity"] == pytest.approx(100)
    assert gemm["attained_flops"] == pytest.approx(1e9 / 0.02)
    assert gemm["ridge_point"] == pytest.approx(10)
    assert gemm["roof_flops"] == pytest.approx(100e9)
    assert gemm["time_source"] == "predicted"
    assert got["stream"]["roof_flops"] == pytest.approx(1 * 10e9)  # on the slope: OI x bandwidth
    assert got["tiny"]["overhead_fraction"] == pytest.approx(24e-6 / 3e-5)
    assert "95%" in got["table"]["why"]
    assert all(b["why"] for b in got.values())


def test_capacity_margin_and_measured_time_first():
    edge = 1e9 * (1 - CAPACITY_MARGIN)
    got = by_name(segment_bounds(report(
        seg("at_margin", resident=edge), seg("below_margin", resident=edge * 0.97),
        seg("over", resident=2e9),
        seg("timed", flops=1e9, moved=1e7, predicted=1e-6, measured=0.02)), DEVICES))
    assert got["at_margin"]["bound"] == "capacity"
    assert got["over"]["bound"] == "capacity"
    assert got["below_margin"]["bound"] == "compute"
    # measured time wins over predicted: 1 us predicted would make the 13 us call overhead dominate
    assert got["timed"]["time_source"] == "measured" and got["timed"]["bound"] == "compute"


def test_profiles_scale_the_roofline_and_devices_by_target_win():
    slow = BackendProfile("torch", {"matmul": 0.5, "default": 0.25}, per_node=0, call_overhead=1e-3)
    fast = DeviceSpec("cpu", {"fp32": 1e12}, 1e11, 1e10)
    rep = report(seg("gemm"), seg("other", target="onnxruntime:cpu"))
    got = by_name(segment_bounds(rep, {"cpu": CPU, "torch:cpu": fast}, {"torch": slow}))
    assert got["gemm"]["op_class"] == "matmul" and got["gemm"]["efficiency"] == 0.5
    assert got["gemm"]["peak_flops"] == pytest.approx(0.5e12)  # the target's own spec, x efficiency
    assert got["gemm"]["call_overhead"] == 1e-3
    assert got["other"]["peak_flops"] == pytest.approx(100e9 * 1.04)  # default onnxruntime matmul eff
    plain = by_name(segment_bounds(rep, DEVICES))
    assert plain["gemm"]["efficiency"] == 1.0 and plain["gemm"]["peak_flops"] == 100e9


def test_cpu_targets_use_this_cpu_when_no_device_is_given(monkeypatch):
    monkeypatch.setattr(devices_module, "this_cpu", lambda: CPU)
    [b] = segment_bounds(report(seg("gemm", target="openvino:cpu")))
    assert b["device"] == "cpu" and b["bound"] == "compute"


def test_unknown_device_and_malformed_segments_do_not_crash():
    rep = report(seg("gpu", target="vendor:npu:0"), seg("gemm"))
    rep["segments"] += [{"name": "junk", "target": "not a target", "flops": "many", "bytes_moved": None},
                        "not even a dict", {"name": "empty", "target": "torch:cpu", "flops": 0,
                                            "bytes_moved": 0, "resident_bytes": 0, "predicted_seconds": 0}]
    got = by_name(segment_bounds(rep, DEVICES))
    assert set(got) == {"gpu", "gemm", "junk", "empty"}
    assert got["gpu"]["device"] is None and got["gpu"]["bound"] == "unknown"
    assert "npu" in got["gpu"]["device_note"] and "devices=" in got["gpu"]["device_note"]
    assert got["junk"]["bound"] == "call overhead"  # no work at all
    assert got["empty"]["bound"] == "call overhead"
    h100 = by_name(segment_bounds(rep, {**DEVICES, "vendor:npu:0": get_device("h100")}))["gpu"]
    assert h100["device"] == "h100-sxm" and h100["bound"] in BOUNDS


def test_gpu_targets_use_the_spec_compile_costs_them_on():
    # the GPU here, or without one the registry's default (H100 SXM); rocm by its gfx arch
    from hetcc.cost_model.target_devices import device_for_target

    rep = report(seg("trt", target="tensorrt:cuda:0"), seg("amd", target="iree:rocm:gfx90a"))
    got = by_name(segment_bounds(rep, DEVICES))
    here = device_for_target("tensorrt:cuda:0").name
    assert got["trt"]["device"] == here
    if not torch.cuda.is_available():  # no GPU: the documented default
        assert here == "h100-sxm"
    assert got["trt"]["bound"] in BOUNDS
    assert got["amd"]["device"] == "mi250x"


# ---- PNG -----------------------------------------------------------------------------------------

def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_is_a_readable_picture(tmp_path):
    pytest.importorskip("matplotlib", reason="the explain picture needs matplotlib")
    from hetcc.explain.plot import write_png

    rep = report(*FOUR["segments"], seg("gpu", target="tensorrt:cuda:0"))
    path = write_png(rep, tmp_path / "plan.png", devices={**DEVICES, "tensorrt:cuda:0": get_device("h100")},
                     title="hand-made")
    data = path.read_bytes()
    width, height = png_size(data)
    assert width >= 1200 and height >= 600
    assert 20_000 < len(data) < 1_000_000
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (height, width)


# ---- HTML ----------------------------------------------------------------------------------------

class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]


def assert_self_contained(page: str) -> None:
    # the embedded PNG's base64 may spell "http" by chance: look for addresses outside it
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,", page)
    assert "http:" not in text.lower() and "https:" not in text.lower()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    parsed = Tags()
    parsed.feed(page)
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed", "a", "base", "form"}
    refs = [(t, k, v) for t, k, v in parsed.attrs if k in ("src", "href") or k.startswith("on")]
    assert [(t, k) for t, k, _ in refs] == [("img", "src")]  # the figure, and nothing else
    assert refs[0][2].startswith("data:image/png;base64,")


def test_html_is_self_contained_and_escapes_the_report(tmp_path):
    pytest.importorskip("matplotlib", reason="the explain picture needs matplotlib")
    evil = report(*FOUR["segments"], seg("<script>alert(1)</script>", fell_back={"n<1>": "because <b>"}),
                  notes=["a note", '<img src=x onerror="alert(2)">'])
    path = write_html(evil, tmp_path / "plan.html", devices=DEVICES, title="<i>mine</i>")
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert 'src="data:image/png;base64,' in page
    for name in ("gemm", "stream", "table", "tiny"):
        assert f"<td>{name}</td>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert "n&lt;1&gt;: because &lt;b&gt;" in page and "&lt;i&gt;mine&lt;/i&gt;" in page
    for bound in BOUNDS:
        assert f">{bound}</span>" in page
    assert "a note" in page


def test_html_without_matplotlib_still_has_the_tables(monkeypatch):
    from hetcc.explain import html as explain_html

    def no_matplotlib(*_, **__):
        raise hetcc.HetccError("drawing the plan needs matplotlib: pip install matplotlib")
    monkeypatch.setattr(explain_html, "png_bytes", no_matplotlib)
    page = render_html(FOUR, DEVICES)
    assert "no figure: drawing the plan needs matplotlib" in page and "data:image" not in page
    assert "<td>gemm</td>" in page and "http" not in page and "<img" not in page
    # torch:cpu is in the plan's targets whether or not it was asked for: not "asked for"
    assert "targets considered: onnxruntime:cpu, torch:cpu" in page


# ---- from a real bundle ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt_report(tmp_path_factory) -> dict:
    sys.path.insert(0, str(ROOT / "examples"))
    from gpt import build

    model, inputs = build()
    compiled = hetcc.compile(model, inputs, targets=["openvino:cpu", "onnxruntime:cpu", "torch:cpu"],
                             pins={"scaled_dot_product_attention": "torch:cpu"}, measure=False)
    path = compiled.save(tmp_path_factory.mktemp("explain") / "gpt.bundle")
    read_manifest(path)
    return json.loads((path / REPORT).read_text(encoding="utf-8"))


def test_from_a_real_bundle(gpt_report, tmp_path):
    pytest.importorskip("matplotlib", reason="the explain picture needs matplotlib")
    from hetcc.explain.plot import write_png

    bounds = segment_bounds(gpt_report, DEVICES)
    assert [b["name"] for b in bounds] == [s["name"] for s in gpt_report["segments"]]
    assert all(b["bound"] in BOUNDS and b["device"] == "cpu" for b in bounds)
    assert {b["target"] for b in bounds} >= {"torch:cpu"}  # the pinned attention
    width, _ = png_size(write_png(gpt_report, tmp_path / "gpt.png", devices=DEVICES).read_bytes())
    assert width >= 1200
    page = write_html(gpt_report, tmp_path / "gpt.html", devices=DEVICES, title="gpt.bundle").read_text()
    assert_self_contained(page)
    assert all(f"<td>{s['name']}</td>" in page for s in gpt_report["segments"])
    # a GPU from the registry for one target: two rooflines, nothing crashes
    gpu = {**DEVICES, "onnxruntime:cpu": get_device("h100")}
    assert png_size(write_png(gpt_report, tmp_path / "gpu.png", devices=gpu).read_bytes())[0] >= 1200
