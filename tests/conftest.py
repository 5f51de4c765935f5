import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

CPU_TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]

# Hermetic: a profile from `hetcc calibrate`, corrections learnt by tuning, or a CPU spec cached by
# another environment, must not change what the tests see. Each run measures this CPU into its own
# cache (about a second).
os.environ.pop("HETCC_PROFILE", None)
os.environ.pop("HETCC_CORRECTIONS", None)
os.environ["HETCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="hetcc-test-cache-")
atexit.register(shutil.rmtree, os.environ["HETCC_CACHE_DIR"], True)


@pytest.fixture(autouse=True, scope="session")
def _scratch_under_basetemp(tmp_path_factory):
    """compile()'s scratch directories, kept wherever a segment failed (tests make many fail on
    purpose: a run left 70 in /tmp), go under pytest's base temp, which pytest prunes."""
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("scratch"))
    yield
    tempfile.tempdir = before


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    logging.getLogger("hetcc").setLevel(logging.WARNING)
    yield


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(vnni=...)`` makes this CPU look like an x86 one with or without VNNI
    (hetcc.cost_model.devices.cpu_flags), whatever the machine the tests run on: what the runtimes'
    int8 offers, how it is priced and how it is quantized follow."""
    from hetcc.cost_model import devices

    def seen_as(vnni: bool) -> None:
        monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"} if vnni else {"avx2"}))
    return seen_as


@pytest.fixture
def vnni(cpu):
    """This CPU seen as one with VNNI: for tests whose int8 kernels do not run, or whose results do
    not depend on them."""
    cpu(vnni=True)
