"""Typed records for the JSON files the pipeline writes: frozen dataclasses checked field by field.

An owner module (``vqa.manifest``, ``vqa.run_folder``, ...) declares a frozen dataclass for
its file and converts with ``record_to_dict`` / ``record_from_dict``; a file that does not
fit gets one sentence naming it, never a KeyError or an AttributeError.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from vqa.errors import VQAError

R = TypeVar("R")


def record_to_dict(record: Any) -> dict[str, Any]:
    """A JSON-able dict of a record (tuples become lists, nested records dicts)."""
    return _plain(dataclasses.asdict(record))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def record_from_dict(cls: type[R], data: Any, where: str, advice: str) -> R:
    """Build ``cls`` from a JSON object, checking every field against its type.

    Keys the record does not know are ignored (a later vqa may add some); a missing key
    takes the field's default, and a missing key without default is an error.

    Args:
        cls: a dataclass.
        data: the parsed JSON.
        where: the file, for the message.
        advice: what the user should do, ending the sentence ("run `vqa preprocess` again").

    Raises:
        VQAError: ``data`` is not an object, lacks a field or has one of the wrong type.
    """
    if not isinstance(data, dict):
        raise VQAError(f"{where} holds a JSON {type(data).__name__}, not an object; {advice}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise VQAError(f"{where} lacks {field.name!r}; {advice}.")
            continue
        ok, value = _check(data[field.name], hints[field.name])
        if not ok:
            raise VQAError(f"{where} has {field.name} = {_short(data[field.name])}, "
                           f"not {_describe(hints[field.name])}; {advice}.")
        values[field.name] = value
    return cls(**values)


def _check(value: Any, kind: Any) -> tuple[bool, Any]:
    """(fits, converted value) of a JSON value against a type hint."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            ok, converted = _check(value, option)
            if ok:
                return True, converted
        return False, None
    if kind is type(None):
        return value is None, None
    if kind is Any:
        return True, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return fits, float(value) if fits else None
    if kind is str:
        return isinstance(value, str), value
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(value, list):
            return False, None
        checked = [_check(item, item_kind) for item in value]
        return all(ok for ok, _ in checked), tuple(item for _, item in checked)
    if origin is dict or kind is dict:
        args = typing.get_args(kind)
        if not isinstance(value, dict):
            return False, None
        if not args:
            return True, value
        checked = {key: _check(item, args[1]) for key, item in value.items()}
        return all(ok for ok, _ in checked.values()), {key: item for key, (_, item) in checked.items()}
    if dataclasses.is_dataclass(kind):
        try:
            return True, record_from_dict(kind, value, "", "")
        except VQAError:
            return False, None
    raise TypeError(f"records cannot check type {kind!r}")


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(kind)[0])}s"
    if origin is dict or kind is dict:
        return "an object"
    if dataclasses.is_dataclass(kind):
        return f"a {kind.__name__} object"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(kind, str(kind))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
