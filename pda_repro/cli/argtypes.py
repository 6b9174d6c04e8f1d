"""Argument types of the `pda-repro` commands: each error says what was expected and names the value
(argparse prints it as ``argument --flag: <message>``)."""

from __future__ import annotations

import argparse
import difflib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "float_at_least",
    "int_at_least",
    "non_negative_int",
    "option_pair",
    "positive_float",
    "positive_int",
    "suggest",
    "workers",
]


def suggest(value: str, known: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `known`, else ''."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def int_at_least(low: int, note: str = "") -> Callable[[str], int]:
    """A type: a whole number >= `low` (`note` follows the bound in the error, e.g. ' (0: defaults)')."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}{note}, got {value!r}")
        return n

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_at_least(low: float, what: str = "a number", example: str = "") -> Callable[[str], float]:
    """A type: a finite number >= `low`; the error says `expected <what> >= <low><example>`."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            x = float("nan")
        if not (math.isfinite(x) and x >= low):
            raise argparse.ArgumentTypeError(f"expected {what} >= {low:g}{example}, got {value!r}")
        return x

    parse.__name__ = f"float_at_least_{low:g}"
    return parse


def positive_float(value: str) -> float:
    """A finite number > 0."""
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return x


def workers(value: str) -> int | str:
    """A positive number of Ray workers, or 'auto'."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None


def option_pair(value: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON where it is JSON (0.5, true, [1, 2]), else as text."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    return key.strip(), parsed
