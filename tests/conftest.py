import logging
import os
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
