"""hetcc: split a PyTorch model across heterogeneous runtimes, verified against PyTorch.

    import hetcc
    cm = hetcc.compile(model, example_inputs, targets=["openvino:cpu", "onnxruntime:cpu", "torch:cpu"])
    y = cm(*example_inputs)
    print(cm.plan.summary())

Importing hetcc imports no vendor SDK; backends load theirs when first used.
"""
from hetcc.errors import HetccError
from hetcc.target import Target

__version__ = "0.1.0"
__all__ = ["compile", "compile_lm", "load", "load_lm", "analyze", "analyze_phases", "predict", "Target", "HetccError", "__version__"]


def compile(model, example_inputs, targets=("torch:cpu",), **options):
    """See :func:`hetcc.compiler.compile`."""
    from hetcc.compiler import compile as _compile

    return _compile(model, example_inputs, targets, **options)


def compile_lm(model, prompt_len, max_new_tokens, batch=1, targets=("torch:cpu",), **options):
    """See :func:`hetcc.lm.model.compile_lm`: a transformers causal LM compiled as a prefill and a
    decode phase, each on its own targets, with a generation loop."""
    from hetcc.lm.model import compile_lm as _compile_lm

    return _compile_lm(model, prompt_len, max_new_tokens, batch, targets, **options)


def analyze(model, example_inputs, dynamic_shapes=None):
    """See :func:`hetcc.analysis.analyze`."""
    from hetcc.analysis import analyze as _analyze

    return _analyze(model, example_inputs, dynamic_shapes)


def analyze_phases(model_or_config, batch, context, **options):
    """See :func:`hetcc.phases.analyze_phases`: prefill and decode of a decoder, counted apart."""
    from hetcc.phases import analyze_phases as _analyze_phases

    return _analyze_phases(model_or_config, batch, context, **options)


def predict(model, example_inputs, devices, **options):
    """See :func:`hetcc.device_plan.predict`: place a model across devices that need not be
    present and predict latency, throughput and cost; nothing is lowered."""
    from hetcc.device_plan import predict as _predict

    return _predict(model, example_inputs, devices, **options)


def load(path, trust_engines: bool = False, output_device: str = "cpu", segments=None):
    """Load a bundle directory written by ``CompiledModel.save``; see :func:`hetcc.bundle.load`."""
    from hetcc.bundle import load as _load

    return _load(path, trust_engines=trust_engines, output_device=output_device, segments=segments)


def load_lm(path, trust_engines: bool = False):
    """Load a directory written by ``CompiledLM.save``; see :func:`hetcc.lm.bundle.load`."""
    from hetcc.lm.bundle import load as _load_lm

    return _load_lm(path, trust_engines=trust_engines)
