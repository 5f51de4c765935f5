"""Int8 weights rounded to fit calibration batches (GPTQ), for ONNX Runtime's dynamic int8.

quantize_dynamic rounds each weight to its nearest int8 step. Rounding errors of one output
channel's weights then add up in its output in proportion to the inputs they meet; rounding each
weight in turn and moving the not yet rounded ones of its channel to make up for its error, weighed
by how the layer's inputs co-vary (their second moments H = XᵀX), cancels much of that: GPTQ
(Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"). The scales and zero points stay quantize_dynamic's; only which int8 value each
weight takes changes, so the file, its kernels and its speed are what they were.

On bert in ``onnxruntime:cpu@int8`` with 7-bit weights (a CPU without VNNI), fitted to 8 calibration
batches, the error on its example inputs went from 1.34 % to 0.94 %, and 0.96 % on 8 inputs neither
saw (docs/precision.md).

H comes from the calibration batches the user gave (compile(calibration=...)), not from the example
inputs: the budget is measured on those, and weights fitted to them would measure better there
than on the next input (bert, fitted on its example alone: 0.66 % on it, 1.05 % on others)."""
from __future__ import annotations

import numpy as np

DAMPING = 0.01
"""Added to H's diagonal, as a share of its mean: keeps H invertible where the batches hold fewer
rows than a layer has inputs, and the fit from leaning on directions they barely saw (GPTQ's own
default)."""

BLOCK = 128
"""Columns rounded between updates of the rest of the weight (GPTQ's lazy batch updates): the same
result as one at a time, in fewer, larger products."""

CACHED_BYTES = 256 << 20
"""Bytes of fits kept per process (``fitted_once``, the oldest dropped first): a compile lowers one
segment in int8 several times (tuning's candidates, nodes left in fp32, a precision given up in
part), each time with the same weights and batches, and a fit takes a second or more for a
2048-wide layer. Kept as int16, 2 bytes a weight: a 100M-weight model's fits take 200 MB."""

_fits: dict[bytes, np.ndarray] = {}


def fitted(weight, second_moments, scale, zero, low: int, high: int):
    """The int8 values (an int64 array shaped as ``weight``) for ``weight`` ([K, N] as an ONNX
    MatMul reads it: inputs by outputs) with ``scale`` and ``zero`` per output column and values in
    [low, high], rounded in turn so that ``x @ weight`` moves least over inputs x whose second
    moments are ``second_moments`` ([K, K]). Inputs that were always zero there (a zero diagonal)
    are rounded to nearest."""
    import torch

    w = torch.as_tensor(np.asarray(weight, dtype=np.float64)).T.clone()  # [N, K]: a row per output
    h = torch.as_tensor(np.asarray(second_moments, dtype=np.float64)).clone()
    s = torch.as_tensor(np.asarray(scale, dtype=np.float64)).reshape(-1, 1)
    z = torch.as_tensor(np.asarray(zero, dtype=np.float64)).reshape(-1, 1)
    k = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    # the inputs that carry most first (GPTQ's act-order): their errors have the most left to
    # spread over; the scales are per output, so the order changes no step
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    upper = _inverse_factor(h)
    q = torch.zeros_like(w)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block, u = w[:, start:end].clone(), upper[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            column = block[:, i:i + 1]
            steps = torch.clamp(torch.round(column / s) + z, low, high)
            q[:, start + i:start + i + 1] = steps
            error = (column - (steps - z) * s) / u[i, i]
            block[:, i:] -= error @ u[i:i + 1, i:]
            errors[:, i:i + 1] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    back = torch.argsort(order)
    return q[:, back].T.numpy().astype(np.int64)


def fitted_once(weight, second_moments, scale, zero, low: int, high: int):
    """``fitted`` as int16, computed once per process for the same arguments."""
    import hashlib

    digest = hashlib.blake2b(digest_size=20)
    for array in (weight, second_moments, scale, zero):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(f"{low},{high}".encode())
    key = digest.digest()
    if key not in _fits:
        steps = fitted(weight, second_moments, scale, zero, low, high).astype(np.int16)  # int8 or uint8 steps
        while _fits and sum(a.nbytes for a in _fits.values()) + steps.nbytes > CACHED_BYTES:
            del _fits[next(iter(_fits))]  # the oldest
        if steps.nbytes <= CACHED_BYTES:
            _fits[key] = steps
        return steps
    return _fits[key]


def _inverse_factor(h):
    """The upper Cholesky factor of H's inverse, H damped (more where the first damping leaves it
    singular in floating point)."""
    import torch

    eye = torch.eye(h.shape[0], dtype=h.dtype)
    mean = float(torch.mean(torch.diag(h)))
    for damping in (DAMPING, 10 * DAMPING, 100 * DAMPING):
        try:
            lower = torch.linalg.cholesky(h + damping * mean * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError: not positive definite in float64
            continue
    raise ValueError("the inputs' second moments are not positive definite even damped")


def second_moments(model, names: list[str], input_names, batches) -> dict:
    """For each of ``names`` (values of ``model``, an fp32 ModelProto; graph inputs and node outputs,
    others skipped), XᵀX over every row of it
    (its last axis the columns) on ``batches`` (tuples of tensors in the order of ``input_names``;
    a None name, an input the exporter dropped, is skipped), run by ONNX Runtime."""
    import onnx

    from hetcc.backends._common import to_numpy
    from hetcc.backends.onnx_sensitivity import sensitivity_session

    inputs = {i.name for i in model.graph.input}
    produced = {o for node in model.graph.node for o in node.output}
    # a constant input (an initializer) varies with no batch: its product is rounded to nearest
    names = [n for n in dict.fromkeys(names) if n in inputs or n in produced]
    wanted = [n for n in names if n not in inputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = sensitivity_session(probe)
    del probe
    out: dict = {}
    for batch in batches:
        feed = {n: to_numpy(x) for n, x in zip(input_names, batch) if n}
        values = dict(zip(wanted, session.run(wanted, feed))) if wanted else {}
        values.update({n: feed[n] for n in names if n in feed})
        for name in names:
            x = np.asarray(values[name], dtype=np.float32)
            x = x.reshape(-1, x.shape[-1])
            out[name] = out.get(name, 0) + (x.T @ x).astype(np.float64)  # summed over batches in float64
    return out


def fit(path, source, tied: dict, moments: dict, *, reduce_range: bool, unsigned: bool) -> tuple[int, int]:
    """Round again, by ``fitted``, the int8 weights the products quantize_dynamic quantized read in
    the file at ``path`` (rewritten in place, once all are fitted), from their fp32 values in
    ``source`` (the model it was quantized from, tables untied) and the second moments of their
    inputs in ``moments`` (``second_moments``). A weight several products read is fitted to the sum
    of their inputs' moments: the error it leaves is the sum of theirs. Left as they were: a weight
    a reader's input has no moments for, and a head whose rows the tables in ``tied`` read (its rows
    are their lookups' values). Returns (weights refitted, int8 weights the products read)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    from hetcc.backends.onnx_sensitivity import quantized_nodes

    quantized = onnx.load(str(path))
    nodes = quantized_nodes(source, quantized, tied)
    if nodes is None:
        raise ValueError("which fp32 weight each int8 one was quantized from could not be told")
    kind = QuantType.QUInt8 if unsigned else QuantType.QInt8
    low, high = (int(v) for v in get_qmin_qmax_for_qType(kind.tensor_type, reduce_range=reduce_range,
                                                         symmetric=not unsigned))
    stored = {t.name: t for t in quantized.graph.initializer}
    weights = {t.name: t for t in source.graph.initializer}
    inputs = {n.name: n.input[0] for n in source.graph.node if n.name}
    heads = set(tied.values())
    readers: dict[str, list] = {}
    for q in nodes:
        if q.product:
            readers.setdefault(q.stored, []).append(q)
    done = 0
    for name, group in readers.items():
        xs = [inputs.get(q.node) for q in group]
        first = group[0]
        if any(q.weight in heads for q in group) or any(x not in moments for x in xs) \
                or any((q.weight, q.transposed) != (first.weight, first.transposed) for q in group):
            continue
        weight = numpy_helper.to_array(weights[first.weight])
        weight = weight.T if first.transposed else weight
        tensor = stored[f"{name}_quantized"]
        scale = numpy_helper.to_array(stored[f"{name}_scale"]).reshape(-1)
        zero = numpy_helper.to_array(stored[f"{name}_zero_point"]).reshape(-1)
        if weight.ndim != 2 or tuple(tensor.dims) != weight.shape or scale.size not in (1, weight.shape[1]):
            continue
        ones = np.ones(weight.shape[1])
        h = moments[xs[0]] if len(set(xs)) == 1 else sum(moments[x] for x in dict.fromkeys(xs))
        steps = fitted_once(weight, h, scale * ones, zero.astype(np.float64) * ones, low, high)
        dtype = numpy_helper.to_array(tensor).dtype
        tensor.CopyFrom(numpy_helper.from_array(steps.astype(dtype), tensor.name))
        done += 1
    if done:
        onnx.save(quantized, str(path))
    return done, len(readers)


def rounding_note(done: int, of: int, batches: int) -> str:
    """What the segment's log says of the fit."""
    return (f"{done} of {of} int8 weights rounded to fit {batches} calibration batch"
            f"{'es' if batches != 1 else ''} (GPTQ)")

