import logging
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

CPU_TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    logging.getLogger("hetcc").setLevel(logging.WARNING)
    yield
