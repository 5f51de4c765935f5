"""Dynamic dimensions from the command line: a .pt2 keeps the ones it was exported with, and
--dynamic marks any axis of any input, shared across inputs (issue 11 item 5)."""
import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from hetcc.cli.inputs import dynamic_dim

from test_cli import assert_user_error, cli

SOURCE = '''
import torch
from torch import nn


class Masked(nn.Module):
    """Token ids and their mask, called by keyword: their batch and length must stay equal."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, 8)
        self.lin = nn.Linear(8, 4)

    def forward(self, ids, mask):
        h = self.lin(self.table(ids)) * mask.unsqueeze(-1)
        return {"pooled": h.sum(1) / mask.sum(1, keepdim=True), "tokens": h}


def build():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 6))
    return Masked().eval(), {"ids": ids, "mask": torch.ones(2, 6)}


def build_positional():
    model, inputs = build()
    return model, (inputs["ids"], inputs["mask"])
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn") / "masked.py"
    path.write_text(SOURCE)
    return path


def _run(capsys, bundle, tmp_path, **arrays):
    np.savez(tmp_path / "in.npz", **arrays)
    code, _, err = cli(capsys, "run", bundle, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as got:
        return {k: got[k] for k in got.files}


@pytest.mark.parametrize("func, where", [("build", "ids.1,mask.1"), ("build_positional", "0.1,mask.1")])
def test_a_dim_shared_by_two_inputs_varies_at_run_time(source, tmp_path, capsys, func, where):
    code, out, err = cli(capsys, "compile", f"{source}:{func}", "-o", tmp_path / "b", "--targets",
                         "onnxruntime:cpu", "--dynamic", f"seq:2:32={where}", "--dynamic-batch=1:4", "--json")
    assert code == 0, err
    signature = json.loads(out)["signature"]
    assert signature == "(ids: int64[batch, seq], mask: float32[batch, seq])"
    ids = np.random.default_rng(0).integers(0, 50, (3, 17))
    mask = (np.arange(17) < 11).astype(np.float32)[None].repeat(3, 0)
    got = _run(capsys, tmp_path / "b", tmp_path, ids=ids, mask=mask)

    import importlib.util
    spec = importlib.util.spec_from_file_location("masked_src", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, _ = module.build()
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(got["out0"], want["pooled"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["out1"], want["tokens"].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag, fragments", [
    ("seq=ids.5", ("input ids has 2 dimensions (2, 6), so it has no axis 5",)),
    ("seq=tokens.1", ("no input 'tokens'", "ids, mask")),
    ("seq=ids.0,mask.1", ("different example sizes [2, 6]",)),
    ("seq:8:16=ids.1,mask.1", ("example size 6 is outside 8:16",)),
    ("seq=ids.1", ("dynamic shapes you asked for do not hold",)),  # the mask's length must follow
])
def test_a_dim_that_cannot_be_dynamic_is_a_clear_error(source, tmp_path, capsys, flag, fragments):
    assert_user_error(cli(capsys, "compile", f"{source}:build", "-o", tmp_path / "b", "--targets", "torch:cpu",
                          "--dynamic", flag), *fragments)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text", ["seq", "seq=ids", "seq=ids.x", "1seq=ids.1", "seq:4:2=ids.1", "seq:0:4=ids.1"])
def test_the_flag_parser_refuses_malformed_specs(text):
    with pytest.raises(argparse.ArgumentTypeError):
        dynamic_dim(text)


def test_the_flag_parser_reads_names_ranges_and_positions():
    assert dynamic_dim("seq:1:512=input_ids.1, attention_mask.1") == (
        "seq", 1, 512, [("input_ids", 1), ("attention_mask", 1)])
    assert dynamic_dim("batch=0.0")[1:3] == (1, 4096)


def test_a_pt2_keeps_the_dynamic_dims_it_was_exported_with(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(8, 3), nn.Tanh()).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (torch.randn(4, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "m.pt2")
    code, out, err = cli(capsys, "compile", tmp_path / "m.pt2", "-o", tmp_path / "b", "--targets",
                         "onnxruntime:cpu", "--json")
    assert code == 0, err
    shape = json.loads(out)["signature"].split("[")[1].split(",")[0]
    assert not shape.isdigit(), f"the batch was compiled static: {out}"
    x = np.random.default_rng(1).standard_normal((9, 8)).astype(np.float32)
    got = _run(capsys, tmp_path / "b", tmp_path, input=x)
    with torch.no_grad():
        np.testing.assert_allclose(got["out0"], model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_a_keyword_bundle_benches_on_synthetic_and_given_inputs(source, tmp_path, capsys):
    code, _, err = cli(capsys, "compile", f"{source}:build", "-o", tmp_path / "b", "--targets",
                       "onnxruntime:cpu", "--tune", "off")
    assert code == 0, err
    code, out, err = cli(capsys, "bench", tmp_path / "b", "--runs", "2", "--json")
    assert code == 0, err
    assert [r["variant"] for r in json.loads(out)["results"]][0] == "plan"
    np.savez(tmp_path / "in.npz", ids=np.ones((2, 6), dtype=np.int64), mask=np.ones((2, 6), dtype=np.float32))
    code, _, err = cli(capsys, "bench", tmp_path / "b", "--runs", "2", "--inputs", tmp_path / "in.npz")
    assert code == 0, err
