"""argparse types for numeric options: a bad value is a one-line usage error (exit 2) before
any work, not a crash minutes later."""
from __future__ import annotations

import argparse
import math


def count(least: int = 1):
    """argparse type: a whole number >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


def _number(text: str, ok, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive(text: str) -> float:
    """argparse type: a number above zero."""
    return _number(text, lambda v: v > 0, "a number above zero")


def non_negative(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, lambda v: v >= 0, "zero or more")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _number(text, lambda v: 0 <= v <= 1, "between 0 and 1")


def dropout(text: str) -> float | str:
    """argparse type: a probability in [0, 1), or ``config`` (keep the model config's)."""
    if text.strip().lower() == "config":
        return "config"
    return _number(text, lambda v: 0 <= v < 1, "in [0, 1) or 'config'")


def positives(text: str) -> tuple[float, ...]:
    """argparse type: a comma list of numbers above zero, e.g. 0.6,0.4."""
    return tuple(positive(x.strip()) for x in text.split(","))


def route(text: str) -> tuple[str, int]:
    """argparse type: GLOB=N (a data file glob and a teacher number from 1)."""
    glob, sep, number = text.rpartition("=")
    if not sep or not glob or not number.strip().isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected GLOB=N with N a teacher number from 1, "
                                         f"got {text!r}")
    return glob, int(number)
