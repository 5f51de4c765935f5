"""hetcc: a graph compiler for heterogeneous AI inference.

The repository's top-level folders map into the ``hetcc`` package, so nothing installs a generic
top-level ``backends`` or ``passes`` module.
"""
from setuptools import setup

PACKAGES = {
    "hetcc": "hetcc",
    "hetcc.cli": "hetcc/cli",
    "hetcc.explain": "hetcc/explain",
    "hetcc.measure": "hetcc/measure",
    "hetcc.cluster": "hetcc/cluster",
    "hetcc.lm": "hetcc/lm",
    "hetcc.passes": "passes",
    "hetcc.backends": "backends",
    "hetcc.cost_model": "cost_model",
}

setup(
    name="hetcc",
    version="0.1.0",
    description="Graph compiler that splits PyTorch models across heterogeneous runtimes",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    # torch is deliberately not pinned here: the CPU wheel is pinned by requirements/constraints.txt,
    # GPU machines bring their own (2.11 and newer work).
    install_requires=["torch>=2.11", "numpy", "networkx", "scipy", "rich", "safetensors"],
    extras_require={
        "onnxruntime": ["onnx", "onnxscript", "onnxruntime"],
        "openvino": ["openvino"],
        # static int8 on OpenVINO (openvino:cpu@int8s); segments it saved load without it
        "nncf": ["openvino", "nncf"],
        "tensorrt": ["tensorrt", "onnx", "onnxscript"],
        "iree": ["iree-base-compiler", "iree-base-runtime", "torch-mlir"],
        # Hugging Face models (examples/hf_models.py, tests/test_hf_models.py)
        "hf": ["transformers"],
        # benchmarks/bench_native.py: the vendors' whole-model paths, IREE's through iree-turbine
        "bench": ["transformers", "iree-turbine", "onnx", "onnxscript", "onnxruntime", "openvino",
                  "iree-base-compiler", "iree-base-runtime", "torch-mlir"],
        # hetcc.cluster: a bundle's stages in Ray actors (tests/test_cluster.py)
        "ray": ["ray[serve]"],
        "yaml": ["pyyaml"],
        "plot": ["matplotlib"],
        "test": ["pytest", "pytest-xdist"],
    },
    entry_points={
        "console_scripts": ["hetcc = hetcc.cli:main"],
        "hetcc.backends": [
            "torch = hetcc.backends.torch_backend:TorchBackend",
            "onnxruntime = hetcc.backends.onnxruntime_backend:OnnxRuntimeBackend",
            "openvino = hetcc.backends.openvino_backend:OpenVinoBackend",
            "tensorrt = hetcc.backends.tensorrt_backend:TensorRTBackend",
            "migraphx = hetcc.backends.migraphx_backend:MIGraphXBackend",
            "iree = hetcc.backends.iree_backend:IreeBackend",
        ],
    },
)
