import pytest

from hetcc.errors import TargetError
from hetcc.target import Target, parse_targets


@pytest.mark.parametrize("text,parts", [
    ("torch:cpu", ("torch", "cpu", None)),
    ("tensorrt:cuda:0", ("tensorrt", "cuda", "0")),
    ("iree:rocm:gfx942", ("iree", "rocm", "gfx942")),
    (" OpenVINO:CPU ", ("openvino", "cpu", None)),
])
def test_parse_and_print_round_trip(text, parts):
    t = Target.parse(text)
    assert (t.backend, t.device, t.index) == parts
    assert Target.parse(str(t)) == t
    assert str(t) == ":".join(p for p in parts if p)


@pytest.mark.parametrize("bad", ["torch", "", "a:b:c:d", "torch::0", "tor ch:cpu", 3])
def test_malformed_targets_say_the_expected_form(bad):
    with pytest.raises(TargetError, match="backend:device|must be a string"):
        Target.parse(bad)


def test_parse_targets_keeps_order_and_drops_repeats():
    got = parse_targets("openvino:cpu,torch:cpu,openvino:cpu")
    assert [str(t) for t in got] == ["openvino:cpu", "torch:cpu"]
    with pytest.raises(TargetError, match="no targets"):
        parse_targets([])
