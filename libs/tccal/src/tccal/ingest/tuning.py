"""Operational knobs without a config.json key, read from the environment (`<PREFIX><FIELD NAME IN CAPITALS>`).

A knob is a field of a frozen dataclass with a default; an `int` field takes a whole number, any other a number.
A value that is not a number, or is below the allowed least, is refused with the variable's name and value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def knobs_from_env(
    cls: type[Any], prefix: str, environ: Mapping[str, str] | None = None, *, allow_zero: bool = True
) -> dict[str, object]:
    """The fields of `cls` set in the environment, converted (pass them to `cls(**…)`)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for item in dataclasses.fields(cls):
        name = prefix + item.name.upper()
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        convert: Callable[[str], object] = int if item.type in ("int", int) else float
        try:
            value = convert(raw)
        except ValueError:
            kind = "integer" if convert is int else "number"
            raise ValueError(f"{name}={raw!r} is not a valid {kind}") from None
        if isinstance(value, (int, float)):
            if allow_zero and value < 0:
                raise ValueError(f"{name}={raw!r} must not be negative")
            if not allow_zero and value <= 0:
                raise ValueError(f"{name}={raw!r} must be above 0")
        values[item.name] = value
    return values


def unique_users(users: Iterable[str]) -> tuple[str, ...]:
    """A provider entry's `users`, lower-cased, each once, in config order."""
    return tuple(dict.fromkeys(u.lower() for u in users))


def refuse_shared_names(names: list[str], why: str) -> None:
    """ValueError naming every provider name that stands twice (`why` says what that means)."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"calendarProviders: {why}: {', '.join(duplicates)}")
