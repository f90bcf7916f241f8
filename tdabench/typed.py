"""Typed, ranged dataclass fields: parse a ``--config``/``--set`` string and check it.

A field declares its choices with ``Literal`` and its range and help with :func:`param`::

    similarity: Literal["dot", "cosine"] = param("dot", "how scores compare embeddings")
    batch_size: int = param(64, "examples per forward pass", ge=1)

:func:`parse_field` turns a string (or a JSON value from a configs file) into the field's
type, and refuses anything else with a :class:`~tdabench.errors.ConfigError` naming the field,
its type and its valid range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal

from tdabench.errors import ConfigError

_NONE = ("none", "null")
_BOOL = {"true": True, "false": False}


def param(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, added: bool = False) -> Any:
    """A dataclass field with a default, a help line and an optional range (``ge``/``gt``:
    lower bound, inclusive/exclusive; ``le``/``lt``: upper bound). ``added``: a field added to
    a method's config after records of it were made; while it holds its default it is left out
    of the config's hash (:func:`hashed_fields`), so those records keep theirs."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, **bounds, **({"added": True} if added else {})}
    return dataclasses.field(default=default, metadata=metadata)


def hashed_fields(config: Any) -> dict[str, Any]:
    """A config dataclass as the dict its hash is taken of: every field, except an ``added``
    one that holds its default."""
    values = dataclasses.asdict(config)
    return {f.name: values[f.name] for f in dataclasses.fields(config)
            if not (f.metadata.get("added") and values[f.name] == f.default)}


def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type annotation (``from __future__ import annotations`` safe)."""
    return typing.get_type_hints(cls)


def _options(tp: Any) -> tuple[list[Any], bool]:
    """The member types of ``tp`` (a union is split) and whether ``None`` is one of them."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = list(typing.get_args(tp))
    else:
        args = [tp]
    return [a for a in args if a is not type(None)], type(None) in args


def describe_type(tp: Any) -> str:
    """``tp`` in words: ``int``, ``one of ['dot', 'cosine']``, ``float or none``."""
    members, optional = _options(tp)
    words = []
    for m in members:
        if typing.get_origin(m) is Literal:
            words.append(f"one of {list(typing.get_args(m))}")
        else:
            words.append("true or false" if m is bool else getattr(m, "__name__", str(m)))
    return " or ".join(words + (["none"] if optional else []))


def describe_range(meta: Any) -> str:
    """A field's range as text, e.g. ``>= 1``, ``> 0 and <= 1``; ``""`` when unbounded."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{signs[k]} {meta[k]:g}" for k in signs if k in meta)


def _convert(raw: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value): ``raw`` (a string or a JSON value) as one member type ``tp``."""
    text = raw.strip() if isinstance(raw, str) else None
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            if raw == choice or (text is not None and text == str(choice)):
                return True, choice
        return False, None
    if tp is bool:
        if isinstance(raw, bool):
            return True, raw
        return (text is not None and text.lower() in _BOOL), _BOOL.get((text or "").lower())
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return True, raw
        try:
            return text is not None, int(text) if text is not None else None
        except ValueError:
            return False, None
    if tp is float:  # finite only: nan and +-inf are no setting (they made every score 0)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return math.isfinite(raw), float(raw)
        try:
            value = float(text) if text is not None else None
        except ValueError:
            return False, None
        return value is not None and math.isfinite(value), value
    if tp is str:
        return isinstance(raw, str), raw
    # anything else (dict, list): JSON
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return False, None
    origin = typing.get_origin(tp) or tp
    return isinstance(value, origin), value


def parse_field(name: str, raw: Any, tp: Any, meta: Any = None) -> Any:
    """``raw`` as a value of type ``tp``, within the range in ``meta`` (see :func:`param`);
    ConfigError naming ``name``, its type and range otherwise."""
    meta = meta or {}
    members, optional = _options(tp)
    value, ok = None, False
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE)):
        return None
    for member in members:  # int before float for "int | float": tried in declared order
        ok, value = _convert(raw, member)
        if ok:
            break
    if not ok or not in_range(value, meta):
        raise ConfigError(f"{name} must be {expectation(tp, meta)}, not {raw!r}")
    return value


def expectation(tp: Any, meta: Any) -> str:
    """What a field takes, in words: its type (or choices) and range, e.g. ``int >= 1``."""
    rng = describe_range(meta or {})
    return describe_type(tp) + (f" {rng}" if rng else "")


def in_range(value: Any, meta: Any) -> bool:
    """Whether ``value`` (a number; anything else passes) lies within ``meta``'s bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return (value >= meta.get("ge", value) and value <= meta.get("le", value)
            and ("gt" not in meta or value > meta["gt"]) and ("lt" not in meta or value < meta["lt"]))


def parse_dataclass_fields(cls: type, overrides: dict[str, Any], what: str) -> dict[str, Any]:
    """``overrides`` (field name -> string or JSON value) parsed by the types of dataclass
    ``cls``; ``what`` names the owner in messages (``"method 'tfidf'"``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} for {what}; valid fields: "
                          f"{sorted(fields)} (see `tdabench list --method ...`)")
    types_ = field_types(cls)
    return {k: parse_field(k, v, types_[k], fields[k].metadata) for k, v in overrides.items()}


def describe_fields(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, default, type and range, help) of each field of dataclass ``cls``."""
    types_ = field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        out.append((f.name, repr(default), expectation(types_[f.name], f.metadata),
                    f.metadata.get("help", "")))
    return out
