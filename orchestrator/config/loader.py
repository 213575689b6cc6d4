"""Typed configuration: plain dicts (from YAML/JSON) in, frozen dataclasses out.

One precedence: dataclass defaults < recipe file < ``--set a.b=c`` overrides. Unknown keys and
values of the wrong type are refused with the dotted key and the valid choices.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class FieldError(ConfigError):
    """A value outside its valid range. The key is dotted as ``--set`` takes it; ``from_dict``
    prefixes it with the section its dataclass sits in (``lr`` → ``pretrain.optim.lr``)."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{key}={value!r}: {valid}")

    def under(self, where: str) -> "FieldError":
        return FieldError(_join(where, self.key), self.value, self.valid)


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or half-open interval of valid values; ``None`` leaves a side unbounded.
    Infinite and NaN floats are never inside."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            if isinstance(self.low, int) and isinstance(self.high, int) and not (self.low_open or self.high_open):
                return f"must be in {self.low}..{self.high}"
            return (f"must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        return f"must be {'<' if self.high_open else '<='} {self.high:g}"


POSITIVE = Range(0.0, low_open=True)
"""> 0 (temperatures, epsilons)."""
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
UNIT = Range(0.0, 1.0)
"""[0, 1] (ratios, λ, γ)."""
UNIT_BELOW_ONE = Range(0.0, 1.0, high_open=True)
"""[0, 1) (Adam betas, dropout)."""
UNIT_ABOVE_ZERO = Range(0.0, 1.0, low_open=True)
"""(0, 1] (top-p)."""


def check_ranges(obj: Any, ranges: dict[str, Range]) -> None:
    """Raise ``FieldError`` for the first field of ``obj`` outside its range (None: not set)."""
    for name, valid in ranges.items():
        value = getattr(obj, name)
        if value is not None and value not in valid:
            raise FieldError(name, value, str(valid))


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
    except FieldError as err:
        raise err.under(where) from None
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
