"""A torch segment's .pt2 archive, read without trusting it.

``torch.export.load`` must never see an archive from a stranger as it is. Reading one, it
unpickles payloads flagged ``use_pickle``, custom and opaque objects and legacy members (and sample
inputs, retrying with ``weights_only=False``); it hands the model JSON's symbolic expressions to
``sympy.sympify``, which evaluates them as Python; it pastes value names from the JSON into the
Python source it generates for the graph; it imports modules that tree specs name; it keeps
``guards_code`` for ``ep.module()`` to run as Python; and it resolves a node's target to any
attribute of ``torch``, ``operator`` or ``math``. And Python's zipfile and torch's C++ reader may
disagree about which bytes an entry holds.

So :func:`load_program` reads the archive once with Python's zipfile, vets every entry against what
``torch.export.save`` writes for a hetcc segment, parses the model JSON and the payload configs
itself, and hands ``torch.export.load`` a fresh in-memory archive holding only what it vetted
(re-serialised): every byte torch reads was checked here, whatever zip parser reads it. Then it
checks the graph torch built a second time (:func:`check_graph`). Node targets must be in the vetted
op set (:func:`vetted`): pure aten ops that are core ATen or listed in ``NON_CORE_OPS``, plus the
extras in ``EXTRA_OPS``, less ``DENIED_OPS``.
"""
from __future__ import annotations

import ast
import io
import json
import keyword
import math
import operator
import os
import re
import struct
import zipfile
import zlib

import torch

from hetcc.errors import BundleError
from hetcc.names import first_line
from hetcc.structures import structure_problem

aten = torch.ops.aten

# ---------------------------------------------------------------------------------------------
# the vetted op set


def _pure(op) -> bool:
    """An op of the ``aten`` namespace whose schema writes none of its arguments (not mutable, no
    alias write) and has no ``out=`` argument: it computes new tensors (or views) from its inputs."""
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten":
        return False
    schema = op._schema
    return not schema.is_mutable and not any(
        a.is_out or (a.alias_info is not None and a.alias_info.is_write) for a in schema.arguments)


def _listed(op) -> bool:
    """The rule, less purity: core ATen (``torch.Tag.core``, the opset hetcc's capture decomposes
    every model to), or an aten op NON_CORE_OPS names; never a backward op or an unchecked internal
    kernel (UNCHECKED_KERNELS), even a core one."""
    name = op._opname
    if "backward" in name or name in UNCHECKED_KERNELS:
        return False
    return torch.Tag.core in op.tags or name in _NON_CORE or name.startswith("special_")


UNCHECKED_KERNELS = frozenset({
    "_cholesky_solve_helper", "_embedding_bag", "_embedding_bag_forward_only"})
"""Internal kernels that trust arguments their public op checked first: with arguments a bundle
chooses, _cholesky_solve_helper corrupted the heap (found by the hostile-bundle probe). Backward
ops are refused by name for the same reason (max_pool2d_with_indices_backward writes where its
indices say, unchecked) and because hetcc compiles inference: no captured model contains one."""


NON_CORE_OPS = {
    "max min median nanmedian mode kthvalue cummax cummin cumprod logcumsumexp _logcumsumexp var_mean "
    "linalg_vector_norm native_norm dist _aminmax":
        "reductions and scans that torch.export's default decompositions leave whole (x.max(), "
        "F.normalize, ...)",
    "erfc erfinv exp2 lgamma digamma polygamma i0 igamma igammac hypot copysign fmax fmin signbit "
    "nextafter gcd lcm frexp ldexp angle complex polar round remainder bitwise_and bitwise_or "
    "bitwise_xor bitwise_left_shift bitwise_right_shift __lshift__ __rshift__ _add_relu":
        "elementwise math with no core form (some are non-core overloads of core ops); so are the "
        "special_* functions, allowed by prefix",
    "view view_as_real view_as_complex unfold _conj _neg_view view_copy permute_copy slice_copy "
    "select_copy split_copy unbind_copy detach_copy narrow_copy _reshape_copy view_as_real_copy "
    "view_as_complex_copy _conj_copy _neg_view_copy diagonal_scatter":
        "views that check their bounds (view.dtype, unfold), and copying forms of core views",
    "sort bucketize searchsorted unique_consecutive unique_dim unique_dim_consecutive _unique _unique2 "
    "histc bincount masked_select repeat_interleave nonzero_static tril_indices triu_indices range "
    "scatter index_reduce":
        "sorting, searching and indexing ops with bounds-checked indices",
    "upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d _upsample_bilinear2d_aa "
    "_upsample_bicubic2d_aa grid_sampler_3d adaptive_max_pool2d adaptive_max_pool3d _convolution "
    "_conv_depthwise2d conv_depthwise3d slow_conv3d_forward slow_conv_dilated2d slow_conv_dilated3d "
    "slow_conv_transpose2d slow_conv_transpose3d _slow_conv2d_forward conv_tbc":
        "resampling, pooling and convolution forms with no core decomposition",
    "addmv addbmm _addmm_activation addmm mm bmm _int_mm":
        "matrix products (the dtype= overloads of the core ones are not core)",
    "cholesky cholesky_inverse cholesky_solve triangular_solve linalg_inv_ex "
    "linalg_cholesky_ex linalg_solve_triangular _linalg_solve_ex linalg_lu linalg_lu_factor_ex "
    "linalg_lu_solve lu_unpack linalg_qr _linalg_svd _linalg_eigh linalg_eig _linalg_eigvals "
    "_linalg_det _linalg_slogdet linalg_matrix_exp linalg_pinv linalg_lstsq "
    "linalg_householder_product geqrf ormqr _linalg_check_errors":
        "linear algebra, which has no core decomposition",
    "rand_like randn_like randint randint_like bernoulli normal normal_functional uniform "
    "multinomial poisson":
        "random numbers: they draw from torch's generator and touch nothing else",
    "_native_batch_norm_legit_functional _batch_norm_with_update_functional native_batch_norm "
    "_batch_norm_no_update":
        "batch norm in training mode, in the functional form torch.export gives it: the new running "
        "statistics are returned (and kept as the model's state by hetcc), not written",
    "_masked_softmax _fft_c2c fft_fftfreq fft_rfftfreq bartlett_window "
    "blackman_window hamming_window kaiser_window _assert_async equal allclose is_same_size":
        "other pure ops export can leave in a graph",
}
"""Non-core aten ops (by name, every overload) that hetcc's captures can contain, grouped, with why:
torch.export's default decompositions do not reduce every model to core ATen (x.max() stays
aten.max.default, F.normalize stays linalg_vector_norm). Each overload must still be pure
(:func:`_pure`). Deliberately absent: from_file, _print, set, resize, _resize_output,
_copy_from, _index_put_impl (it can skip bounds checks), _reshape_alias_copy, the empty
family, pinning, and every backward, sparse, nested and quantized-packing op."""
_NON_CORE = frozenset(name for names in NON_CORE_OPS for name in names.split())

EXTRA_OPS: dict = {
    aten.scaled_dot_product_attention.default:
        "kept whole by hetcc's capture (capture.PRESERVED); not tagged core",
    aten._scaled_dot_product_flash_attention_for_cpu.default:
        "the CPU kernel of attention, also removed from the decomposition table by capture.PRESERVED",
    aten._scaled_dot_product_attention_math.default:
        "the reference kernel of attention, also removed from the decomposition table by capture.PRESERVED",
    aten._assert_scalar.default: "a shape assertion torch.export inserts for dynamic dimensions",
    aten.sym_constrain_range_for_size.default: "a range assertion on a data-dependent size",
    aten.sym_constrain_range.default: "a range assertion on a data-dependent value",
    aten._assert_tensor_metadata.default: "a dtype/device assertion torch.export inserts beside "
                                          "tensor.to(dtype); it checks and returns nothing",
    **{fn: "Python arithmetic or comparison on symbolic sizes (torch's serializer's _SYM_OPS)" for fn in (
        operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
        operator.pow, operator.neg, operator.pos, operator.eq, operator.ne, operator.lt, operator.le,
        operator.gt, operator.ge, operator.and_, operator.or_, operator.lshift, operator.rshift,
        math.trunc, torch.sym_not, torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max,
        torch.sym_min, torch.sym_sqrt)},
}
"""Node targets allowed besides the pure core-ATen ops, and why each is there. The symbolic-size
readers (``aten.sym_size.int``, ``sym_numel``, ``sym_stride.int``, ``sym_storage_offset``) and
``_local_scalar_dense`` (a tensor's value as a number) are core ATen already. ``operator.getitem``
is allowed only in the loaded graph (:func:`check_graph`): torch's deserializer adds it to pick the
outputs of multi-output ops, and an archive never names it."""

DENIED_OPS: dict = {
    aten.from_file.default: "it reads a file named by the graph (and with shared=True maps it for writing)",
    aten.from_file.out: "it reads a file named by the graph",
    aten._print.default: "it writes to the process's standard output",
    aten.empty.memory_format: "its result is uninitialised memory, which could hand another model's "
                              "data to the graph's outputs; hetcc's captures never contain it",
    aten.empty_strided.default: "its result is uninitialised memory, which could hand another model's "
                                "data to the graph's outputs; hetcc's captures never contain it",
}
"""Ops refused whatever else says, and why: this wins over every list and rule above."""


def vetted(target) -> bool:
    """Whether a graph node may call ``target``: not in DENIED_OPS, and in EXTRA_OPS or a pure
    aten op that is core or in NON_CORE_OPS."""
    try:
        if target in DENIED_OPS:
            return False
        return target in EXTRA_OPS or _pure(target) and _listed(target)
    except TypeError:  # an unhashable target
        return False


def serialized_name(target) -> str:
    """How torch.export's serializer writes ``target`` into the model JSON."""
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
    return f"{target.__module__}.{target.__name__}"


_EXTRA_BY_NAME = {serialized_name(op): op for op in EXTRA_OPS}
_ATEN_NAME = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


def _target(text: str, where: str):
    """The op a node's serialized target names, if it is vetted; refused otherwise."""
    op = _EXTRA_BY_NAME.get(text) if isinstance(text, str) else None
    match = _ATEN_NAME.fullmatch(text) if isinstance(text, str) and op is None else None
    if match:
        try:
            op = getattr(getattr(aten, match[1]), match[2])
        except Exception:  # no such op in this torch
            op = None
        op = op if isinstance(op, torch._ops.OpOverload) else None
    if op is None:
        raise _Refused(f"{where} calls {text!r}, which is not an op in hetcc's vetted set of pure "
                       "tensor ops (core and listed aten ops, and a few extras)")
    if op in DENIED_OPS:
        raise _Refused(f"{where} calls {text}, which hetcc refuses: {DENIED_OPS[op]}")
    if not vetted(op):
        raise _Refused(f"{where} calls {text}, which is not in hetcc's vetted set of pure tensor ops "
                       "(a core or listed aten op that writes none of its arguments, or a listed extra)")
    return op


# ---------------------------------------------------------------------------------------------
# loading


class _Refused(Exception):
    """What is wrong with an archive, in words; load_program adds the file and what to do."""


_ADVICE = ("hetcc refuses to load it: a torch segment holds only what torch.export.save writes for a "
           "hetcc segment, so the bundle was tampered with or is corrupt; recompile the bundle from the model")


def load_program(path) -> "torch.export.ExportedProgram":
    """The ExportedProgram in the .pt2 at ``path``, loaded only after the archive is vetted and
    rebuilt (the module docstring says why); a BundleError says what is wrong otherwise."""
    try:
        buffer = canonical_archive(path)
    except _Refused as exc:
        raise BundleError(f"{path}: {exc}; {_ADVICE}") from None
    except (zipfile.BadZipFile, ValueError, TypeError, KeyError, OSError, RecursionError,
            MemoryError, EOFError) as exc:
        raise BundleError(f"{path} is not a readable torch.export archive ({type(exc).__name__}: "
                          f"{first_line(exc)}); recompile the bundle") from exc
    try:
        program = torch.export.load(buffer)
    except Exception as exc:  # torch raises many types; the archive itself passed every check
        raise BundleError(f"{path}: torch {torch.__version__} could not build the program from the vetted "
                          f"archive ({type(exc).__name__}: {first_line(exc)}); recompile the bundle "
                          "with this torch") from exc
    try:
        check_graph(program)
    except _Refused as exc:
        raise BundleError(f"{path}: {exc}; {_ADVICE}") from None
    return program


def check_graph(program) -> None:
    """The second line: the graph torch built calls only vetted ops and holds no submodules, in
    case its deserializer reads a name differently from the JSON check."""
    module = program.graph_module
    children = [name for name, _ in module.named_children()]
    if children:
        raise _Refused(f"the loaded graph holds submodules ({', '.join(children[:3])})")
    for node in module.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            raise _Refused(f"the loaded graph has a {node.op} node {node.name}")
        if node.target is not operator.getitem and not vetted(node.target):
            raise _Refused(f"the loaded graph's node {node.name} calls {node.target}, which is not in "
                           "hetcc's vetted op set")


# ---------------------------------------------------------------------------------------------
# the zip


_ENTRY = re.compile(
    r"(?P<root>[A-Za-z0-9_.-]+)/(?P<rest>archive_format|archive_version|byteorder|\.data/version"
    r"|\.data/serialization_id|models/model\.json|data/weights/model_weights_config\.json"
    r"|data/weights/weight_\d+|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.-]+)")
"""Every entry torch.export.save writes for one ExportedProgram saved as "model", under the
archive's one top folder."""
_REQUIRED = ("archive_format", "archive_version", "models/model.json",
             "data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
_SMALL = _REQUIRED + ("byteorder", ".data/version")
_ROOT = "segment"


def canonical_archive(path) -> io.BytesIO:
    """A new .pt2 in memory with exactly the vetted contents of the archive at ``path``: the
    version files, the model JSON and payload configs as re-serialised by the checks here, the
    weight and constant payloads the configs use, and empty sample inputs (hetcc never needs them,
    and torch would unpickle them). Each payload is copied once, from the file into the new
    archive, and not hashed again: the bundle's sha256 has covered the file already."""
    with open(path, "rb") as file, zipfile.ZipFile(file) as archive:
        size = os.fstat(file.fileno()).st_size
        entries = _entries(archive.infolist(), size)
        small = {rest: archive.read(entries[rest]) for rest in _SMALL if rest in entries}
        _check_versions(small)
        program = json.loads(small["models/model.json"].decode("utf-8"))
        model_json = json.dumps(check_program(program)).encode()
        weights, weight_files = _payloads(small["data/weights/model_weights_config.json"], "weight",
                                          "data/weights/", entries)
        constants, constant_files = _payloads(small["data/constants/model_constants_config.json"],
                                              "constant", "data/constants/", entries)
        payloads = {**weight_files, **constant_files}
        unused = sorted(rest for rest in entries if rest.startswith(("data/weights/weight_", "data/constants/tensor_"))
                        and rest not in payloads)
        if unused:
            raise _Refused(f"it holds {unused[0]}, which its payload configs do not use")
        for rest, needed in payloads.items():
            if entries[rest].file_size < needed:
                raise _Refused(f"its entry {rest} holds {entries[rest].file_size} bytes, fewer than the "
                               f"tensors its config places in it need ({needed})")
        records = [(rest, small[rest]) for rest in ("archive_format", "archive_version", "byteorder",
                                                    ".data/version") if rest in small]
        records += [("models/model.json", model_json), ("data/sample_inputs/model.pt", b""),
                    ("data/weights/model_weights_config.json", weights),
                    ("data/constants/model_constants_config.json", constants)]
        records += [(rest, (file, _data_offset(file, entries[rest], size), entries[rest]))
                    for rest in payloads]
        return _pack(records)


# A stored zip, written here rather than with zipfile.ZipFile: that would compute every payload's
# CRC-32 again and grow its buffer as it goes. Every entry carries ZIP64 sizes, so archives over
# 4 GiB take the same path as the small ones the tests load.
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_ZIP64 = struct.Struct("<HHQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_CENTRAL_ZIP64 = struct.Struct("<HHQQQ")
_END_ZIP64 = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR_ZIP64 = struct.Struct("<4sIQI")
_END = struct.Struct("<4sHHHHIIH")
_MAX32, _MAX16, _ZIP64_VERSION, _DOS_DATE = 0xFFFFFFFF, 0xFFFF, 45, 33  # 33: 1980-01-01


def _data_offset(file, info, archive_bytes: int) -> int:
    """Where a stored entry's bytes start: after its local header, which must agree with the
    central directory zipfile read (as zipfile itself checks when it opens an entry)."""
    file.seek(info.header_offset)
    header = file.read(_LOCAL.size)
    if len(header) != _LOCAL.size:
        raise _Refused(f"its entry {info.filename} has a truncated header")
    signature, _, _, method, _, _, _, _, _, name_length, extra_length = _LOCAL.unpack(header)
    if signature != b"PK\x03\x04" or method != zipfile.ZIP_STORED or file.read(name_length) != info.filename.encode():
        raise _Refused(f"the local header of {info.filename} disagrees with the zip's directory")
    start = info.header_offset + _LOCAL.size + name_length + extra_length
    if start + info.file_size > archive_bytes:
        raise _Refused(f"its entry {info.filename} runs past the end of the file")
    return start


def _pack(records) -> io.BytesIO:
    """A stored zip of ``records`` [(path below the top folder, bytes or (file, offset, ZipInfo))]."""
    names = [f"{_ROOT}/{rest}".encode() for rest, _ in records]
    sizes = [len(data) if isinstance(data, bytes) else data[2].file_size for _, data in records]
    directory_size = sum(_CENTRAL.size + len(name) + _CENTRAL_ZIP64.size for name in names)
    directory_at = sum(_LOCAL.size + len(name) + _LOCAL_ZIP64.size + size for name, size in zip(names, sizes))
    out = io.BytesIO()
    out.seek(directory_at + directory_size + _END_ZIP64.size + _LOCATOR_ZIP64.size + _END.size - 1)
    out.write(b"\0")  # the whole archive's size at once
    view, at, central = out.getbuffer(), 0, []
    for name, size, (_, data) in zip(names, sizes, records):
        crc = zlib.crc32(data) if isinstance(data, bytes) else data[2].CRC
        header = _LOCAL.pack(b"PK\x03\x04", _ZIP64_VERSION, 0, 0, 0, _DOS_DATE, crc, _MAX32, _MAX32,
                             len(name), _LOCAL_ZIP64.size)
        central.append(_CENTRAL.pack(b"PK\x01\x02", _ZIP64_VERSION, _ZIP64_VERSION, 0, 0, 0, _DOS_DATE,
                                     crc, _MAX32, _MAX32, len(name), _CENTRAL_ZIP64.size, 0, 0, 0, 0, _MAX32)
                       + name + _CENTRAL_ZIP64.pack(1, 24, size, size, at))
        start = at + len(header) + len(name) + _LOCAL_ZIP64.size
        view[at:start] = header + name + _LOCAL_ZIP64.pack(1, 16, size, size)
        if isinstance(data, bytes):
            view[start:start + size] = data
        else:
            file, offset, info = data
            file.seek(offset)
            if file.readinto(view[start:start + size]) != size:
                raise _Refused(f"its entry {info.filename} is shorter than the zip's directory says")
        at = start + size
    tail = b"".join(central) + _END_ZIP64.pack(
        b"PK\x06\x06", _END_ZIP64.size - 12, _ZIP64_VERSION, _ZIP64_VERSION, 0, 0, len(names),
        len(names), directory_size, directory_at) + _LOCATOR_ZIP64.pack(
        b"PK\x06\x07", 0, directory_at + directory_size, 1) + _END.pack(
        b"PK\x05\x06", 0, 0, min(len(names), _MAX16), min(len(names), _MAX16), _MAX32, _MAX32, 0)
    view[at:] = tail
    view.release()
    out.seek(0)
    return out


def _entries(infos, archive_bytes: int) -> dict:
    """Entry path below the top folder -> ZipInfo, after the checks on names, duplicates,
    compression and sizes; nothing is read yet."""
    entries, roots, total = {}, set(), 0
    for info in infos:
        match = _ENTRY.fullmatch(info.filename)
        if not match and re.search(r"/data/constants/(custom|opaque)_obj_\d+$", info.filename):
            raise _Refused(f"it holds {info.filename!r}, a custom or opaque object, which torch would unpickle")
        if not match:
            raise _Refused(f"it holds {info.filename!r}, which torch.export.save does not write")
        roots.add(match["root"])
        rest = match["rest"]
        if rest in entries:
            raise _Refused(f"it holds two entries named {info.filename!r} (zip readers disagree about "
                           "which one counts)")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _Refused(f"its entry {info.filename} is compressed or encrypted (method "
                           f"{info.compress_type}); torch.export.save stores entries as they are")
        if info.file_size != info.compress_size:
            raise _Refused(f"its entry {info.filename} claims {info.file_size} bytes but stores "
                           f"{info.compress_size}")
        total += info.file_size
        entries[rest] = info
    if len(roots) > 1:
        raise _Refused(f"its entries are under {len(roots)} top folders; torch.export.save writes one")
    if total > archive_bytes:
        raise _Refused(f"its entries claim {total} bytes in all, more than the {archive_bytes}-byte file")
    missing = [rest for rest in _REQUIRED if rest not in entries]
    if missing:
        raise _Refused(f"it has no {missing[0]}, so it is not a torch.export archive of one program")
    return {rest: info for rest, info in entries.items() if not rest.startswith(("extra/", ".data/serialization_id"))}


def _check_versions(small: dict) -> None:
    expected = {"archive_format": rb"pt2", "archive_version": rb"\d{1,3}", "byteorder": rb"little|big",
                ".data/version": rb"\d{1,3}\n?"}
    for rest, pattern in expected.items():
        if rest in small and not re.fullmatch(pattern, small[rest]):
            raise _Refused(f"its {rest} entry holds {small[rest][:40]!r}")


def _payloads(raw: bytes, what: str, folder: str, entries: dict) -> tuple[bytes, dict]:
    """A payload config re-serialised after its checks, and {entry path: bytes its tensors need}.
    Every payload must be raw tensor bytes (never a pickle, a custom or an opaque object) in an
    entry of the archive, large enough for the tensors placed in it."""
    doc = json.loads(raw.decode("utf-8"))
    _keys(doc, {"config"}, f"the {what}s config", required={"config"})
    config = _dict(doc["config"], f"the {what}s config")
    prefix = "weight_" if what == "weight" else "tensor_"
    files: dict[str, int] = {}
    for fqn, meta in config.items():
        where = f"{what} {fqn!r}"
        _keys(meta, {"path_name", "is_param", "use_pickle", "tensor_meta"}, where,
              required={"path_name", "tensor_meta"})
        if meta.get("use_pickle"):
            raise _Refused(f"{where} is stored as a pickled object (use_pickle), which torch would unpickle")
        stored = meta["path_name"]
        if not isinstance(stored, str) or not re.fullmatch(rf"{prefix}\d+", stored):
            raise _Refused(f"{where} is stored as {stored!r}, not as raw tensor bytes ({prefix}N); torch "
                           "would unpickle or load it as an object")
        if folder + stored not in entries:
            raise _Refused(f"{where} is stored in {folder + stored}, which the archive does not hold")
        _bool(meta.get("is_param", False), f"{where} is_param")
        needed = _tensor_meta(meta["tensor_meta"], where, concrete=True)
        files[folder + stored] = max(files.get(folder + stored, 0), needed)
    return json.dumps(doc).encode(), files


# ---------------------------------------------------------------------------------------------
# the model JSON


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_RESERVED = frozenset({"self", "torch", "device", "inf", "nan", "NoneType", "fx_pytree", "pytree"})
"""Names the code torch generates for a graph uses itself (torch.fx's custom builtins)."""


def check_program(doc) -> dict:
    """The model JSON (torch's serialized ExportedProgram) after its checks, with what hetcc never
    needs taken out: node metadata (stack traces, module paths: informative, and torch's codegen
    copies stack traces into the generated source), the graph module's metadata and namedtuple
    fields, and guards_code (hetcc never calls ep.module(), the only user of it). Raises _Refused."""
    _keys(doc, {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
                "torch_version", "guards_code"}, "the model", required={"graph_module", "schema_version"})
    version = _dict(doc["schema_version"], "the schema version")
    _keys(version, {"major", "minor"}, "the schema version", required={"major", "minor"})
    for part in ("major", "minor"):
        _int(version[part], "the schema version")
    for name, value in _dict(doc.get("opset_version", {}), "the opset version").items():
        _int(value, f"opset {name!r}")
    for name, bounds in _dict(doc.get("range_constraints", {}), "the range constraints").items():
        _symbol(name, "a range constraint")
        _keys(bounds, {"min_val", "max_val"}, f"the range of {name}")
        for value in bounds.values():
            if value is not None:
                _int(value, f"the range of {name}")
    verifiers = doc.get("verifiers", [])
    if not isinstance(verifiers, list) or any(v not in ("ATEN", "TRAINING") for v in verifiers):
        raise _Refused(f"it asks for verifiers {verifiers!r}; hetcc segments use ATEN or TRAINING")
    if not isinstance(doc.get("torch_version", ""), str):
        raise _Refused("its torch_version is not a string")
    for guard in _list(doc.get("guards_code", []), "guards_code"):
        _guard(guard)
    doc["guards_code"] = []
    gm = _dict(doc["graph_module"], "the graph module")
    _keys(gm, {"graph", "signature", "module_call_graph", "metadata", "treespec_namedtuple_fields"},
          "the graph module", required={"graph", "signature", "module_call_graph"})
    for key in ("metadata", "treespec_namedtuple_fields"):
        _dict(gm.get(key, {}), f"the graph module's {key}")
        gm[key] = {}
    _graph(gm["graph"])
    _signature(gm["signature"])
    for entry in _list(gm["module_call_graph"], "the module call graph"):
        _keys(entry, {"fqn", "signature"}, "a module call entry", required={"fqn"})
        _str(entry["fqn"], "a module call entry's fqn")
        if entry.get("signature") is not None:
            _call_signature(entry["signature"], f"the call signature of {entry['fqn']!r}")
    return doc


def _graph(graph) -> None:
    _keys(graph, {"inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values",
                  "sym_float_values", "is_single_tensor_return", "custom_obj_values"}, "the graph",
          required={"inputs", "outputs", "nodes"})
    if _dict(graph.get("custom_obj_values", {}), "the graph's custom objects"):
        raise _Refused("its graph holds custom objects (torchbind or opaque), which torch would unpickle")
    _bool(graph.get("is_single_tensor_return", False), "the graph's is_single_tensor_return")
    for i, value in enumerate(_list(graph["inputs"], "the graph inputs")):
        _tensor_only(value, f"graph input {i}")
    for i, value in enumerate(_list(graph["outputs"], "the graph outputs")):
        _tensor_only(value, f"graph output {i}")
    for name, meta in _dict(graph.get("tensor_values", {}), "the tensor values").items():
        _tensor_meta(meta, f"value {_name(name, 'a tensor value')}")
    for key, literal in (("sym_int_values", "as_int"), ("sym_bool_values", "as_bool"),
                         ("sym_float_values", "as_float")):
        for name, value in _dict(graph.get(key, {}), f"the graph's {key}").items():
            _sym(value, literal, f"value {_name(name, 'a symbolic value')}")
    for node in _list(graph["nodes"], "the graph nodes"):
        _node(node)


def _node(node) -> None:
    _keys(node, {"target", "inputs", "outputs", "metadata", "is_hop_single_tensor_return", "name"},
          "a node", required={"target", "inputs", "outputs"})
    where = f"node {_name(node['name'], 'a node') if node.get('name') is not None else '?'}"
    _target(node["target"], where)
    for arg in _list(node["inputs"], f"{where}'s inputs"):
        _keys(arg, {"name", "arg", "kind"}, f"an input of {where}", required={"name", "arg"})
        _str(arg["name"], f"an input name of {where}")
        if arg.get("kind") not in (None, 1, 2):
            raise _Refused(f"{where} has an input of kind {arg.get('kind')!r}")
        _argument(arg["arg"], f"input {arg['name']!r} of {where}")
    for out in _list(node["outputs"], f"{where}'s outputs"):
        _argument(out, f"an output of {where}")
    if node.get("is_hop_single_tensor_return") is not None:
        _bool(node["is_hop_single_tensor_return"], where)
    _dict(node.get("metadata", {}), f"{where}'s metadata")
    node["metadata"] = {}


_INPUT_SPECS = {"user_input": {"arg"}, "parameter": {"arg", "parameter_name"},
                "buffer": {"arg", "buffer_name", "persistent"}, "tensor_constant": {"arg", "tensor_constant_name"}}
"""Kinds of program input hetcc calls the graph with: its inputs, and weights from the archive."""


def _signature(signature) -> None:
    _keys(signature, {"input_specs", "output_specs"}, "the signature", required={"input_specs", "output_specs"})
    for spec in _list(signature["input_specs"], "the input specs"):
        kind, value = _one_of(spec, "an input spec")
        if kind not in _INPUT_SPECS:
            raise _Refused(f"it has a program input of kind {kind}, which hetcc's direct call does not "
                           "model (hetcc segments take tensors and weights only)")
        _keys(value, _INPUT_SPECS[kind], f"a {kind} input", required={"arg"})
        if kind == "user_input":
            _tensor_only(value["arg"], "a user input")
            continue
        _keys(value["arg"], {"name"}, f"a {kind} input", required={"name"})
        _name(value["arg"]["name"], f"a {kind} input")
        for key in _INPUT_SPECS[kind] - {"arg"}:
            if key == "persistent":
                _bool(value.get(key, True), f"a {kind} input's {key}")
            else:
                _str(value.get(key), f"a {kind} input's {key}")
    for spec in _list(signature["output_specs"], "the output specs"):
        kind, value = _one_of(spec, "an output spec")
        if kind != "user_output":
            raise _Refused(f"it has a program output of kind {kind}, which hetcc's direct call does not "
                           "model (hetcc segments return tensors only)")
        _keys(value, {"arg"}, "a user output", required={"arg"})
        _tensor_only(value["arg"], "a user output")


def _call_signature(signature, where: str) -> None:
    _keys(signature, {"inputs", "outputs", "in_spec", "out_spec", "forward_arg_names"}, where,
          required={"inputs", "outputs", "in_spec", "out_spec"})
    for arg in _list(signature["inputs"], where) + _list(signature["outputs"], where):
        _argument(arg, f"an argument in {where}")
    for key in ("in_spec", "out_spec"):
        signature[key] = _treespec(signature[key], f"{where} ({key})")
    for name in _list(signature.get("forward_arg_names") or [], where):
        _str(name, f"an argument name in {where}")


# ---- arguments

_SCALAR_ARGS = {"as_none": bool, "as_int": int, "as_float": (int, float), "as_bool": bool,
                "as_string": str, "as_scalar_type": int, "as_memory_format": int, "as_layout": int}
_LIST_ARGS = {"as_ints": int, "as_floats": (int, float), "as_bools": bool, "as_strings": str}
_SYM_ARGS = {"as_sym_int": "as_int", "as_sym_bool": "as_bool", "as_sym_float": "as_float"}
_LITERALS = {"as_int": int, "as_bool": bool, "as_float": (int, float)}
_REFUSED_ARGS = {
    "as_graph": "a nested graph (the body of a higher-order op)",
    "as_custom_obj": "a custom object (torchbind or opaque), which torch would unpickle",
    "as_operator": "an operator passed as a value",
    "as_string_to_argument": "a dict of arguments (higher-order ops only)",
    "as_nested_tensors": "nested tensor lists (higher-order ops only)",
    "as_int_lists": "int lists (Triton kernels only)",
    "as_float_lists": "float lists (Triton kernels only)",
}
_DEVICES = ("cpu", "cuda", "meta")


def _argument(arg, where: str) -> None:
    kind, value = _one_of(arg, where)
    if kind in _REFUSED_ARGS:
        raise _Refused(f"{where} is {_REFUSED_ARGS[kind]}; hetcc segments hold none")
    if kind in _SCALAR_ARGS:
        _typed(value, _SCALAR_ARGS[kind], where)
    elif kind in _LIST_ARGS:
        for item in _list(value, where):
            _typed(item, _LIST_ARGS[kind], where)
    elif kind == "as_tensor":
        _tensor_ref(value, where)
    elif kind == "as_tensors":
        for item in _list(value, where):
            _tensor_ref(item, where)
    elif kind in ("as_optional_tensor", "as_optional_tensors"):
        for item in (_list(value, where) if kind.endswith("s") else [value]):
            inner_kind, inner = _one_of(item, where)
            if inner_kind == "as_tensor":
                _tensor_ref(inner, where)
            elif inner_kind != "as_none":
                raise _Refused(f"{where} is an optional tensor of kind {inner_kind}")
    elif kind in _SYM_ARGS or kind[:-1] in _SYM_ARGS:
        literal = _SYM_ARGS[kind if kind in _SYM_ARGS else kind[:-1]]
        for item in ([value] if kind in _SYM_ARGS else _list(value, where)):
            ref_kind, ref = _one_of(item, where)
            if ref_kind == "as_name":
                _name(ref, where)
            elif ref_kind == literal:
                _typed(ref, _LITERALS[literal], where)
            else:
                raise _Refused(f"{where} is a symbolic value of kind {ref_kind}")
    elif kind == "as_device":
        _device(value, where)
    elif kind == "as_complex":
        _keys(value, {"real", "imag"}, where, required={"real", "imag"})
        for part in ("real", "imag"):
            _typed(value[part], (int, float), where)
    else:
        raise _Refused(f"{where} is an argument of kind {kind!r}, which this hetcc does not know")


def _tensor_only(arg, where: str) -> None:
    kind, value = _one_of(arg, where)
    if kind != "as_tensor":
        raise _Refused(f"{where} is of kind {kind}; hetcc segments take and return tensors only")
    _tensor_ref(value, where)


def _tensor_ref(value, where: str) -> None:
    _keys(value, {"name"}, where, required={"name"})
    _name(value["name"], where)


def _device(value, where: str) -> None:
    _keys(value, {"type", "index"}, where, required={"type"})
    if value["type"] not in _DEVICES:
        raise _Refused(f"{where} names device {value['type']!r}; hetcc segments use {', '.join(_DEVICES)}")
    if value.get("index") is not None:
        _int(value["index"], where)


def _tensor_meta(meta, where: str, concrete: bool = False) -> int:
    """Check a tensor's metadata; for a payload (``concrete``) the bytes its storage must hold."""
    _keys(meta, {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"},
          f"the metadata of {where}", required={"dtype", "sizes", "strides", "storage_offset", "device"})
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(meta["dtype"]) if isinstance(meta["dtype"], int) else None
    if dtype is None:
        raise _Refused(f"{where} has dtype {meta['dtype']!r}, which torch does not know")
    if meta.get("layout", 7) != 7:  # schema.Layout.Strided: no sparse or mkldnn tensors
        raise _Refused(f"{where} has layout {meta.get('layout')!r}; hetcc segments hold dense tensors only")
    _device(meta["device"], f"the device of {where}")
    _bool(meta.get("requires_grad", False), f"requires_grad of {where}")
    dims = [_list(meta["sizes"], where), _list(meta["strides"], where), [meta["storage_offset"]]]
    if len(dims[0]) != len(dims[1]):
        raise _Refused(f"{where} has {len(dims[0])} sizes but {len(dims[1])} strides")
    if not concrete:
        for value in dims[0] + dims[1] + dims[2]:
            _sym(value, "as_int", f"a size of {where}")
        return 0
    if meta["device"]["type"] != "cpu":
        raise _Refused(f"{where} is stored for device {meta['device']['type']!r}; hetcc saves segments from the CPU")
    sizes, strides, (offset,) = ([_concrete(v, where) for v in part] for part in dims)
    if any(v < 0 for v in sizes + strides + [offset]):
        raise _Refused(f"{where} has a negative size, stride or offset")
    if 0 in sizes:
        return 0
    last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides))
    return (last + 1) * dtype.itemsize


def _concrete(value, where: str) -> int:
    kind, number = _one_of(value, where)
    if kind != "as_int":
        raise _Refused(f"{where} is a stored tensor with a symbolic size")
    return _int(number, where)


def _sym(value, literal: str, where: str) -> None:
    kind, inner = _one_of(value, where)
    if kind == literal:
        _typed(inner, _LITERALS[literal], where)
        return
    if kind != "as_expr":
        raise _Refused(f"{where} is a symbolic value of kind {kind}")
    _keys(inner, {"expr_str", "hint"}, where, required={"expr_str"})
    _sym_expr(inner["expr_str"], where)
    if inner.get("hint") is not None:
        hint_kind, hint = _one_of(inner["hint"], where)
        if hint_kind not in _LITERALS:
            raise _Refused(f"{where} has a hint of kind {hint_kind}")
        _typed(hint, _LITERALS[hint_kind], where)


# ---- symbolic expressions, guards, tree specs: strings torch would evaluate or import from

_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "floor", "ceiling", "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    # torch.utils._sympy.functions, as torch's deserializer passes them to sympify
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity"})
"""The constructors sympy's srepr writes for the shape expressions torch.export serializes."""
_SYMPY_ATOMS = frozenset({"true", "false", "oo", "zoo", "nan"})
_SYMPY_KEYWORDS = frozenset({
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite",
    "zero", "nonzero", "rational", "even", "odd", "commutative", "extended_real", "precision"})
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?(\d{1,32}\.?\d{0,32}|\.\d{1,32})([eE][-+]?\d{1,3})?|[-+]?inf|nan")
_LIMIT = 1 << 64
_MAX_EXPONENT = 64
"""Sizes are products of symbols and constants, squared at most in practice; a larger power, or a
power of a power, is how an archive makes sympy compute a number with billions of digits (a hang)."""


def _small_power(node, where: str) -> None:
    """Refuse Pow(base, e) unless e is an integer constant with |e| <= _MAX_EXPONENT and the base
    holds no Pow of its own."""
    if len(node.args) != 2 or node.keywords:
        raise _Refused(f"the shape expression of {where} has a malformed Pow")
    exponent = node.args[1]
    if isinstance(exponent, ast.Call) and isinstance(exponent.func, ast.Name) and exponent.func.id == "Integer" \
            and len(exponent.args) == 1:
        exponent = exponent.args[0]
    sign = 1
    if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, ast.USub):
        exponent, sign = exponent.operand, -1
    if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int
            and abs(sign * exponent.value) <= _MAX_EXPONENT):
        raise _Refused(f"the shape expression of {where} raises to a power that is not a small integer")
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Pow"
           for n in ast.walk(node.args[0])):
        raise _Refused(f"the shape expression of {where} has a power of a power")


def _sym_expr(text, where: str) -> None:
    """Refuse a shape expression unless it is sympy's srepr of integers, floats, symbols and the
    listed functions: torch's deserializer passes it to sympy.sympify, which evaluates Python."""
    tree = _parse(text, f"the shape expression of {where}")

    def walk(node, depth):
        if depth > 64:
            raise _Refused(f"the shape expression of {where} is nested too deeply")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
            if node.func.id == "Pow":
                _small_power(node, where)
            for i, arg in enumerate(node.args):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and i == 0:
                    if not (node.func.id == "Symbol" and _SYMBOL.fullmatch(arg.value)
                            or node.func.id == "Float" and _FLOAT_TEXT.fullmatch(arg.value)):
                        raise _Refused(f"the shape expression of {where} holds the string {arg.value[:40]!r}")
                else:
                    walk(arg, depth + 1)
            for kw in node.keywords:
                if kw.arg not in _SYMPY_KEYWORDS or not isinstance(kw.value, ast.Constant) or not isinstance(
                        kw.value.value, (bool, int)) or abs(kw.value.value) > _MAX_EXPONENT * 4:
                    raise _Refused(f"the shape expression of {where} passes {kw.arg}=...")
            return
        if isinstance(node, ast.Name) and node.id in _SYMPY_ATOMS:
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return walk(node.operand, depth + 1)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and abs(node.value) < _LIMIT:
            return
        raise _Refused(f"the shape expression of {where} is {text[:80]!r}, not a sympy expression of "
                       "sizes (torch would evaluate it as Python)")

    walk(tree, 0)


_GUARD_CALLS = frozenset({"max", "min", "abs", "int", "float", "round"})
_GUARD_MATH = frozenset({"floor", "ceil", "trunc", "sqrt"})
_GUARD_ACCESSORS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_OPS = (ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.And, ast.Or, ast.Not, ast.USub,
              ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Eq,
              ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _guard(text) -> None:
    """Refuse a guard unless it is arithmetic and comparisons on the inputs' sizes, as torch's shape
    guard printer writes them (``L['x'].size()[0] == L['y'].size()[0]``). hetcc drops the guards
    anyway (torch never sees them); this only catches an archive someone wrote code into."""
    tree = _parse(text, "a guard")

    def accessor(node) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "L"
        if isinstance(node, ast.Subscript):
            return (isinstance(node.slice, ast.Constant) and type(node.slice.value) in (int, str)
                    and accessor(node.value))
        return (isinstance(node, ast.Call) and not node.args and not node.keywords
                and isinstance(node.func, ast.Attribute) and node.func.attr in _GUARD_ACCESSORS
                and accessor(node.func.value))

    def walk(node, depth):
        if depth > 64:
            raise _Refused("a guard is nested too deeply")
        if accessor(node) or isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            return
        if isinstance(node, ast.Call):
            func = node.func
            known = (isinstance(func, ast.Name) and func.id in _GUARD_CALLS
                     or isinstance(func, ast.Attribute) and func.attr in _GUARD_MATH
                     and isinstance(func.value, ast.Name) and func.value.id == "math")
            if known and not node.keywords:
                for arg in node.args:
                    walk(arg, depth + 1)
                return
        elif isinstance(node, _GUARD_OPS):
            for child in ast.iter_child_nodes(node):
                walk(child, depth + 1)
            return
        raise _Refused(f"its guards_code holds {text[:80]!r}, which is not a guard on input sizes "
                       "(ep.module() would run it as Python)")

    walk(tree, 0)


def _parse(text, what: str):
    if not isinstance(text, str) or len(text) > 10_000:
        raise _Refused(f"{what} is not a string of at most 10000 characters")
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Refused(f"{what} is {text[:80]!r}, which does not parse") from None


def _treespec(text, where: str) -> str:
    """A serialized treespec, re-serialised, if it is a plain structure (hetcc.structures: torch's
    treespec_loads imports any module an enum key, a defaultdict or a namedtuple names)."""
    try:
        protocol, tree = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise _Refused(f"{where} is not a serialized treespec") from None
    if protocol != 1:
        raise _Refused(f"{where} uses treespec protocol {protocol!r}; this hetcc reads 1")
    why = structure_problem(tree)
    if why:
        raise _Refused(f"{where} {why} (torch would import a module to read other types); hetcc "
                       "segments use tuples, lists and dicts only")
    return json.dumps([1, tree])


# ---- JSON shapes


def _one_of(value, where: str):
    if not isinstance(value, dict) or len(value) != 1 or not isinstance(next(iter(value)), str):
        raise _Refused(f"{where} is not a one-key union object")
    return next(iter(value.items()))


def _keys(value, allowed: set, where: str, required: set = frozenset()) -> None:
    if not isinstance(value, dict):
        raise _Refused(f"{where} is not an object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _Refused(f"{where} has a field {unknown[0]!r} this hetcc does not know (written by a newer "
                       "torch?)")
    missing = sorted(set(required) - set(value))
    if missing:
        raise _Refused(f"{where} has no field {missing[0]!r}")


def _dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Refused(f"{where} is not an object")
    return value


def _list(value, where: str) -> list:
    if not isinstance(value, list):
        raise _Refused(f"{where} is not a list")
    return value


_NON_FINITE = ("Infinity", "-Infinity", "NaN")
"""How torch's serializer writes the floats JSON has no numbers for."""


def _typed(value, kind, where: str):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and value in _NON_FINITE:
        return value
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:  # JSON true is no number
        raise _Refused(f"{where} is {str(value)[:40]!r} of type {type(value).__name__}")
    return value


def _int(value, where: str) -> int:
    return _typed(value, int, where)


def _bool(value, where: str) -> bool:
    return _typed(value, bool, where)


def _str(value, where: str) -> str:
    if not isinstance(value, str) or len(value) > 1000:
        raise _Refused(f"{where} is not a string of at most 1000 characters")
    return value


def _symbol(value, where: str) -> str:
    if not isinstance(value, str) or not _SYMBOL.fullmatch(value):
        raise _Refused(f"{where} names the symbol {value!r}, not a size symbol such as s0")
    return value


def _name(value, where: str) -> str:
    """A value name: torch's deserializer sets it on the graph node as it is, and the Python source
    torch generates for the graph uses it as a variable name, so only plain identifiers pass."""
    if (not isinstance(value, str) or not _NAME.fullmatch(value) or keyword.iskeyword(value)
            or value.startswith("__") or value in _RESERVED):
        raise _Refused(f"{where} is named {str(value)[:80]!r}, not a plain identifier (torch would paste the "
                       "name into the Python code it generates for the graph)")
    return value
