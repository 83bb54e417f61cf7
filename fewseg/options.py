"""Options as dataclass fields that carry their help text.

A learner's options, the training options and the evaluation options are each one
dataclass whose fields are declared with :func:`option`. The same declaration gives the
command line its flags (:func:`add_flags`), checks values read from YAML files or flags
(:func:`options_from`) and names what changed between two runs. Torch-free, so that
``fewseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, asdict, field, fields, is_dataclass
from functools import cache
from typing import Any, TypeVar

from fewseg.errors import FewSegError

T = TypeVar("T")


_SAME = object()


def option(default: Any, help: str, before: Any = _SAME, prediction_only: bool = False) -> Any:
    """A dataclass field with a default and its one-line help text. ``before``: the value
    that a record written before the option existed stands for, when the option's default
    changed the behaviour (else the default does: :func:`recorded_defaults`).
    ``prediction_only``: training neither reads it nor learns anything that depends on it,
    so a trained learner may be loaded with another value (:func:`prediction_only_names`)."""
    metadata: dict[str, Any] = {"help": help}
    if before is not _SAME:
        metadata["before"] = before
    if prediction_only:
        metadata["prediction_only"] = True
    return field(default=default, metadata=metadata)


def option_help(declared: Field[Any]) -> str:
    return str(declared.metadata.get("help", ""))


@cache
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def value_type(cls: type, name: str) -> type:
    """The plain type of field ``name`` (``int | None`` → int)."""
    declared = _types(cls)[name]
    if isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union:
        declared = next(a for a in typing.get_args(declared) if a is not type(None))
    return declared


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def prediction_only_names(cls: type) -> list[str]:
    """The options of ``cls`` declared ``prediction_only``, in declaration order."""
    return [f.name for f in fields(cls) if f.metadata.get("prediction_only")]


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """``value`` as field ``name`` of ``cls`` takes it: ints accepted for floats, numbers for
    strings; anything else of the wrong type is an error naming the option and ``source``."""
    if value is None:
        return None
    expected = value_type(cls, name)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise FewSegError(f"{source}: option {name} must be {expected.__name__}, got {value!r}")
    return value


def options_from(cls: type[T], values: dict[str, Any], source: str, owner: str = "") -> T:
    """An instance of the options dataclass ``cls`` from ``values`` (checked and coerced);
    an unknown key is an error naming ``owner`` (say, the learner) and ``source``."""
    known = field_names(cls)
    unknown = sorted(set(values) - known)
    if unknown:
        whose = f" of {owner}" if owner else ""
        raise FewSegError(f"{source}: unknown option(s){whose}: {', '.join(unknown)}")
    return cls(**{k: coerce(cls, k, v, source) for k, v in values.items()})


def defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: f.default
        for f in fields(cls)
        if f.default is not MISSING  # every option has one
    }


def recorded_defaults(cls: type) -> dict[str, Any]:
    """What a checkpoint's or report's record that lacks an option stands for: the value
    the option's ``before`` names, else its default (adding it kept the behaviour)."""
    return {
        f.name: f.metadata.get("before", f.default) for f in fields(cls) if f.default is not MISSING
    }


def as_dict(options: Any) -> dict[str, Any]:
    if not is_dataclass(options) or isinstance(options, type):
        raise TypeError(f"not an options instance: {options!r}")
    return asdict(options)


def changed_options(
    saved: dict[str, Any], current: dict[str, Any], default_values: dict[str, Any]
) -> list[str]:
    """The options of ``current`` whose value differs from ``saved``'s, an option missing
    from ``saved`` standing for its value in ``default_values``, sorted."""
    saved = {**default_values, **saved}
    return sorted(k for k, v in current.items() if saved.get(k) != v)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(
    group: argparse._ArgumentGroup, cls: type, skip: frozenset[str] = frozenset()
) -> None:
    """One flag per field of ``cls`` (``--no-X`` for booleans); an absent flag is None, so
    that a YAML file's value or the default stands."""
    for declared in fields(cls):
        if declared.name in skip:
            continue
        kind = value_type(cls, declared.name)
        note = (
            "; prediction only: set it on a trained learner by --learner-option"
            if declared.metadata.get("prediction_only")
            else ""
        )
        help_text = f"{option_help(declared)} (default {declared.default}{note})"
        if kind is bool:
            group.add_argument(
                flag_name(declared.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                flag_name(declared.name),
                type=kind,
                default=None,
                metavar=declared.name.upper(),
                help=help_text,
            )
