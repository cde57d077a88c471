"""Decimal integers from request text: ASCII digits only, and a length bound before int()."""

from __future__ import annotations

import pytest

from app.dicomweb.numbers import NotANumber, NumberTooLong, parse_integer, preview


@pytest.mark.parametrize(("text", "signed", "expected"), [
    ("0", False, 0), ("7", False, 7), (" 12 ", False, 12), ("000123", False, 123),
    ("999999999", False, 999_999_999), ("-5", True, -5), ("+5", True, 5), ("-000", True, 0),
])
def test_parses(text: str, signed: bool, expected: int) -> None:
    assert parse_integer(text, max_digits=9, signed=signed) == expected


@pytest.mark.parametrize("text", ["", " ", "1.5", "1e3", "-1", "+1", "0x10", "²", "١٢", "１２",
                                  "1 2", "1\n2", "nan"])
def test_refuses_what_is_not_ascii_digits(text: str) -> None:
    with pytest.raises(NotANumber):
        parse_integer(text, max_digits=9)


@pytest.mark.parametrize("text", ["1" * 10, "9" * 5000, "9" * 100_000, "-" + "9" * 5000])
def test_refuses_too_many_digits_without_converting(text: str) -> None:
    """5,000 digits is past int()'s 4,300-digit limit: the bound is checked first."""
    with pytest.raises(NumberTooLong):
        parse_integer(text, max_digits=9, signed=True)


def test_leading_zeros_do_not_count() -> None:
    assert parse_integer("0" * 5000 + "42", max_digits=9) == 42


def test_preview_is_short() -> None:
    assert preview("9" * 5000) == repr("9" * 20) + "..."
    assert preview("12") == "'12'"
