"""Causal language models compiled for generation: prefill and decode as two compiled phases, the
KV cache handed over between them, and a generation loop (docs/generation.md)."""
from hetcc.lm.model import CompiledLM, Generation, compile_lm
from hetcc.lm.predict import LMPrediction, predict_lm
from hetcc.lm.sampling import Sampling

__all__ = ["CompiledLM", "Generation", "LMPrediction", "Sampling", "compile_lm", "predict_lm"]
