"""Argument types of the argparse commands (serve, export, tune, report): a bad value is argparse's one-line error,
exit code 2, naming the option."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def numeric_type(
    name: str, convert: Callable[[str], Number], what: str, accepts: Callable[[Number], bool], refusal: str
) -> Callable[[str], Number]:
    """An argparse ``type``: ``convert`` the text (else "'TEXT' is not WHAT"), then refuse a value that ``accepts``
    rejects with ``refusal``, a format string that may name ``{text}`` and ``{value}``."""

    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(refusal.format(text=text, value=value))
        return value

    parse.__name__ = parse.__qualname__ = name  # argparse names the type by it in some messages
    return parse


port_number = numeric_type(
    "port_number",
    int,
    "a port number; use 0 to 65535",
    lambda port: 0 <= port <= 65535,
    "{value} is not a port number; use 0 to 65535 (0 picks a free port)",
)
positive_number = numeric_type("positive_number", float, "a number", lambda v: v > 0, "{text} must be above 0; try 1.0")
positive_int = numeric_type("positive_int", int, "a whole number", lambda v: v >= 1, "{value} must be at least 1")
