"""Backend options as data (backends/options.py): every backend declares what it takes, values
are checked and spelled alike, and an option that no target would use is refused, not dropped.
Needs no vendor SDK: constructing a backend imports none."""
from __future__ import annotations

import logging

import pytest
import torch

import hetcc
from hetcc.backends.options import Option, check_backend_options
from hetcc.backends.registry import BUILTIN, get_backend, resolve
from hetcc.errors import TargetError
from hetcc.target import PRECISIONS, Target, parse_targets


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_backend_declares_its_options(name):
    backend = get_backend(name)
    declared = type(backend).options
    assert declared and all(isinstance(o, Option) for o in declared)
    assert len({o.name for o in declared}) == len(declared)
    for option in declared:
        assert option.meaning and set(option.devices) <= set(backend.devices)
    # the defaults are values the backend takes, and constructing with all of them works
    defaults = {o.name: o.default for o in declared if o.default is not None}
    type(backend)(**defaults)
    assert set(getattr(type(backend), "untested", {})) <= set(backend.devices)


def test_shared_options_are_spelled_alike():
    by_backend = {name: {o.name: o for o in type(get_backend(name)).options} for name in BUILTIN}
    with_precision = [n for n, opts in by_backend.items() if "precision" in opts]
    assert {"tensorrt", "migraphx", "onnxruntime", "openvino"} <= set(with_precision)
    for name in with_precision:
        choices = set(by_backend[name]["precision"].choices)
        # hetcc's one spelling: fp32 (and TensorRT's tf32), else the lower precisions a target may name
        assert "fp32" in choices and choices <= {"fp32", "tf32", *PRECISIONS}, name
        assert by_backend[name]["precision"].default == "fp32"
        assert dict(by_backend[name]["precision"].aliases) == {"f32": "fp32", "f16": "fp16"}, name


@pytest.mark.parametrize("name", ["onnxruntime", "openvino", "tensorrt", "migraphx"])
def test_offered_precisions_are_ones_the_precision_option_takes(name):
    """What compile(accuracy=...) may choose on a target is what the backend's option accepts."""
    backend = get_backend(name)
    choices = {o.name: o for o in type(backend).options}["precision"].choices
    for device in backend.devices:
        target = Target(name, device)
        if backend.is_available(target):
            assert set(backend.precisions(target)) <= set(choices) & set(PRECISIONS), device


@pytest.mark.parametrize("name", ["tensorrt", "migraphx"])
def test_old_precision_spellings_are_deprecated_aliases(name, caplog):
    cls = type(get_backend(name))
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        assert cls(precision="f16").precision == "fp16"
        assert cls(precision="f32").precision == "fp32"
    assert "precision='f16' is a deprecated spelling; write 'fp16'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hetcc"):
        cls(precision="fp16")
    assert "deprecated" not in caplog.text


def test_bad_options_name_what_the_backend_takes():
    with pytest.raises(TargetError, match="bad options for backend 'tensorrt': it has no option 'colour'; it "
                                          "takes precision .*workspace.*dynamic_max"):
        resolve(Target.parse("tensorrt:cuda:0"), {"colour": "red"})
    # bool is an int to Python, but not an integer option's value; nor is a number a boolean
    for bad in ({"workspace": True}, {"dynamic_max": 0}, {"precision": "int8"}):
        with pytest.raises(TargetError, match="tensorrt option .* must be"):
            check_backend_options(parse_targets("tensorrt:cuda:0"), {"tensorrt": bad})
    with pytest.raises(TargetError, match="migraphx option fast_math must be boolean, got 1"):
        check_backend_options(parse_targets("migraphx:rocm:0"), {"migraphx": {"fast_math": 1}})


def test_an_option_no_target_would_use_is_refused():
    with pytest.raises(TargetError) as info:
        check_backend_options(parse_targets("torch:cpu"), {"torch": {"compile": True}})
    message = str(info.value)
    assert "torch option compile changes only torch:cuda, and no such target is given" in message
    assert "torch:cpu always runs eagerly" in message
    with pytest.raises(TargetError, match="'openvino', which no target uses"):
        check_backend_options(parse_targets("torch:cpu"), {"openvino": {"precision": "bf16"}})
    # with a torch:cuda target the option is right; it reaches that target and not torch:cpu
    both = parse_targets("torch:cuda:0,torch:cpu")
    assert check_backend_options(both, {"torch": {"compile": True}}) == {"torch": {"compile": True}}
    assert resolve(Target.parse("torch:cpu"), {"compile": True}).compile_mode is None


def test_compile_refuses_before_capturing(monkeypatch):
    def no_capture(*args, **kwargs):
        raise AssertionError("captured the model before checking the options")

    monkeypatch.setattr("hetcc.compiler.capture", no_capture)
    with pytest.raises(TargetError, match="torch option compile changes only torch:cuda"):
        hetcc.compile(torch.nn.Linear(4, 4), (torch.randn(2, 4),), targets=["torch:cpu"],
                      backend_options={"torch": {"compile": True}})

