"""Both phases of a causal LM placed on devices that need not be present, with the KV cache's trip
between them: ``hetcc.lm.predict_lm`` and ``hetcc plan-lm``. Nothing is lowered.

Prefill is placed for latency (time to first token); decode for latency too (time per output
token), with its KV cache resident on the devices that read it (``resident_inputs``: it counts
against their capacity and is not moved per step). Prefill's own prediction already brings its keys
and values to the host (they are its outputs); the hand-over adds their trip from the host onto the
decode device, once per request, over the slowest host link among the decode devices. When both
phases use the same devices the hand-over is free (the cache stays where prefill wrote it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hetcc.device_plan import predict
from hetcc.lm.graphs import DecodeGraph, PrefillGraph, check_model, layer_count
from hetcc.lm.model import example_inputs

RESIDENT = ("kv_",)
"""The decode graph's cache inputs are named kv_0, kv_1, ... by torch.export (its ``*kv`` argument)."""


@dataclass(frozen=True)
class LMPrediction:
    prefill: object
    """hetcc.device_plan.Prediction of the prefill graph."""
    decode: object
    """... and of one decode step at the full context."""
    kv_bytes: int
    """One request's prompt keys and values, handed from prefill to decode."""
    handover_seconds: float
    """The whole batch's hand-over (``batch`` requests' keys and values): a batch's first token
    waits for all of it."""
    batch: int
    prompt_len: int
    max_new_tokens: int

    @property
    def ttft(self) -> float:
        return self.prefill.latency_seconds + self.handover_seconds

    @property
    def tpot(self) -> float:
        return self.decode.latency_seconds

    def summary(self) -> str:
        head = (f"predicted, not measured: batch {self.batch}, prompt {self.prompt_len} tokens, "
                f"{self.max_new_tokens} new")
        handover = (f"KV hand-over {self.kv_bytes / 1e6:.2f} MB per request, {self.batch} per batch: "
                    f"{self.handover_seconds * 1e3:.3f} ms from {'+'.join(self.prefill.devices_used)} to "
                    f"{'+'.join(self.decode.devices_used)}")
        request = (self.ttft + (self.max_new_tokens - 1) * self.tpot) * 1e3
        times = (f"time to first token {self.ttft * 1e3:.3f} ms (prefill + hand-over), time per output "
                 f"token {self.tpot * 1e3:.3f} ms; a request of {self.max_new_tokens} tokens {request:.2f} ms")
        return "\n".join([head, "prefill:", self.prefill.summary(), "decode (one step, cache resident):",
                          self.decode.summary(), handover, times])


def predict_lm(model, prompt_len: int, max_new_tokens: int, prefill_devices, decode_devices, *,
               batch: int = 1, dtype: str = "fp32", **options) -> LMPrediction:
    """Place the prefill graph on ``prefill_devices`` and the decode graph on ``decode_devices``
    (registry names, docs/devices.md) and predict TTFT, TPOT and the KV hand-over per request.
    ``options`` go to hetcc.predict for both phases (device_files, memory_fraction, time_limit)."""
    check_model(model, prompt_len + max_new_tokens)
    model = model.eval()
    layers = layer_count(model)
    shape, (prefill_inputs, decode_inputs, *_) = example_inputs(model, layers, batch, prompt_len, max_new_tokens,
                                                       None, 0)
    with torch.no_grad():
        prefill = predict(PrefillGraph(model, layers), prefill_inputs, prefill_devices, dtype=dtype, **options)
        decode = predict(DecodeGraph(model), decode_inputs, decode_devices, dtype=dtype,
                         resident_inputs=RESIDENT, **options)
    width = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    per_request = sum(c[1] * prompt_len * c[3] for c in shape.cache) * width
    seconds = 0.0
    if set(prefill.devices_used) != set(decode.devices_used):
        from hetcc.cost_model.registry import registry

        reg = registry(options.get("device_files", ()))
        links = [reg[_base(d)] for d in decode.devices_used]
        bandwidth = min(s.host_link_bandwidth for s in links)
        seconds = max(s.host_link_latency for s in links) + batch * per_request / bandwidth
    return LMPrediction(prefill, decode, per_request, seconds, batch, prompt_len, max_new_tokens)


def _base(label: str) -> str:
    """A device label as predict reports it ("h100-sxm", "h100-sxm#2") -> its registry name."""
    return label.split("#", 1)[0]
