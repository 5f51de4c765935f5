"""ONNX Runtime sessions as hetcc executables, shared by the onnxruntime backend and MIGraphX's
ONNX Runtime route: the plain call on numpy views (CPU), and the IOBinding call that keeps values on
a GPU (``BoundExecutable``)."""
from __future__ import annotations

from functools import lru_cache

from hetcc.backends._common import check_arity, from_numpy, to_numpy


class OrtExecutable:
    """One InferenceSession; ONNX Runtime documents ``run`` as safe to call from several threads."""

    def __init__(self, session, input_names: list, output_names: list[str], segment: str):
        self.session = session
        self.input_names = input_names
        """ONNX input name per segment input; None where the exporter dropped an unused input."""
        self.output_names = output_names
        self.segment = segment

    def __call__(self, *inputs) -> tuple:
        if len(inputs) != len(self.input_names):
            check_arity(inputs, len(self.input_names), self.segment)
        feeds = {name: to_numpy(x) for name, x in zip(self.input_names, inputs) if name is not None}
        return tuple(map(from_numpy, self.session.run(self.output_names, feeds)))


class BoundExecutable:
    """One InferenceSession fed through IOBinding on a device (onnxruntime:cuda). Its location is
    that device (hetcc.handover): inputs there are bound at their addresses, others are copied in
    first; ONNX Runtime allocates the outputs on the device and they come back as torch tensors over
    DLPack, without a copy. ``run_with_iobinding`` synchronises the providers before returning, so
    the outputs are complete. One binding per call: threads may share the executable. On the CPU
    (device_type "cpu") the same path runs, which is how it is tested without a GPU."""

    def __init__(self, session, input_names: list, output_names: list[str], segment: str,
                 device_type: str = "cuda", device_id: int = 0):
        import torch

        self.session = session
        self.input_names = input_names
        self.output_names = output_names
        self.segment = segment
        self.device_type, self.device_id = device_type, device_id
        self.location = "cpu" if device_type == "cpu" else f"{device_type}:{device_id}"
        self.device = torch.device(self.location)

    def __call__(self, *inputs) -> tuple:
        import torch

        if len(inputs) != len(self.input_names):
            check_arity(inputs, len(self.input_names), self.segment)
        binding = self.session.io_binding()
        held = []  # the bound tensors must outlive the run
        for name, x in zip(self.input_names, inputs):
            if name is None:
                continue
            x = x.to(self.device).contiguous()
            if x.numel() == 0:  # an empty tensor may have no address to bind
                binding.bind_cpu_input(name, to_numpy(x.cpu()))
            else:
                binding.bind_input(name, self.device_type, self.device_id, numpy_dtype(x.dtype),
                                   tuple(x.shape), x.data_ptr())
            held.append(x)
        if self.device_type == "cuda":
            # ONNX Runtime's CUDA provider runs on a stream of its own that waits for no other: the
            # inputs (a caller's tensors, or the copies just queued above) must be complete first
            torch.cuda.current_stream(self.device).synchronize()
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)  # synchronises the providers before returning
        return tuple(_to_torch(v) for v in binding.get_outputs())


def _to_torch(value):
    """An output OrtValue as a torch tensor sharing its memory. The public OrtValue has __dlpack__
    only in recent releases; older ones have it on the C binding (``_ortvalue``), and encode bool
    as uint8 there."""
    import torch

    tensor = torch.from_dlpack(value if hasattr(value, "__dlpack__") else value._ortvalue)
    if tensor.dtype == torch.uint8 and value.data_type() == "tensor(bool)":
        tensor = tensor.bool()
    return tensor


@lru_cache(maxsize=None)
def numpy_dtype(dtype):
    """The numpy element type ONNX Runtime's binding takes for a torch dtype."""
    import torch

    return torch.empty(0, dtype=dtype).numpy().dtype.type

