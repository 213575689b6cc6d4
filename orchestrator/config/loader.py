"""Typed configuration: plain dicts (from YAML/JSON) in, frozen dataclasses out.

One precedence: dataclass defaults < recipe file < ``--set a.b=c`` overrides. Unknown keys and
values of the wrong type are refused with the dotted key and the valid choices.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def load_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping; a missing or malformed file names its path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` → (["train", "lr"], 0.0003); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each dotted key in a copy of ``data``; intermediate mappings are created as needed."""
    data = json.loads(json.dumps(data))  # a deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if isinstance(child, str):  # e.g. `model: tiny` then `--set model.n_layers=4`
                child = {"preset": child}
            elif not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r}: valid keys are {', '.join(fields)}")
    kwargs = {name: coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int may widen to float); recurse into dataclasses."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} is not allowed: choose one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        item = args[0] if args else Any
        items = [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        return {k: coerce(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: type, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be an integer")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}={value!r} must be {tp.__name__}, not {type(value).__name__}")
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain JSON-ready data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
