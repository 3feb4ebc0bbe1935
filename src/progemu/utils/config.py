"""Typed dataclass configs saved beside every artefact.

Each stage describes its settings as a (possibly nested) dataclass with defaults
in code. :func:`save_config` writes the resolved config as JSON next to the
artefact it produced (with a schema version and the progemu version), and
:func:`load_config` reads it back into the same dataclass, rejecting unknown keys
so that a typo in a hand-edited file is an error, not a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

from .atomic import atomic_write_json

T = TypeVar("T")

__all__ = ["save_config", "load_config", "config_to_dict", "config_from_dict"]


def config_to_dict(config: Any) -> dict:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_from_dict(cls: type[T], data: dict, *, where: str = "config") -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"_schema", "_progemu_version", "_kind"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        field_type = hints.get(field.name)
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            value = config_from_dict(field_type, value, where=f"{where}.{field.name}")
        elif (field_type is tuple or typing.get_origin(field_type) is tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def save_config(config: Any, path: str | os.PathLike, kind: str | None = None, schema: int = 1) -> Path:
    from progemu import __version__

    data = {"_kind": kind or type(config).__name__, "_schema": schema, "_progemu_version": __version__}
    data.update(config_to_dict(config))
    return atomic_write_json(path, data)


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return config_from_dict(cls, data, where=str(path))
