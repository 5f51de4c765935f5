"""compile(cross_compile=True): segments for a device this machine lacks are kept, saved with their
check data, and verified against the PyTorch reference when the bundle is loaded where the device is."""
import json

import pytest
import torch

import hetcc
import mlp
from hetcc.backends import registry
from hetcc.backends.torch_backend import TorchBackend
from hetcc.errors import BundleError, DeviceNotHere, TargetError
from hetcc.target import Target


class Elsewhere(TorchBackend):
    """torch under another name, for a device ('npu') that is only 'here' when the test says so;
    ``corrupt`` makes it wrong there, as a miscompiled artifact would be."""

    name = "elsewhere"
    devices = ("npu",)
    here = False
    corrupt = False

    def is_available(self, target):
        return target.device == "npu"

    def load(self, artifact, target):
        if not Elsewhere.here:
            raise DeviceNotHere(f"no npu on this machine for {artifact.meta['segment']}")
        run = super().load(artifact, Target("torch", "cpu"))
        if not Elsewhere.corrupt:
            return run
        return lambda *xs: tuple(y + 1 for y in run(*xs))


@pytest.fixture
def elsewhere(monkeypatch):
    monkeypatch.setitem(registry._REGISTERED, "elsewhere", Elsewhere)  # gone after the test
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()
    Elsewhere.here = Elsewhere.corrupt = False
    yield Elsewhere
    Elsewhere.here = Elsewhere.corrupt = False
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()


@pytest.fixture(scope="module")
def model():
    return mlp.build(batch=8)


def test_without_cross_compile_a_missing_device_falls_back(elsewhere, model):
    net, inputs = model
    cm = hetcc.compile(net, inputs, ["elsewhere:npu", "torch:cpu"], measure=False)
    assert cm.plan.targets_used() == ["torch:cpu"]
    assert cm.not_here() == []


def test_cross_compiled_bundle_is_verified_where_the_device_is(elsewhere, model, tmp_path):
    net, inputs = model
    cm = hetcc.compile(net, inputs, ["elsewhere:npu"], cross_compile=True)
    assert cm.plan.targets_used() == ["elsewhere:npu"] and cm.not_here() == ["seg0"]
    assert any("verified" in n for n in cm.plan.notes)
    with pytest.raises(TargetError, match="save the model|Save the model"):
        cm(*inputs)
    path = cm.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    seg = manifest["segments"][0]
    assert seg["meta"]["verified"] is False and "check" in seg["files"]
    with pytest.raises(BundleError, match="no npu"):
        hetcc.load(path)  # still not here
    elsewhere.here = True
    loaded = hetcc.load(path)  # the device is here now: verified on load
    checked = loaded.verifications["seg0"]
    assert checked.verified is True and checked.max_error is not None and checked.check == seg["meta"]["check"]
    assert not {"verified", "check", "max_error"} & set(loaded.artifacts["seg0"].meta)  # the backend's only
    assert "check" not in loaded.artifacts["seg0"].files
    resaved = json.loads((loaded.save(tmp_path / "again") / "manifest.json").read_text())["segments"][0]
    assert resaved["meta"] == seg["meta"] | {"verified": True, "max_error": checked.max_error}
    assert resaved["files"]["check"]["sha256"] == seg["files"]["check"]["sha256"]
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs), net(*inputs), rtol=1e-5, atol=1e-5)
    elsewhere.corrupt = True
    with pytest.raises(BundleError, match="wrong results on this one"):
        hetcc.load(path)


def test_iree_rocm_compiles_here_into_a_bundle(model, tmp_path):
    net, inputs = model
    cm = hetcc.compile(net, inputs, ["iree:rocm:gfx942", "torch:cpu"], cross_compile=True)
    assert cm.plan.targets_used() == ["iree:rocm:gfx942"]
    path = cm.save(tmp_path / "rocm")
    files = sorted(p.name for p in (path / "segments").rglob("*") if p.is_file())
    assert "check.safetensors" in files and any(f.endswith(".vmfb") for f in files)
    with pytest.raises(BundleError, match="gfx942"):
        hetcc.load(path)  # no ROCm here: refused whole, with the reason


def test_cli_cross_compile(tmp_path, capsys):
    from hetcc.cli import main

    out = tmp_path / "rocm.bundle"
    assert main(["compile", f"{mlp.__file__}:build", "-o", str(out), "--targets",
                 "iree:rocm:gfx942,torch:cpu", "--cross-compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["target"] for s in report["plan"]["segments"]] == ["iree:rocm:gfx942"]
    assert (out / "manifest.json").exists()
