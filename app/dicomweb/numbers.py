"""Decimal integers from request text, with a length bound checked before ``int()``.

``int()`` refuses strings of more than 4,300 digits (a ValueError that would surface as a 500)
and accepts non-ASCII digits (``"²"``, Arabic-Indic digits); request parameters need neither.
"""

from __future__ import annotations

import re

_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")


class NotANumber(ValueError):
    """The text is not a decimal integer of ASCII digits."""


class NumberTooLong(ValueError):
    """The integer has more significant digits than the caller allows."""


def parse_integer(text: str, *, max_digits: int, signed: bool = False) -> int:
    """``text`` (surrounding spaces and leading zeros tolerated) as an int of at most
    ``max_digits`` significant ASCII digits; NotANumber or NumberTooLong otherwise."""
    stripped = text.strip()
    if not (_SIGNED if signed else _UNSIGNED).fullmatch(stripped):
        raise NotANumber(text)
    sign = -1 if stripped[0] == "-" else 1
    digits = stripped.lstrip("+-").lstrip("0") or "0"
    if len(digits) > max_digits:
        raise NumberTooLong(text)
    return sign * int(digits)


def preview(text: str, limit: int = 20) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")
