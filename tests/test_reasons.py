"""Failure reasons reach the plan, the log and the CLI whole: no terminal escape codes, nothing cut,
the exception they were raised from included, with a command that reproduces the failure alone,
and the whole traceback at DEBUG (what hetcc --debug shows)."""
import logging
import shlex
import subprocess
import sys

import torch
from torch import nn

import hetcc
import mlp
from hetcc.errors import clip, plain, readable


class Histogram(nn.Module):
    """ONNX Runtime accepts aten.histc up front, then torch's ONNX exporter fails on it: a real
    failed lowering."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        return torch.histc(self.proj(x), bins=4) * 2


def test_plain_text_and_causes():
    text = "\x1b[1;31merror\x1b[0m: bad \x1b]8;;https://x.org\x1b\\link\x1b]8;;\x1b\\ \x9b2Jthing\n  next line\n"
    assert plain(text) == "error: bad link thing next line"
    try:
        try:
            raise ValueError("inner \x1b[33mcause\x1b[0m")
        except ValueError as exc:
            raise RuntimeError("outer, which says the inner cause too") from exc
    except RuntimeError as exc:
        assert readable(exc) == "outer, which says the inner cause too"
        assert readable(exc, causes=True) == readable(exc)  # said already: not repeated
        exc.__cause__.args = ("what really went wrong",)
        assert readable(exc, causes=True).endswith("(caused by ValueError: what really went wrong)")
    assert readable(RuntimeError("")) == "RuntimeError"


def test_clip_says_what_it_left_out_and_never_cuts_a_word():
    assert clip("short", 10) == "short"
    assert clip("alpha beta gamma delta", 12) == "alpha beta ... (12 more characters)"
    assert clip("x" * 50, 10) == "x" * 10 + " ... (40 more characters)"  # one word longer than the limit


def test_a_coloured_long_reason_is_kept_whole_and_plain(monkeypatch, caplog):
    model, inputs = mlp.build(batch=2)
    long = "\x1b[1;31mExporterFailure\x1b[0m: " + " ".join(f"word{i}" for i in range(400)) + " END-OF-REASON"

    def export(*args, **kwargs):
        try:
            raise ValueError("\x1b[33mthe real cause\x1b[0m\nsecond line")
        except ValueError as exc:
            raise RuntimeError(long) from exc

    monkeypatch.setattr(torch.onnx, "export", export)
    with caplog.at_level(logging.DEBUG, logger="hetcc"):
        cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False)
    reasons = [why for s in cm.plan.segments for why in s.fell_back.values()] + list(cm.plan.notes)
    assert reasons and len(long) > 2000
    for why in reasons:
        assert "\x1b" not in why and "\n" not in why
        assert "ExporterFailure: word0 word1" in why and "word399 END-OF-REASON" in why
        assert "(caused by ValueError: the real cause second line)" in why
        assert "failed_segment.pt2; reproduce the failure alone with: " in why
    # the full chain and traceback are logged at DEBUG (what hetcc --debug shows)
    records = [r for r in caplog.records if r.exc_info and "lower failed" in r.getMessage()]
    assert records and all(isinstance(r.exc_info[1].__cause__, RuntimeError) for r in records)
    assert "The above exception was the direct cause" in caplog.text and "the real cause" in caplog.text


def test_a_failed_lowering_names_a_command_that_reproduces_it(tmp_path):
    torch.manual_seed(0)
    model, inputs = Histogram().eval(), (torch.randn(4, 6),)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], measure=False, workdir=tmp_path)
    reasons = [why for s in cm.plan.segments for why in s.fell_back.values()]
    assert reasons, "ONNX export of aten.histc works now: pick another op that fails to export"
    why = reasons[0]
    assert "aten_histc with min == max" in why  # the cause, from deep in torch's message
    command = shlex.split(why.split("reproduce the failure alone with: ")[1])
    assert command[:2] == [sys.executable, "-c"] and "failed_segment.pt2" in command[2]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "aten_histc" in run.stderr
