"""Field metadata for the typed config classes: what a value must satisfy and, for a setting users
change often, its command-line flag. The config classes are the single source of defaults,
validation, help text and flags (``splitpriv.config.from_dict`` validates, ``config_flags`` lists
the flags the commands add)."""
from __future__ import annotations

from typing import Any, Callable

Check = tuple[Callable[[Any], bool], str]


def check(predicate: Callable[[Any], bool], allowed: str) -> dict:
    """The value must satisfy ``predicate``; ``allowed`` says what passes."""
    return {"check": (predicate, allowed)}


def one_of(*choices: str) -> dict:
    return {**check(lambda v: v is None or v in choices, f"one of {list(choices)}"), "choices": choices}


def flag(help: str, name: str | None = None) -> dict:
    """The field is also a command-line flag, ``--NAME`` (default: the field's name, or the enclosing
    field's ``flag_prefix`` and it), with ``help``; the default and what is allowed are appended."""
    return {"help": help, "flag": name}


def flag_prefix(prefix: str) -> dict:
    """On a nested config field: the flags of its fields start with ``prefix`` (e.g. ``client-``)."""
    return {"flag_prefix": prefix}


POSITIVE_INT = check(lambda v: v is None or v >= 1, "an integer >= 1")
NON_NEGATIVE = check(lambda v: v >= 0, "a number >= 0")
POSITIVE = check(lambda v: v > 0, "a number > 0")
FRACTION = check(lambda v: 0 <= v < 1, "a fraction in [0, 1)")
OPEN_FRACTION = check(lambda v: 0 < v < 1, "a fraction in (0, 1)")
