"""Spooled JSON back into openlineage-python's typed events, so the client treats a replayed event
like a fresh one (dataset reduction, filters, kafka message keys read typed facets). Each facet is
rebuilt as the class that stamps its _schemaURL; a facet no class knows, or one that would not
survive the round trip unchanged, stays a plain dict (the transports serialize both alike)."""

from __future__ import annotations

import enum
import functools
import importlib
import pkgutil
import types
import typing

import attr
import openlineage.client.generated as generated
from openlineage.client.event_v2 import RunEvent
from openlineage.client.generated.base import BaseFacet
from openlineage.client.serde import Serde

from orchestration.lineage import facets as plumbline_facets


def run_event(data: dict) -> RunEvent:
    """The typed RunEvent of a serialized one; Serde.to_dict of the result equals `data`."""
    return _instance(RunEvent, data)


@functools.cache
def facet_classes() -> dict[str, type]:
    """Every facet class of openlineage-python and plumbline, by the _schemaURL it stamps."""
    modules = [importlib.import_module(f"{generated.__name__}.{m.name}") for m in pkgutil.iter_modules(generated.__path__)]
    out = {}
    for module in [*modules, plumbline_facets]:  # plumbline's last: its stamps override
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseFacet) and obj.__module__ == module.__name__:
                out[obj._get_schema()] = obj
    return out


@functools.cache
def _fields(cls: type) -> tuple:
    attr.resolve_types(cls)
    return attr.fields(cls)


def _instance(cls: type, data: dict):
    fields = _fields(cls)
    unknown = set(data) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)}")
    return cls(**{f.alias: _build(f.type, data[f.name]) for f in fields if f.init and f.name in data})


def _facet(data):
    cls = facet_classes().get(data.get("_schemaURL")) if isinstance(data, dict) else None
    if cls is None:
        return data
    try:
        facet = _instance(cls, data)
    except (TypeError, ValueError):
        return data
    return facet if Serde.to_dict(facet) == data else data


def _build(tp, value):
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _build(options[0], value)
        for option in options:
            if isinstance(option, type) and issubclass(option, enum.Enum) and isinstance(value, str):
                return option(value)
            if attr.has(option) and isinstance(value, dict):
                return _instance(option, value)
        return value
    if origin is list:
        return [_build(args[0], v) for v in value]
    if origin is dict:
        if isinstance(args[1], type) and issubclass(args[1], BaseFacet):
            return {k: _facet(v) for k, v in value.items()}
        return {k: _build(args[1], v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if attr.has(tp) and isinstance(value, dict):
        return _instance(tp, value)
    return value
