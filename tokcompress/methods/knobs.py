"""Validating a method's knobs: each a typed dataclass field, checked when the method is built (a clear error naming
what is allowed), and read from text where a command line writes them."""

from __future__ import annotations

import ast
import functools
import math
import numbers
import types
import typing
from dataclasses import fields
from typing import Any


def check_ratio(ratio: Any) -> float:
    """Validate a retained fraction: a real number in (0, 1] (numpy scalars included)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"ratio must be a number in (0, 1], got {ratio!r} ({type(ratio).__name__})")
    if not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"ratio must lie in (0, 1] (the retained fraction of visual tokens), got {ratio!r}")
    return float(ratio)


_TYPE_NAMES = {bool: "True or False", int: "an int", float: "a number", str: "a string", type(None): "None"}


def knob_value(method: str, knob: str, value: Any, annotation: Any) -> Any:
    """`value` as the knob's annotated type (numpy scalars become Python numbers); else a TypeError saying what
    is allowed."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in options:
        return None
    if isinstance(value, bool):
        if bool in options:
            return value
    elif isinstance(value, numbers.Integral) and int in options:
        return int(value)
    elif isinstance(value, numbers.Real) and float in options:
        return float(value)
    elif isinstance(value, str) and str in options:
        return value
    allowed = " or ".join(_TYPE_NAMES.get(option, getattr(option, "__name__", str(option))) for option in options)
    raise TypeError(f"{method} {knob} must be {allowed}, got {value!r} ({type(value).__name__})")


def knob_from_text(method_cls: type, knob: str, text: str) -> Any:
    """A knob's value as a command line writes it: the Python literal it spells (3, 0.5, True, None; true, false and
    none in any case too) where that is one of the knob's types, else the text itself (a string knob such as
    "0.255,0.114" or "6,21,23")."""
    literal = {"true": "True", "false": "False", "none": "None"}.get(text.lower(), text)
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return text
    annotation = knob_annotations(method_cls).get(knob)
    if annotation is None:  # not one of its knobs: building the method says which are
        return value
    try:
        return knob_value(method_cls.name, knob, value, annotation)
    except TypeError:
        return text


@functools.cache
def knob_annotations(method_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(method_cls)
    return {f.name: hints[f.name] for f in fields(method_cls) if f.init}


def check_int(method: str, knob: str, value: Any, minimum: int, optional: bool = False) -> None:
    """Validate an integer knob (bools refused): at least `minimum`, or None when `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int ≥ {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{method} {knob} must be {allowed}, got {value!r}")


def check_interval(method: str, knob: str, value: float | None, interval: str, optional: bool = False) -> None:
    """Validate a number knob inside `interval`, written as in mathematics ("[-1, 1]", "(0, 1]", "[0, 1)"), or
    None when `optional`; NaN lies in none."""
    if optional and value is None:
        return
    if interval[0] not in "[(" or interval[-1] not in ")]" or interval.count(",") != 1:
        raise ValueError(f"an interval is written '[low, high]', '(low, high]', … ; got {interval!r}")
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    if not (above and below):
        raise ValueError(f"{method} {knob} must lie in {interval}, got {value!r}")


def check_choice(method: str, knob: str, value: Any, choices: tuple[str, ...]) -> None:
    """Validate a knob that takes one of a few names."""
    if value not in choices:
        raise ValueError(f"{method} {knob} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def listed(text: str) -> list[str]:
    """The items of a list knob spelt as text: "6,21,23", or "6;21;23" where commas part arguments (lmms-eval's
    `--model_args`)."""
    return [item.strip() for item in text.replace(";", ",").split(",")]
