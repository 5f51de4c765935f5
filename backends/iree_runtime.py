"""The run half of the IREE backend: HAL devices, loading a .vmfb, and a thread-safe executable.

One VmInstance and one HAL device per driver are shared by the whole process (IREE documents both
as thread-safe), and so is each loaded VmModule (immutable). A VmContext is not thread-safe, so
each calling thread gets its own context on the same module and device.
"""
from __future__ import annotations

import threading
from functools import lru_cache

from hetcc.backends._common import check_arity, to_numpy
from hetcc.errors import BundleError, DeviceNotHere, HetccError, InputError
from hetcc.names import dtype_name, first_line


class NotRunnableHere(DeviceNotHere):
    """An artifact for hardware this machine does not have (or a CPU lacking features it was
    compiled with). It is a TargetError for a caller of ``load``, and a BundleError so that
    ``hetcc.load`` passes its message through as it is instead of calling the file damaged."""


@lru_cache(maxsize=None)
def runtime_problem() -> str | None:
    try:
        import iree.runtime  # noqa: F401
    except Exception as exc:
        return (f"the IREE runtime is not importable ({type(exc).__name__}: {exc}); install it with: "
                "pip install iree-base-runtime")
    return None


@lru_cache(maxsize=None)
def _instance():
    import iree.runtime as rt

    return rt.VmInstance()


_devices: dict = {}
_devices_lock = threading.Lock()


def device(driver: str):
    """(HalDevice, None) or (None, why not) for a runtime driver; tried once per process."""
    with _devices_lock:
        if driver not in _devices:
            _devices[driver] = _open_device(driver)
        return _devices[driver]


def _open_device(driver: str):
    problem = runtime_problem()
    if problem:
        return None, problem
    import iree.runtime as rt

    try:
        hal_driver = rt.get_driver(driver)
        if not hal_driver.query_available_devices():
            return None, f"the IREE {driver} driver sees no device"
        return hal_driver.create_default_device(), None
    except Exception as exc:  # a missing vendor library is the common case: say which
        return None, f"the IREE {driver} driver cannot start: {first_line(exc)}"


# torch dtype name -> HAL element type name. bfloat16 crosses as its 16 bits (numpy has no
# bfloat16): the HAL is told the element type, so IREE computes in bfloat16 all the same.
_ELEMENT_TYPES = {
    "float32": "FLOAT_32", "float64": "FLOAT_64", "float16": "FLOAT_16", "bfloat16": "BFLOAT_16",
    "int64": "SINT_64", "int32": "SINT_32", "int16": "SINT_16", "int8": "SINT_8", "uint8": "UINT_8",
    "bool": "BOOL_8",
}
DTYPES = frozenset(_ELEMENT_TYPES)
"""torch dtypes (by name) that cross into and out of IREE here."""


def load_module(path: str, driver: str, what: str, segment: str) -> "IreeExecutable":
    import iree.runtime as rt

    hal_device, why = device(driver)
    if hal_device is None:
        raise NotRunnableHere(
            f"segment {segment!r} was compiled for {what}, and cannot run on this machine: {why}. Run "
            f"it where that hardware and its driver are installed, or compile the model again for a "
            f"target this machine has (iree:cpu runs here)")
    instance = _instance()
    try:
        module = rt.VmModule.mmap(instance, path)
        hal_module = rt.create_hal_module(instance, hal_device)
        function = module.lookup_function("main")
    except Exception as exc:
        raise BundleError(f"segment {segment!r}: IREE could not read {path} ({first_line(exc)}); the "
                          "file is damaged or was written by another IREE version: compile it again") from exc
    if function is None:
        raise BundleError(f"segment {segment!r}: {path} has no function 'main'; it was not written by hetcc")
    return IreeExecutable(instance, hal_device, (hal_module, module), function, what, segment)


class IreeExecutable:
    """A loaded .vmfb. Inputs are handed to IREE as numpy views and copied once into IREE buffers
    (its HAL owns what a dispatch reads); outputs are fresh buffers per call, returned as torch
    tensors over the mapped memory without a copy on the CPU."""

    def __init__(self, instance, hal_device, modules, function, what: str, segment: str):
        self.instance = instance
        self.device = hal_device
        self.modules = modules
        self.function = function
        self.what = what
        self.segment = segment
        self.n_inputs: int | None = None
        self.output_dtypes: list[str] | None = None
        self._local = threading.local()
        self._context()  # the first context now, so an incompatible artifact fails at load

    def configure(self, n_inputs: int, output_dtypes: list[str]) -> "IreeExecutable":
        self.n_inputs = n_inputs
        self.output_dtypes = list(output_dtypes)
        return self

    def _context(self):
        context = getattr(self._local, "context", None)
        if context is None:
            import iree.runtime as rt

            try:
                context = rt.VmContext(self.instance, modules=list(self.modules))
            except Exception as exc:  # e.g. an executable format this device does not take
                raise NotRunnableHere(
                    f"segment {self.segment!r} was compiled for {self.what}, and the device here does "
                    f"not accept it: {first_line(exc)}. Compile it again for this device") from exc
            self._local.context = context
        return context

    def __call__(self, *inputs) -> tuple:
        import iree.runtime as rt
        import torch

        check_arity(inputs, self.n_inputs, self.segment)
        allocator = self.device.allocator
        args = rt.VmVariantList(len(inputs))
        for x in inputs:
            dtype = dtype_name(x.dtype) if isinstance(x, torch.Tensor) else None
            element = _ELEMENT_TYPES.get(dtype)
            if element is None:
                raise InputError(f"segment {self.segment!r}: IREE takes tensors of "
                                 f"{', '.join(sorted(_ELEMENT_TYPES))}, not {dtype or type(x).__name__}")
            array = to_numpy(x.view(torch.int16) if dtype == "bfloat16" else x)
            view = allocator.allocate_buffer_copy(
                memory_type=rt.MemoryType.DEVICE_LOCAL, allowed_usage=rt.BufferUsage.DEFAULT,
                device=self.device, buffer=array, element_type=getattr(rt.HalElementType, element))
            args.push_ref(view)
        results = rt.VmVariantList(len(self.output_dtypes))
        try:
            self._context().invoke(self.function, args, results)
        except Exception as exc:
            raise HetccError(f"segment {self.segment!r} failed in the IREE runtime ({self.what}): "
                             f"{first_line(exc)}") from exc
        outs = []
        for i, dtype in enumerate(self.output_dtypes):
            view = results.get_as_object(i, rt.HalBufferView)
            outs.append(_to_torch(self.device, view, dtype))
        return tuple(outs)


def _to_torch(hal_device, view, dtype: str):
    """A result as a torch tensor: over the mapped buffer where the host can map it (the CPU; each
    call gets fresh buffers, so nothing is overwritten later), else a copy (GPUs)."""
    import numpy as np
    import torch
    from iree.runtime import DeviceArray

    array = DeviceArray(hal_device, view, implicit_host_transfer=True).to_host()
    if dtype == "bfloat16":
        return torch.from_numpy(_writeable(array.view(np.int16))).view(torch.bfloat16)
    want = np.dtype(dtype)
    if array.dtype != want:  # e.g. an i1 result that the ABI carries as bytes
        array = array.view(want) if array.dtype.itemsize == want.itemsize else array.astype(want)
    return torch.from_numpy(_writeable(array))


def _writeable(array):
    return array if array.flags.writeable else array.copy()
