"""Build frozen dataclasses from plain YAML data, checking every key and type.

Errors name the offending key as a dotted path (``prepare.sets[1].source.kind``) so that a
recipe author can find it without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pipeline.errors import RecipeError

FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+[eE][-+]?\d+")

MUST_EXIST = "must_exist"  # field metadata flag: the value is a path that has to exist
RANGE = "range"  # field metadata: the Range a number (or each number of a tuple) must lie in


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ``ge``/``gt`` below, ``le``/``lt`` above (None: open)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if high is None:
            return f"at least {low:g}" if self.ge is not None else f"above {low:g}"
        if low is None:
            return f"at most {high:g}" if self.le is not None else f"below {high:g}"
        left = "[" if self.ge is not None else "("
        right = "]" if self.le is not None else ")"
        return f"in {left}{low:g}, {high:g}{right}"


def ranged(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A dataclass field whose number must lie in ``Range(**bounds)`` (None always passes)."""
    return dataclasses.field(default=default, metadata={RANGE: Range(**bounds)})


def build(cls: type, data: Any, where: str = "") -> Any:
    """Return ``cls`` (a dataclass or a typing annotation) built from ``data``."""
    return _convert(cls, data, where)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    if origin is Literal:
        allowed = get_args(tp)
        if value is False and "no" in allowed:
            value = "no"  # YAML 1.1 reads a bare `no` as false
        if value not in allowed:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, where)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise RecipeError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {_kind(value)}")
        return {
            _convert(key_tp, k, f"{where}.{k}"): _convert(val_tp, v, f"{where}.{k}")
            for k, v in value.items()
        }
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise RecipeError(f"{where}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {_kind(value)}")
        return value
    if tp is type(None):
        if value is not None:
            raise RecipeError(f"{where}: expected null, got {_kind(value)}")
        return None
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def _convert_union(tp: Any, value: Any, where: str) -> Any:
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    options = [o for o in options if o is not type(None)]
    classes = [o for o in options if dataclasses.is_dataclass(o)]
    if len(classes) > 1 and isinstance(value, dict):
        # Dataclasses in a union are told apart by their Literal ``kind`` field.
        kinds = {_kind_literal(c): c for c in classes}
        if "kind" not in value:
            raise RecipeError(f"{where}.kind: missing; one of {', '.join(map(repr, kinds))}")
        if value["kind"] not in kinds:
            raise RecipeError(
                f"{where}.kind: {value['kind']!r} is not one of {', '.join(map(repr, kinds))}"
            )
        return _build_dataclass(kinds[value["kind"]], value, where)
    errors = []
    for option in options:
        try:
            return _convert(option, value, where)
        except RecipeError as err:
            errors.append(str(err))
    if len(errors) == 1:
        raise RecipeError(errors[0])
    raise RecipeError(
        f"{where}: {_kind(value)} fits none of {', '.join(_name(o) for o in options)}"
    )


def _kind_literal(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    return get_args(hints["kind"])[0]


def _build_dataclass(cls: type, value: Any, where: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in value:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise RecipeError(f"{prefix}{key}: unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], f"{prefix}{name}")
            if f.metadata.get(MUST_EXIST) and kwargs[name] is not None:
                _check_exists(kwargs[name], f"{prefix}{name}")
            if RANGE in f.metadata:
                _check_range(f.metadata[RANGE], kwargs[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{prefix}{name}: missing required key")
    return cls(**kwargs)


def _check_range(bounds: Range, value: Any, where: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for i, item in enumerate(items):
        if item is not None and not bounds.holds(item):
            at = f"{where}[{i}]" if isinstance(value, tuple) else where
            raise RecipeError(f"{at}: must be {bounds.describe()}, got {item}")


def _check_exists(value: Any, where: str) -> None:
    paths = value.values() if isinstance(value, dict) else [value]
    for p in paths:
        if not Path(p).expanduser().exists():
            raise RecipeError(f"{where}: no such file or directory: {p}")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def to_dict(obj: Any) -> Any:
    """Plain-data form of a built config (tuples become lists), for YAML/JSON provenance."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
