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
def vnni(monkeypatch):
    """This CPU seen as one with VNNI (hetcc.cost_model.devices.cpu_flags): what the runtimes'
    int8 offers and how it is priced then do not depend on the machine the tests run on. Only for
    tests whose int8 kernels do not run, or whose results do not depend on them."""
    from hetcc.cost_model import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
