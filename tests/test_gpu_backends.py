"""GPU backends: tensorrt:cuda, migraphx:rocm, torch:cuda, and the cost model's GPU specs.

Everything up to the point a GPU or a vendor SDK is needed runs here and on CI: the ONNX export
TensorRT and MIGraphX start from, capability answers, artifact metadata, the checks that refuse an
engine built for another TensorRT or GPU, the errors when an SDK is missing. The SDK is made absent
by patching its import, so those answers are the same on a machine that has it. Tests marked
``gpu`` need the hardware and skip with a reason without it."""
from __future__ import annotations

import importlib
import json
import logging
import threading
import types

import numpy as np
import pytest
import torch

from hetcc.backends import migraphx_backend as mgx
from hetcc.backends import tensorrt_backend as trtb
from hetcc import gpus
from hetcc.backends import torch_backend as tb
from hetcc.backends.onnx_export import export_onnx
from hetcc.backends.base import Artifact
from hetcc.backends.registry import BUILTIN, resolve, usable_targets
from hetcc.cost_model import target_devices as td
from hetcc.cost_model.profiles import DEFAULT_PROFILES
from hetcc.errors import BundleError, InputError, TargetError
from hetcc.target import Target
from test_backends import LinearReluNorm, make_segment

TRT = Target.parse("tensorrt:cuda:0")
MGX = Target.parse("migraphx:rocm:0")
CUDA = Target.parse("torch:cuda:0")

HAVE_CUDA = torch.cuda.is_available()
HAVE_TRT = trtb._tensorrt_or_error()[0] is not None


def _without(monkeypatch, module_name: str) -> None:
    """Make ``importlib.import_module(module_name)`` fail, as on a machine without it."""
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == module_name:
            raise ModuleNotFoundError(f"No module named {module_name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)


@pytest.fixture
def no_tensorrt(monkeypatch):
    _without(monkeypatch, "tensorrt")
    trtb._tensorrt_or_error.cache_clear()
    yield
    trtb._tensorrt_or_error.cache_clear()


@pytest.fixture
def no_migraphx(monkeypatch):
    import onnxruntime

    _without(monkeypatch, "migraphx")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    mgx._migraphx_or_error.cache_clear()
    mgx._ort_provider_problem.cache_clear()
    yield
    mgx._migraphx_or_error.cache_clear()
    mgx._ort_provider_problem.cache_clear()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)


def _node(model, args, op):
    ep = torch.export.export(model, args).run_decompositions()
    return next(n for n in ep.graph.nodes if n.op == "call_function" and n.target == op)


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.fixture(scope="module")
def dynamic_segment():
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    _, seg = make_segment(LinearReluNorm(), (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    return seg


@pytest.fixture(scope="module")
def exported(dynamic_segment, tmp_path_factory):
    return export_onnx(dynamic_segment, tmp_path_factory.mktemp("onnx"), "tensorrt")


# ---------------------------------------------------------------------------------------------
# registration and availability


def test_gpu_backends_are_registered():
    for name, device in (("tensorrt", "cuda"), ("migraphx", "rocm")):
        module, _, cls = BUILTIN[name].partition(":")
        backend = getattr(importlib.import_module(module), cls)()
        assert backend.name == name and backend.devices == (device,)
    assert tb.TorchBackend.devices == ("cpu", "cuda")


def test_tensorrt_absent_names_what_to_install(no_tensorrt):
    backend = trtb.TensorRTBackend()
    assert not backend.is_available(TRT)
    why = backend.why_unavailable(TRT)
    assert "tensorrt" in why and "pip install tensorrt" in why
    with pytest.raises(TargetError) as err:
        resolve(TRT)
    assert "tensorrt:cuda:0 is not available here" in str(err.value)
    assert "Usable here:" in str(err.value) and "torch:cpu" in str(err.value)
    assert "tensorrt:cuda" not in usable_targets()
    answer = backend.supports(_node(LinearReluNorm(), (torch.randn(2, 16),), torch.ops.aten.relu.default), TRT)
    assert not answer and "pip install tensorrt" in answer.reason


def test_tensorrt_placeholder_module_is_absent(monkeypatch):
    fake = types.ModuleType("tensorrt")  # what a name-reserving package installs: no API
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", fake)
    trtb._tensorrt_or_error.cache_clear()
    try:
        assert "no Builder/OnnxParser/Runtime" in trtb.TensorRTBackend().why_unavailable(TRT)
    finally:
        trtb._tensorrt_or_error.cache_clear()


def test_tensorrt_options_are_checked():
    for bad in ({"precision": "int8"}, {"workspace": -1}, {"dynamic_max": 0}):
        with pytest.raises(TargetError, match="tensorrt"):
            trtb.TensorRTBackend(**bad)
    assert trtb.TensorRTBackend(precision="bf16", workspace=1 << 30).precision == "bf16"


def test_torch_cuda_unavailable_reasons(monkeypatch, no_cuda):
    backend = tb.TorchBackend()
    assert backend.is_available(Target.parse("torch:cpu"))
    assert not backend.is_available(CUDA)
    assert "CPU-only build" in backend.why_unavailable(CUDA)
    with pytest.raises(TargetError, match="Usable here:.*torch:cpu"):
        resolve(CUDA)
    # a CUDA build whose GPU 3 does not exist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    why = backend.why_unavailable(Target.parse("torch:cuda:3"))
    assert "no GPU 3" in why and "torch:cuda:0" in why
    assert "must be a number" in backend.why_unavailable(Target.parse("torch:cuda:gfx942"))


def test_torch_compile_option():
    assert tb.TorchBackend(compile=True).compile_mode == "default"
    assert tb.TorchBackend().compile_mode is None
    with pytest.raises(TargetError, match="CUDA-graph modes are refused"):
        tb.TorchBackend(compile="reduce-overhead")
    with pytest.raises(TargetError, match="compile must be"):
        resolve(Target.parse("torch:cpu"), {"compile": "fast"})


def test_torch_cpu_ignores_compile_and_stays_eager(tmp_path):
    _, seg = make_segment(LinearReluNorm(), (torch.randn(3, 16),))
    backend = resolve(Target.parse("torch:cpu"), {"compile": True})
    artifact = backend.lower(seg, Target.parse("torch:cpu"), tmp_path)
    assert "compile" not in artifact.meta
    run = backend.load(artifact, Target.parse("torch:cpu"))
    assert isinstance(run, tb.TorchExecutable)
    x = torch.randn(3, 16)
    torch.testing.assert_close(run(x)[0], seg.reference(x)[0])


def test_moving_a_program_rewrites_devices_written_into_the_graph():
    class WithArange(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + torch.arange(4, dtype=torch.float32)

    ep = torch.export.export(WithArange(), (torch.randn(2, 4),)).run_decompositions()
    moved = tb.move_program(ep, "meta")  # "meta" stands in for a GPU: a device that is not the CPU
    assert all(v.device.type == "meta" for v in moved.state_dict.values())
    assert "device = 'meta'" in moved.graph_module.code and "type='cpu'" not in moved.graph_module.code
    assert tb._direct_call(moved)(torch.randn(2, 4, device="meta"))[0].device.type == "meta"


# ---------------------------------------------------------------------------------------------
# TensorRT: export, profile, metadata, engine checks


def test_onnx_export_for_tensorrt_runs_and_keeps_the_dynamic_batch(dynamic_segment, exported):
    import onnx
    import onnxruntime as ort

    model = onnx.load(exported.files["model"])
    onnx.checker.check_model(model)
    from hetcc.backends.onnx_export import onnx_io_names

    # the graph's names carry the segment's, under a prefix no inner value name has
    assert (exported.input_names, exported.output_names) == onnx_io_names(dynamic_segment)
    assert all(n.endswith(v) for n, v in zip(exported.input_names, dynamic_segment.input_names))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, as TensorRT's profile needs
    # the file TensorRT would parse computes the segment (checked on ONNX Runtime's CPU provider)
    session = ort.InferenceSession(exported.files["model"], providers=["CPUExecutionProvider"])
    x = torch.randn(9, 16)
    got = session.run(exported.output_names, {exported.input_names[0]: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got[0]), dynamic_segment.reference(x)[0], rtol=1e-4, atol=1e-4)


def test_optimization_profile(dynamic_segment, exported):
    name = exported.input_names[0]
    profile = trtb.input_profile(dynamic_segment, exported.input_names)
    assert profile[name] == {"min": [1, 16], "opt": [4, 16], "max": [64, 16]}
    capped = trtb.input_profile(dynamic_segment, exported.input_names, dynamic_max=8)
    assert capped[name]["max"] == [8, 16]
    _, static = make_segment(LinearReluNorm(), (torch.randn(3, 16),))
    only = trtb.input_profile(static, static.input_names)
    assert only[static.input_names[0]] == {"min": [3, 16], "opt": [3, 16], "max": [3, 16]}


H100 = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_engine_meta_is_json_and_what_load_checks(dynamic_segment, exported):
    profile = trtb.input_profile(dynamic_segment, exported.input_names)
    meta = trtb.engine_meta(dynamic_segment, exported, profile, "fp16", None,
                            dict(H100, cuda_problem=None), {"torch": "2.x", "tensorrt": "10.3.0"})
    assert json.loads(json.dumps(meta)) == meta
    assert meta["engine"] == H100
    assert meta["precision"] == "fp16" and meta["profile"] == profile
    assert meta["output_dtypes"] == ["float32"]
    assert meta["onnx_input_names"] == exported.input_names
    assert trtb.check_engine(meta["engine"], dict(H100, cuda_problem=None), "tensorrt:cuda:0") == (None, None)


@pytest.mark.parametrize("here, says", [
    ({"tensorrt": None, "tensorrt_problem": "Python package tensorrt is not importable"},
     ["10.3.0", "not importable", "hetcc compile", "--targets tensorrt:cuda:0"]),
    (dict(H100, cuda_problem="this torch is a CPU-only build"), ["no usable GPU", "CPU-only"]),
    (dict(H100, tensorrt="10.4.0"), ["TensorRT 10.4.0, which cannot load it", "install TensorRT 10.3.0",
                                      "hetcc compile"]),
    (dict(H100, gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0"),
     ["compute capability 8.0", "cannot run it", "hetcc compile"]),
])
def test_engine_mismatch_is_an_error_that_says_rebuild(here, says):
    error, warning = trtb.check_engine(H100, dict({"cuda_problem": None}, **here), "tensorrt:cuda:0")
    assert error and warning is None
    for text in says:
        assert text in error


def test_engine_on_another_gpu_of_the_same_capability_only_warns():
    here = dict(H100, gpu="NVIDIA H100 PCIe", tensorrt="10.3.0.26", cuda_problem=None)  # build number differs
    error, warning = trtb.check_engine(H100, here, "tensorrt:cuda:0")
    assert error is None and "same compute capability" in warning


def test_loading_an_engine_without_tensorrt_is_a_clear_error(tmp_path, no_tensorrt, monkeypatch):
    monkeypatch.setenv("HETCC_TRUST_ENGINES", "1")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not read: the check comes first")
    artifact = Artifact("tensorrt:cuda:0", {"engine": str(plan)}, {"segment": "seg0", "engine": H100})
    with pytest.raises(BundleError) as err:
        trtb.TensorRTBackend().load(artifact, TRT)
    text = str(err.value)
    assert "seg0" in text and "TensorRT 10.3.0" in text and "H100" in text and "hetcc compile" in text


def test_an_engine_this_process_did_not_build_needs_trust(tmp_path, no_tensorrt, monkeypatch):
    from hetcc.backends import _common

    monkeypatch.delenv("HETCC_TRUST_ENGINES", raising=False)
    monkeypatch.setattr(_common, "_built_here", set())
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"an engine from somewhere else")
    artifact = Artifact("tensorrt:cuda:0", {"engine": str(plan)}, {"segment": "seg0", "engine": H100})
    with pytest.raises(BundleError, match="compiled native code.*HETCC_TRUST_ENGINES=1"):
        trtb.TensorRTBackend().load(artifact, TRT)
    _common.remember_built(plan)  # as lower() does: built here, so trusted; the next check speaks
    with pytest.raises(BundleError, match="TensorRT 10.3.0"):
        trtb.TensorRTBackend().load(artifact, TRT)
    plan.write_bytes(b"changed after it was built")
    with pytest.raises(BundleError, match="did not build it"):
        trtb.TensorRTBackend().load(artifact, TRT)
    monkeypatch.setenv("HETCC_TRUST_ENGINES", "1")
    with pytest.raises(BundleError, match="TensorRT 10.3.0"):
        trtb.TensorRTBackend().load(artifact, TRT)


def test_shapes_outside_the_engine_profile_are_input_errors():
    profile = {"x": {"min": [1, 16], "opt": [4, 16], "max": [64, 16]}}
    names = (["x_seg"], ["x"])
    trtb.check_shapes(profile, names, [torch.zeros(64, 16)], "seg0")
    with pytest.raises(InputError, match="dimension 0 of input x_seg is 65, outside 1..64.*dynamic_max"):
        trtb.check_shapes(profile, names, [torch.zeros(65, 16)], "seg0")
    with pytest.raises(InputError, match="built for 16 only"):
        trtb.check_shapes(profile, names, [torch.zeros(2, 8)], "seg0")
    with pytest.raises(InputError, match="has 3 dimensions"):
        trtb.check_shapes(profile, names, [torch.zeros(2, 16, 1)], "seg0")


class _Config:
    def __init__(self):
        self.flags = {"TF32"}  # TensorRT's default

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)


def _fake_trt(version, *flags):
    return types.SimpleNamespace(__version__=version, BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}))


def test_precision_flags():
    trt10 = _fake_trt("10.3.0", "TF32", "FP16", "BF16")
    for precision, flags in (("fp32", set()), ("tf32", {"TF32"}), ("fp16", {"FP16"}), ("bf16", {"BF16"})):
        config = _Config()
        trtb._set_precision(trt10, config, precision)
        assert config.flags == flags, precision
    with pytest.raises(RuntimeError, match="needs TensorRT 10"):  # 11 removed weak typing
        trtb._set_precision(_fake_trt("11.4.0", "TF32"), _Config(), "fp16")
    # static int8 is Q/DQ in the file: TensorRT 10 builds it in int8 with BuilderFlag.INT8, 11
    # (strongly typed, no INT8 flag) as written
    config = _Config()
    trtb._set_precision(_fake_trt("10.3.0", "TF32", "FP16", "BF16", "INT8"), config, "int8s")
    assert config.flags == {"INT8"}
    config = _Config()
    trtb._set_precision(_fake_trt("11.4.0", "TF32"), config, "int8s")
    assert config.flags == set()


def test_tensorrt_static_int8_is_symmetric_qdq_from_the_calibration_batches(tmp_path):
    # what TensorRT would parse, built and checked here without a GPU: every activation and weight
    # quantized to int8 with zero point 0 (TensorRT quantizes symmetrically only), scales from the
    # batches, and the file still computes the model within int8's error
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from hetcc.backends.onnx_quantize import quantized_static

    torch.manual_seed(0)
    model = LinearReluNorm().eval()
    x = torch.randn(32, 16)
    _, seg = make_segment(model, (x,))
    seg.calibration = [(x,), (3.0 * torch.randn(32, 16),)]
    exported = quantized_static(export_onnx(seg, tmp_path, "tensorrt"), seg, tmp_path, symmetric=True)
    graph = onnx.load(exported.files["model"])
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    quantize = [n for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quantize and any(n.op_type == "QuantizeLinear" for n in quantize)
    for n in quantize:
        zero = inits[n.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), n.name
    first = next(n for n in graph.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] == graph.graph.input[0].name)
    # symmetric min-max over the batches: the widest batch (3x) sets the input's scale
    widest = max(float(b[0].abs().max()) for b in seg.calibration)
    assert float(inits[first.input[1]]) == pytest.approx(widest / 127, rel=0.02)
    # the QDQ pairs run as written (quantize, dequantize, a float product): TensorRT's int8 kernels
    # accumulate in int32, where ONNX Runtime's fused CPU kernel without VNNI saturates int16 sums
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exported.files["model"], options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {graph.graph.input[0].name: x.numpy()})
    want = seg.reference(x)[0]
    assert float((torch.from_numpy(got) - want).norm() / want.norm()) < 0.05


# ---------------------------------------------------------------------------------------------
# capability (TensorRT and MIGraphX), from the node alone


def _cases():
    aten = torch.ops.aten
    return {
        "linear": (_node(LinearReluNorm(), (torch.randn(2, 16),), aten.addmm.default), None, None),
        "embedding": (_node(torch.nn.Embedding(10, 4), (torch.randint(0, 10, (2, 3)),),
                            aten.embedding.default), None, None),
        "float64": (_node(_Fn(lambda x: x * 2), (torch.randn(3, dtype=torch.float64),), aten.mul.Tensor),
                    "float64", "float64"),
        "int64 matmul": (_node(_Fn(torch.mm), (torch.ones(2, 2, dtype=torch.long),) * 2, aten.mm.default),
                         "int64 matrix multiply", None),
        "uint8 cast": (_node(_Fn(lambda x: x.float() * 2), (torch.ones(3, dtype=torch.uint8),),
                             aten._to_copy.default), None, None),
        "uint8 add": (_node(_Fn(lambda x: x + 1), (torch.ones(3, dtype=torch.uint8),), aten.add.Tensor),
                      "uint8", None),
        "bfloat16": (_node(_Fn(lambda x: x * 2), (torch.randn(3, dtype=torch.bfloat16),), aten.mul.Tensor),
                     None, "bfloat16"),
        "nonzero": (_node(_Fn(torch.nonzero), (torch.randn(3, 4),), aten.nonzero.default),
                    "depends on the data", "depends on the data"),
        "eigh": (_node(_Fn(lambda x: torch.linalg.eigh(x)[0]), (torch.randn(3, 3),), aten._linalg_eigh.default),
                 "no ONNX translation", "no ONNX translation"),
    }


@pytest.fixture(scope="module")
def capability_cases():
    return _cases()


CASE_NAMES = ["linear", "embedding", "float64", "int64 matmul", "uint8 cast", "uint8 add", "bfloat16",
              "nonzero", "eigh"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_capability(case, capability_cases):
    node, trt_says, mgx_says = capability_cases[case]
    for problem, says in ((trtb.node_problem(node), trt_says), (mgx.node_problem(node), mgx_says)):
        if says is None:
            assert problem is None, problem
        else:
            assert problem and says in problem


def test_supports_combines_availability_and_the_node(monkeypatch, capability_cases):
    backend = trtb.TensorRTBackend()
    monkeypatch.setattr(trtb.TensorRTBackend, "target_problem", lambda self, target: None)  # as with a GPU
    assert backend.supports(capability_cases["linear"][0], TRT)
    answer = backend.supports(capability_cases["float64"][0], TRT)
    assert not answer and "TensorRT has no float64" in answer.reason


# ---------------------------------------------------------------------------------------------
# MIGraphX: devices, routes, checks


def test_gfx_names():
    assert [gpus.gfx_name(v) for v in (90402, 90010, 110000, 100300, 90008)] == \
        ["gfx942", "gfx90a", "gfx1100", "gfx1030", "gfx908"]


def test_rocm_gpus_from_the_driver_topology(tmp_path):
    for node, version in (("0", 0), ("1", 90402), ("2", 90402), ("10", 90010)):
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(f"cpu_cores_count 0\ngfx_target_version {version}\n")
    assert gpus.rocm_gpus(tmp_path) == ["gfx942", "gfx942", "gfx90a"]
    assert gpus.rocm_gpus(tmp_path / "absent") == []


@pytest.mark.parametrize("wanted, module, ep, index, route, says", [
    ("auto", None, None, 0, "migraphx", None),
    ("auto", "no module", None, 0, "onnxruntime", None),
    ("auto", None, None, 1, "onnxruntime", None),
    ("migraphx", None, None, 1, None, "HIP_VISIBLE_DEVICES=1"),
    ("onnxruntime", None, "no provider", 0, None, "no provider"),
    ("auto", "no module", "no provider", 0, None, "neither MIGraphX route"),
])
def test_route_choice(wanted, module, ep, index, route, says):
    got, why = mgx.choose_route(wanted, module, ep, index)
    assert got == route
    assert (why is None) if says is None else (says in why)


def test_migraphx_absent_names_both_routes(no_migraphx):
    backend = mgx.MIGraphXBackend()
    why = backend.why_unavailable(MGX)
    assert "migraphx Python module is not importable" in why and "onnxruntime-migraphx" in why
    with pytest.raises(TargetError, match="Usable here:.*torch:cpu"):
        resolve(MGX)
    with pytest.raises(TargetError, match="route must be"):
        mgx.MIGraphXBackend(route="hip")


def test_migraphx_placeholder_module_is_absent(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "migraphx", types.ModuleType("migraphx"))
    mgx._migraphx_or_error.cache_clear()
    try:
        assert "placeholder" in mgx._migraphx_or_error()[1]
    finally:
        mgx._migraphx_or_error.cache_clear()


@pytest.mark.parametrize("built, here, says", [
    ({"route": "migraphx", "gfx": "gfx942", "migraphx": "2.12"},
     {"gfx": "gfx90a", "migraphx": "2.12"}, "gfx90a, which cannot run it"),
    ({"route": "migraphx", "gfx": "gfx942", "migraphx": "2.12"},
     {"gfx": "gfx942", "migraphx": "2.13"}, "install MIGraphX 2.12"),
    ({"route": "migraphx", "gfx": "gfx942"}, {"gfx": "gfx942", "module_problem": "not importable"},
     "install ROCm's migraphx"),
    ({"route": "onnxruntime", "gfx": "gfx942"}, {"gfx": None, "ep_problem": "no provider"}, "no provider"),
    ({"route": "migraphx", "gfx": "gfx942", "migraphx": "2.12"}, {"gfx": "gfx942", "migraphx": "2.12"}, None),
    ({"route": "onnxruntime", "gfx": "gfx942"}, {"gfx": "gfx90a"}, None),  # compiled at load: any gfx
])
def test_migraphx_program_check(built, here, says):
    error = mgx.check_program(built, here, "migraphx:rocm:0")
    assert (error is None) if says is None else (says in error)
    if says and "cannot" in says:
        assert "hetcc compile" in error


class _FakeMIGraphX:
    """Stands in for ROCm's migraphx module so the executable's own logic (a program per input
    shape, names, dtypes, hand-over) runs here: a 'program' is the ONNX file on ONNX Runtime's CPU
    provider, checked to be run only at the shapes it was 'compiled' for."""

    def __init__(self):
        self.compiled = []

    def parse_onnx(self, path, map_input_dims):
        import onnxruntime as ort

        fake = self

        class Program:
            def __init__(self):
                self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                self.dims = {k: list(v) for k, v in map_input_dims.items()}

            def compile(self, target, offload_copy, fast_math):
                assert offload_copy and not fast_math
                fake.compiled.append(self.dims)

            def run(self, params):
                assert {k: list(v.shape) for k, v in params.items()} == self.dims
                return self.session.run(None, params)

        return Program()

    def get_target(self, name):
        return name

    def argument(self, array):
        return array


def test_migraphx_executable_compiles_once_per_new_shape(dynamic_segment, exported):
    fake = _FakeMIGraphX()
    first = mgx.compile_program(fake, exported.files["model"], {exported.input_names[0]: [4, 16]}, "fp32", False)
    meta = mgx.program_meta(dynamic_segment, exported, "migraphx", "fp32", False, "gfx942", {"migraphx": "2.12"})
    assert json.loads(json.dumps(meta)) == meta and meta["built_for"]["gfx"] == "gfx942"
    run = mgx.MxrExecutable(fake, first, dict(meta, max_programs=2), exported.files["model"])
    for n in (4, 7, 7, 2, 4):
        x = torch.randn(n, 16)
        torch.testing.assert_close(run(x)[0], dynamic_segment.reference(x)[0], rtol=1e-4, atol=1e-4)
    assert [d[exported.input_names[0]][0] for d in fake.compiled] == [4, 7, 2, 4]  # 4 was evicted
    fixed = mgx.MxrExecutable(fake, first, meta, None)  # no ONNX kept: a static segment
    with pytest.raises(InputError, match="compiled for input shapes"):
        fixed(torch.randn(5, 16))


# ---------------------------------------------------------------------------------------------
# cost model: which spec a GPU target gets


def test_cpu_targets_keep_their_spec():
    assert td.device_for_target("onnxruntime:cpu") is None


@pytest.mark.parametrize("name, device", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-sxm"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm-80gb"), ("NVIDIA L4", "l4"), ("NVIDIA B200", "b200"),
    ("AMD Instinct MI300X", "mi300x"), ("AMD Instinct MI250X", "mi250x"), ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_names_map_to_the_registry(name, device):
    assert td.registry_name(name) == device


def test_cuda_target_without_a_gpu_gets_the_documented_default(caplog, no_cuda):
    with caplog.at_level(logging.INFO, logger="hetcc.cost_model.target_devices"):
        spec = td.device_for_target("tensorrt:cuda:0")
    assert spec.name == "h100-sxm"
    assert "no cuda GPU 0 is present here" in caplog.text and "h100-sxm" in caplog.text


def test_cuda_target_reads_the_gpu_name(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.version, "hip", None)
    names = {0: "NVIDIA L4", 1: "NVIDIA GeForce RTX 4090"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: names[i])
    assert td.device_for_target("torch:cuda:0").name == "l4"
    with caplog.at_level(logging.WARNING):
        assert td.device_for_target("tensorrt:cuda:1").name == "h100-sxm"
    assert "RTX 4090" in caplog.text and "does not know" in caplog.text


def test_rocm_targets_map_gfx(monkeypatch, tmp_path, no_cuda):
    assert td.device_for_target("iree:rocm:gfx942").name == "mi300x"
    assert td.device_for_target("iree:rocm:gfx90a").name == "mi250x"
    assert td.device_for_target("iree:rocm:gfx1100").name == "mi300x"  # unknown: the default
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "properties").write_text("gfx_target_version 90010\n")
    monkeypatch.setattr(gpus, "KFD_NODES", str(tmp_path))
    assert td.device_for_target("migraphx:rocm:0").name == "mi250x"  # from the driver's agent list
    assert td.device_for_target("migraphx:rocm:1").name == "mi300x"  # not present: the default


def test_gpu_profiles_exist_for_every_gpu_target():
    for target in ("tensorrt:cuda:0", "migraphx:rocm:0", "torch:cuda:0"):
        key = td.profile_name(target)
        assert key in DEFAULT_PROFILES and key != "torch"
    assert td.profile_name("torch:cpu") == "torch"


# ---------------------------------------------------------------------------------------------
# on a GPU (skipped here, with the reason)

needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
needs_trt = pytest.mark.skipif(not (HAVE_CUDA and HAVE_TRT),
                               reason="needs TensorRT (pip install tensorrt-cu12) and an NVIDIA GPU")


def _ort_cuda_why() -> str:
    from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend().why_unavailable(Target.parse("onnxruntime:cuda:0"))[:200]


def _ort_cuda_ok() -> bool:
    return not _ort_cuda_why()


def _mlp():
    torch.manual_seed(0)
    return LinearReluNorm().eval(), (torch.randn(4, 16),)


def _check_compiled(cm, model, dynamic: bool, rtol=1e-4, atol=1e-4):
    for n in ((4, 1, 9) if dynamic else (4,)):
        x = torch.randn(n, 16)
        got = cm(x)
        assert got.device.type == "cpu"
        torch.testing.assert_close(got, model(x), rtol=rtol, atol=atol)


def _threads(cm, model, count=4):
    errors = []

    def work():
        try:
            for _ in range(5):
                x = torch.randn(4, 16)
                torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("options", [{}, {"compile": True}])
def test_torch_cuda_compile_verify_and_bundle(tmp_path, options):
    import hetcc

    model, args = _mlp()
    batch = torch.export.Dim("batch", min=1, max=64)
    cm = hetcc.compile(model, args, targets=["torch:cuda:0"], dynamic_shapes=({0: batch},), measure=False,
                       backend_options={"torch": options})
    assert cm.plan.targets_used() == ["torch:cuda:0"]
    _check_compiled(cm, model, dynamic=True)
    _threads(cm, model)
    loaded = hetcc.load(cm.save(tmp_path / "b"))
    _check_compiled(loaded, model, dynamic=True)


@pytest.mark.gpu
@needs_trt
def test_tensorrt_compile_verify_and_bundle(tmp_path):
    import hetcc

    model, args = _mlp()
    batch = torch.export.Dim("batch", min=1, max=64)
    cm = hetcc.compile(model, args, targets=["tensorrt:cuda:0", "torch:cpu"], dynamic_shapes=({0: batch},),
                       measure=False)
    assert "tensorrt:cuda:0" in cm.plan.targets_used(), cm.plan.summary()
    _check_compiled(cm, model, dynamic=True)
    _threads(cm, model)
    path = cm.save(tmp_path / "b")
    meta = [s["meta"] for s in json.loads((path / "manifest.json").read_text())["segments"]
            if s["target"] == "tensorrt:cuda:0"][0]
    assert meta["engine"]["tensorrt"] and meta["engine"]["compute_capability"]
    _check_compiled(hetcc.load(path), model, dynamic=True)


@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp16(tmp_path):
    import hetcc

    model, args = _mlp()
    # fp16 kernels are verified at half-precision tolerances (the default fp32 ones would reject them)
    cm = hetcc.compile(model, args, targets=["tensorrt:cuda:0", "torch:cpu"], measure=False, rtol=2e-2,
                       atol=2e-2, backend_options={"tensorrt": {"precision": "fp16"}})
    assert "tensorrt:cuda:0" in cm.plan.targets_used(), cm.plan.summary()
    _check_compiled(cm, model, dynamic=False, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not mgx.MIGraphXBackend().is_available(MGX),
                    reason=f"needs MIGraphX on an AMD GPU: {mgx.MIGraphXBackend().why_unavailable(MGX)[:200]}")
def test_migraphx_compile_verify_and_bundle(tmp_path):
    import hetcc

    model, args = _mlp()
    cm = hetcc.compile(model, args, targets=["migraphx:rocm:0", "torch:cpu"], measure=False)
    assert "migraphx:rocm:0" in cm.plan.targets_used(), cm.plan.summary()
    _check_compiled(cm, model, dynamic=False)
    _threads(cm, model)
    _check_compiled(hetcc.load(cm.save(tmp_path / "b")), model, dynamic=False)


@pytest.mark.gpu
@needs_cuda
def test_cuda_inputs_stay_on_the_gpu_and_outputs_where_asked():
    import hetcc

    model, (x,) = _mlp()
    cm = hetcc.compile(model, (x,), targets=["torch:cuda:0"], tune="off")
    with cm.runtime.watch_copies() as copies:
        got = cm(x.cuda())
    assert got.device.type == "cpu" and [c[:2] for c in copies] == [("cpu", tuple(got.shape))]  # out only
    torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)
    cm.output_device = "keep"
    with cm.runtime.watch_copies() as copies:
        got = cm(x.cuda())
    assert got.is_cuda and copies == []  # nothing crossed the host link
    torch.testing.assert_close(got.cpu(), model(x), rtol=1e-4, atol=1e-4)
    with cm.runtime.watch_copies() as copies:
        got = cm(x)  # a host input: one copy in, none out
    assert got.is_cuda and [c[:2] for c in copies] == [("cuda:0", tuple(x.shape))]


@pytest.mark.gpu
@needs_cuda
def test_a_cpu_gpu_split_copies_only_at_its_cuts():
    import hetcc

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    cm = hetcc.compile(model, (x,), targets=["torch:cuda:0", "torch:cpu"], tune="off",
                       pins={"0": "torch:cpu", "2": "torch:cuda:0"})
    assert set(cm.plan.targets_used()) == {"torch:cpu", "torch:cuda:0"}, cm.plan.summary()
    with cm.runtime.watch_copies() as copies:
        torch.testing.assert_close(cm(x), model(x), rtol=1e-4, atol=1e-4)
    # the cut (host -> GPU) and the output (GPU -> host): two copies, each once
    assert sorted(c[0] for c in copies) == ["cpu", "cuda:0"], copies


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_CUDA and _ort_cuda_ok()), reason=f"needs onnxruntime-gpu's CUDA provider: {_ort_cuda_why()}")
def test_onnxruntime_cuda_compile_verify_and_bundle(tmp_path):
    import hetcc

    model, args = _mlp()
    batch = torch.export.Dim("batch", min=1, max=64)
    cm = hetcc.compile(model, args, targets=["onnxruntime:cuda:0", "torch:cpu"], dynamic_shapes=({0: batch},),
                       tune="off")
    assert "onnxruntime:cuda:0" in cm.plan.targets_used(), cm.plan.summary()
    _check_compiled(cm, model, dynamic=True)
    _threads(cm, model)
    _check_compiled(hetcc.load(cm.save(tmp_path / "b")), model, dynamic=True)


def test_a_smaller_gpu_of_a_known_family_keeps_its_own_memory(monkeypatch):
    # an A100 40GB matches the registry's (80 GB) A100: the capacity must be the 40 GB it has
    import types

    import torch

    from hetcc.cost_model.target_devices import device_for_target

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA A100-SXM4-40GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i=0: types.SimpleNamespace(total_memory=40 * 2**30, name="NVIDIA A100-SXM4-40GB"))
    spec = device_for_target("torch:cuda:0")
    assert spec.name.startswith("a100") and spec.mem_capacity == 40 * 2**30
    assert device_for_target("torch:cuda:3").mem_capacity > 40 * 2**30  # not that GPU: the default


def test_tensorrt_says_what_is_missing_in_order(monkeypatch):
    # TensorRT first (its package name depends on CUDA), then the exporter, then the GPU
    def answer(result):
        def call():
            return result
        call.cache_clear = lambda: None
        return call

    monkeypatch.setattr(trtb, "missing_packages", lambda names: ("onnxscript",))
    monkeypatch.setattr(trtb, "_tensorrt_or_error", answer((None, "tensorrt is missing: pip install tensorrt")))
    assert trtb.TensorRTBackend().why_unavailable(TRT) == "tensorrt is missing: pip install tensorrt"
    monkeypatch.setattr(trtb, "_tensorrt_or_error", answer((object(), None)))
    why = trtb.TensorRTBackend().why_unavailable(TRT)
    assert why == ("Python package onnxscript (the ONNX exporter TensorRT's input goes through) not "
                   "installed; install with: pip install onnxscript")
    monkeypatch.setattr(trtb, "missing_packages", lambda names: ())
    monkeypatch.setattr(trtb, "cuda_problem", lambda target: "no GPU 0 here")
    assert trtb.TensorRTBackend().why_unavailable(TRT) == "no GPU 0 here"


def test_migraphx_names_the_exporter_before_its_routes(monkeypatch):
    monkeypatch.setattr(mgx, "missing_packages", lambda names: ("onnx",))
    assert mgx.MIGraphXBackend().why_unavailable(MGX) == \
        "the ONNX exporter needs onnx; install with: pip install onnx"
    assert "device index must be a number" in mgx.MIGraphXBackend().why_unavailable(
        Target.parse("migraphx:rocm:gfx942"))
