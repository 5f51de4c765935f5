"""Outputs that are records: a transformers ``ModelOutput`` (an ordered mapping whose fields are
also attributes), a namedtuple, or a ``torch.return_types`` tuple (``x.max(dim=1)``). A compiled model returns the model's own record type; a bundle
stores a record as its class name and field names only, because loading must never import what a
bundle names (docs/bundle.md, trust model). On load:

- a ``ModelOutput`` subclass comes back as itself when its module is already imported in the
  loading process (hetcc looks it up in ``sys.modules``, never imports it), and as a
  :class:`Record` otherwise: the same fields, by name, attribute and position;
- a namedtuple (or return type) comes back as a namedtuple hetcc makes with the same name and
  fields, which compares, unpacks and reads like the original but is not an instance of its class;
- a loaded bundle saves again with its records as they came.

Any other container a model returns (a dataclass, a custom class registered with pytree) cannot be
stored; compile says so in the plan's notes right after capture, and save refuses it.
"""
from __future__ import annotations

import collections
import json
import sys

import torch.utils._pytree as pytree

from hetcc.structures import RECORD, record_problem


class StructureError(ValueError):
    """A model's inputs or outputs hold a container a bundle cannot store."""


class Record(collections.OrderedDict):
    """A model output record whose class this process has not imported: fields by name
    (``out["logits"]``), attribute (``out.logits``) and position (``out[0]``), like a ModelOutput.
    ``record_type`` names the class the model returned."""

    def __init__(self, record_type: str, items=()):
        super().__init__(items)
        self.record_type = record_type

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self.record_type} output has no field {name!r}; it has "
                                 f"{', '.join(self)}") from None

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __reduce__(self):
        return type(self), (self.record_type, list(self.items()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}=<{type(v).__name__}>" for k, v in self.items())
        return f"Record[{self.record_type}]({fields})"


def _flatten(record: Record):
    return list(record.values()), ("mapping", record.record_type, tuple(record.keys()))


def _unflatten(values, context) -> Record:
    _, name, keys = context
    return Record(name, zip(keys, values))


def _dump_context(context) -> str:
    kind, name, keys = context
    return json.dumps({"kind": kind, "class": name, "keys": list(keys)})


def _load_context(text: str):
    data = json.loads(text)
    why = record_problem(data, None)
    if why:
        raise ValueError(f"record context {why}")
    return data["kind"], data["class"], tuple(data["keys"])


pytree.register_pytree_node(Record, _flatten, _unflatten, serialized_type_name=RECORD,
                            to_dumpable_context=_dump_context, from_dumpable_context=_load_context)


def is_model_output(cls) -> bool:
    """A transformers ModelOutput subclass, recognised by its base class, without importing
    transformers."""
    return isinstance(cls, type) and any(
        base.__name__ == "ModelOutput" and base.__module__.startswith("transformers.")
        for base in cls.__mro__[1:])


def _tuple_fields(cls) -> tuple | None:
    """The field names of a namedtuple, or of a structseq such as torch.return_types.max
    (values, indices); None for anything else."""
    if not isinstance(cls, type) or not issubclass(cls, tuple):
        return None
    fields = getattr(cls, "_fields", None) or getattr(cls, "__match_args__", None)
    return tuple(fields) if isinstance(fields, tuple) and fields else None


PLAIN = (tuple, list, dict, collections.OrderedDict)


def storable(spec: pytree.TreeSpec, what: str = "outputs") -> pytree.TreeSpec:
    """``spec`` with every record (ModelOutput, namedtuple) as a :class:`Record` node, ready for
    ``treespec_dumps``. Raises StructureError naming any other container."""
    if spec.is_leaf():
        return spec
    children = [storable(child, what) for child in spec.children()]
    kind = spec.type
    if kind in PLAIN or kind is Record:  # a Record: a loaded bundle's, saved again as it came
        return pytree.TreeSpec(kind, spec.context, children)
    if kind is collections.namedtuple:  # pytree's node type for every namedtuple; the class is the context
        kind = spec.context
    name = getattr(kind, "_hetcc_record_type", None) or (
        f"{kind.__module__}.{kind.__qualname__}" if isinstance(kind, type) else repr(kind))
    fields = _tuple_fields(kind)
    if is_model_output(kind):
        return pytree.TreeSpec(Record, ("mapping", name, tuple(spec.context)), children)
    if fields is not None and len(fields) == len(children):
        return pytree.TreeSpec(Record, ("tuple", name, fields), children)
    raise StructureError(
        f"the model's {what} contain a {name}, which a bundle cannot store (it stores tuples, "
        "lists, dicts, transformers ModelOutputs, namedtuples and torch.return_types); the compiled "
        "model runs, but cm.save() will refuse it: return one of those instead")


def rebuilt(spec: pytree.TreeSpec) -> pytree.TreeSpec:
    """A loaded ``spec`` with its records as the types described in the module docstring."""
    if spec.is_leaf():
        return spec
    children = [rebuilt(child) for child in spec.children()]
    if spec.type is not Record:
        return pytree.TreeSpec(spec.type, spec.context, children)
    kind, name, keys = spec.context
    if kind == "tuple":
        made = _namedtuple(name, keys)
        return pytree.TreeSpec(collections.namedtuple, made, children)
    cls = _imported_model_output(name)
    if cls is not None:
        return pytree.TreeSpec(cls, list(keys), children)
    return pytree.TreeSpec(Record, spec.context, children)


_NAMEDTUPLES: dict = {}


def _namedtuple(name: str, fields: tuple):
    # one class per (name, fields), so outputs of repeated calls are of one type
    key = (name, fields)
    if key not in _NAMEDTUPLES:
        made = collections.namedtuple(name.rsplit(".", 1)[-1], fields)
        made._hetcc_record_type = name  # saved again under the model's own class name
        _NAMEDTUPLES[key] = made
    return _NAMEDTUPLES[key]


def _imported_model_output(name: str):
    """The ModelOutput class ``name`` names, if its module is already imported; None otherwise.
    Never imports and runs no code: the module's own namespace is read as it is (``getattr`` would
    run a module's ``__getattr__``, which lazily importing packages such as torch and transformers
    use to import submodules), so a bundle cannot make the loading process run a module."""
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None:
        return None
    obj = vars(module).get(attribute)
    if not is_model_output(obj):
        return None
    # transformers registers each ModelOutput with pytree when the class is defined
    return obj if obj in pytree.SUPPORTED_NODES else None
