"""Declared, typed settings: one validator for every strategy and trainer key.

A component declares its settings once, next to the code that reads them, as a frozen
dataclass deriving from :class:`Settings` whose fields are made with :func:`setting`:

- the annotation is the type: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``
  (the allowed choices), ``list[X]``, ``X | None`` (null allowed), unions of those;
- :func:`setting` gives the default, a one-line doc, the allowed range (``ge``, ``gt``,
  ``le``, ``lt``; applied to every number, list items included) and, where the paper and
  the authors' code disagree, the provenance of the default.

:meth:`Settings.parse` turns a YAML mapping into an instance (the single validator: it
raises :class:`ConfigError` naming the key, the value and what was expected),
:meth:`Settings.to_dict` gives the resolved mapping back, and :meth:`Settings.json_schema`
/ :func:`dataclass_schema` describe the same keys as JSON Schema. Checks that tie keys
together go in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from activedet.errors import ConfigError

__all__ = ["Settings", "NoSettings", "Spec", "Declared", "setting", "dataclass_schema", "strategy_schema",
           "JSON_SCHEMA_DIALECT"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Spec:
    """What a :func:`setting` field carries besides its type and default."""

    doc: str
    key: str | None = None  # the YAML key when it is not a Python name (``lambda``)
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_items: int | None = None
    provenance: str = ""  # where the default comes from when paper and code differ


def setting(default: Any, doc: str, *, key: str | None = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            min_items: int | None = None, provenance: str = "") -> Any:
    """A dataclass field declaring one setting (see the module docstring)."""
    meta = {"setting": Spec(doc, key, ge, gt, le, lt, min_items, provenance)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One declared setting: YAML key, attribute name, type, default and :class:`Spec`."""

    key: str
    attr: str
    type: Any
    default: Any
    spec: Spec

    def expected(self) -> str:
        """What a valid value looks like, in words (used in error messages)."""
        return _describe(self.type, self.spec)

    def type_name(self) -> str:
        return _type_name(self.type)


class _Bad(Exception):
    """A value does not fit a type (internal to :func:`_convert`)."""


class Settings:
    """Base of declared settings dataclasses (subclasses are ``@dataclass(frozen=True)``)."""

    @classmethod
    def declared(cls) -> tuple[Declared, ...]:
        """Every setting of the class, in field order."""
        return _declared(cls)

    @classmethod
    def parse(cls: type[S], data: Mapping[str, Any] | None, *, where: str = "strategy", owner: str = "") -> S:
        """Validate ``data`` (missing keys take their defaults) into an instance.

        Raises :class:`ConfigError` naming an unknown key, or a bad key, its value and what
        was expected. ``where`` prefixes keys in messages (``strategy key 'top_k' ...``);
        ``owner`` names whose keys they are (``strategy 'mial'``).
        """
        data = dict(data or {})
        known = ", ".join(sorted(d.key for d in cls.declared())) or "none"
        unknown = sorted(k for k in data if k not in {d.key for d in cls.declared()})
        if unknown:
            whose = f" for {owner}" if owner else ""
            raise ConfigError(f"unknown key '{where}.{unknown[0]}'{whose} (known: {known})")
        return cls.pick(data, where=where)

    @classmethod
    def pick(cls: type[S], data: Mapping[str, Any] | None, *, where: str = "strategy") -> S:
        """Like :meth:`parse`, but keys the class does not declare are ignored (a trainer
        reading its part of a strategy's settings)."""
        data = dict(data or {})
        kwargs = {}
        for d in cls.declared():
            if d.key in data:
                try:
                    kwargs[d.attr] = _convert(data[d.key], d.type, d.spec)
                except _Bad:
                    raise ConfigError(
                        f"{where} key '{d.key}' = {data[d.key]!r}: expected {d.expected()}") from None
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings keyed by YAML key (every default filled in)."""
        return {d.key: copy.deepcopy(getattr(self, d.attr)) for d in self.declared()}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {d.key: copy.deepcopy(d.default) for d in cls.declared()}

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """An object schema: one property per key with type, range, default and description."""
        props = {}
        for d in cls.declared():
            doc = d.spec.doc + (f" ({d.spec.provenance})" if d.spec.provenance else "")
            props[d.key] = {**_type_schema(d.type, d.spec), "default": d.default, "description": doc}
        return {"type": "object", "properties": props, "additionalProperties": False}


@dataclass(frozen=True)
class NoSettings(Settings):
    """A component without settings."""


@functools.cache
def _declared(cls: type) -> tuple[Declared, ...]:
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Declared(spec.key or f.name, f.name, hints[f.name], default, spec))
    return tuple(out)


# ---------------------------------------------------------------------------- checking
def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _in_range(v: float, spec: Spec) -> bool:
    return not ((spec.ge is not None and v < spec.ge) or (spec.gt is not None and v <= spec.gt)
                or (spec.le is not None and v > spec.le) or (spec.lt is not None and v >= spec.lt))


def _convert(value: Any, tp: Any, spec: Spec) -> Any:
    """``value`` as type ``tp`` within ``spec``'s range, or :class:`_Bad`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is not type(None):
                try:
                    return _convert(value, arg, spec)
                except _Bad:
                    pass
        raise _Bad
    if origin is Literal:
        if any(value == c and type(value) is type(c) for c in get_args(tp)):
            return value
        raise _Bad
    if origin is list:
        if not isinstance(value, (list, tuple)) or len(value) < (spec.min_items or 0):
            raise _Bad
        (item,) = get_args(tp)
        return [_convert(v, item, spec) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise _Bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad
        if tp is int and not float(value).is_integer():
            raise _Bad
        if not _in_range(value, spec):
            raise _Bad
        return int(value) if tp is int else float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Bad
    raise TypeError(f"unsupported setting type {tp!r}")


def _range_words(spec: Spec) -> str:
    lo = f"[{spec.ge:g}" if spec.ge is not None else f"({spec.gt:g}" if spec.gt is not None else None
    hi = f"{spec.le:g}]" if spec.le is not None else f"{spec.lt:g})" if spec.lt is not None else None
    if lo and hi:
        return f" in {lo}, {hi}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1:]}"
    if hi:
        return f" {'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
    return ""


def _describe(tp: Any, spec: Spec) -> str:
    origin = get_origin(tp)
    if _is_union(tp):
        parts = [_describe(a, spec) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in get_args(tp) else "")
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in get_args(tp))
    if origin is list:
        item = get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(item)
        words = plural + _range_words(spec) if plural else _describe(item, spec)
        return ("a non-empty list of " if spec.min_items else "a list of ") + words
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range_words(spec)
    if tp is float:
        return "a number" + _range_words(spec)
    if tp is str:
        return "a string"
    return "a mapping" if tp is dict or origin is dict else _type_name(tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if _is_union(tp):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "|".join(str(c) for c in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))


# ---------------------------------------------------------------------------- JSON Schema
def _type_schema(tp: Any, spec: Spec | None = None) -> dict[str, Any]:
    """JSON Schema of one annotation (``spec``: its range and list length, if declared)."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if _is_union(tp):
        alts = [{"type": "null"} if a is type(None) else _type_schema(a, spec) for a in get_args(tp)]
        if {int, float} == set(get_args(tp)):
            return _type_schema(float, spec)
        return {"anyOf": alts}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is list:
        out: dict[str, Any] = {"type": "array", "items": _type_schema(get_args(tp)[0], spec)}
        if spec is not None and spec.min_items:
            out["minItems"] = spec.min_items
        return out
    if tp is dict or origin is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp not in simple:
        raise TypeError(f"no JSON Schema for {tp!r}")
    out = {"type": simple[tp]}
    if spec is not None and tp in (int, float):
        for name, attr in (("minimum", "ge"), ("exclusiveMinimum", "gt"), ("maximum", "le"),
                           ("exclusiveMaximum", "lt")):
            if getattr(spec, attr) is not None:
                out[name] = getattr(spec, attr)
    return out


def dataclass_schema(cls: type, choices: Mapping[tuple[str, ...], tuple[Any, ...]] | None = None,
                     path: tuple[str, ...] = ()) -> dict[str, Any]:
    """JSON Schema of a (config) dataclass, read from its fields and type hints, so a field
    added later appears without editing this; nested dataclasses become nested objects
    (null allowed: an empty YAML section). ``choices``: field path -> allowed values."""
    choices = choices or {}
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        where = path + (f.name,)
        if dataclasses.is_dataclass(tp):
            sub = dataclass_schema(tp, choices, where)
            props[f.name] = {**sub, "type": ["object", "null"]}
            continue
        spec = f.metadata.get("setting")
        sch = _type_schema(tp, spec)
        if where in choices:
            sch = {"enum": list(choices[where])}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        props[f.name] = {**sch, "default": default}
        if spec is not None:
            props[f.name]["description"] = spec.doc
    return {"type": "object", "properties": props, "additionalProperties": False}


def strategy_schema(strategies: Mapping[str, Mapping[str, Any]], default: str) -> dict[str, Any]:
    """The ``strategy`` section: ``name`` picks which settings are allowed beside it.

    ``strategies``: name -> object schema of its settings (:meth:`Settings.json_schema`);
    ``default``: the strategy used when ``name`` is left out. ``strategy: NAME`` (a string)
    is accepted as short for ``{name: NAME}``.
    """
    names = sorted(strategies)

    def branch(name: str) -> dict[str, Any]:
        props = {"name": {"const": name}, **strategies[name]["properties"]}
        return {"properties": props, "additionalProperties": False}

    rules: list[dict[str, Any]] = [
        {"if": {"properties": {"name": {"const": n}}, "required": ["name"]}, "then": branch(n)} for n in names]
    if default in strategies:
        rules.append({"if": {"not": {"required": ["name"]}}, "then": branch(default)})
    obj = {"properties": {"name": {"enum": names, "default": default,
                                   "description": "registered strategy (`activedet strategies`)"}},
           "allOf": rules}
    return {"type": ["object", "string"], "if": {"type": "string"}, "then": {"enum": names}, "else": obj}
