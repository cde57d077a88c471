"""Warning header values: ASCII-safe and bounded whatever names the request carried."""

from __future__ import annotations

from urllib.parse import unquote

from app.api.warning import (
    MAX_LISTED_NAMES,
    MAX_WARNING_TEXT,
    ignored_parameters_text,
    warning_value,
)


def _is_safe_header(value: str) -> bool:
    return value.isascii() and all(0x20 <= ord(c) < 0x7F for c in value)


def test_plain_text_is_unchanged() -> None:
    assert warning_value("http://gw/dicomweb", "Only literal matching.") == (
        '299 http://gw/dicomweb "Only literal matching."')


def test_non_ascii_control_quote_and_backslash_are_escaped() -> None:
    value = warning_value("http://gw", 'a\r\nb "名" \\ \x00 \x7f')
    assert _is_safe_header(value)
    inner = value.split(" ", 2)[2]
    assert inner.startswith('"') and inner.endswith('"') and '"' not in inner[1:-1]
    assert "\\" not in inner
    assert unquote(inner[1:-1]) == 'a\r\nb "名" \\ \x00 \x7f'


def test_text_is_bounded() -> None:
    value = warning_value("http://gw", "x" * 100_000)
    assert len(value) < MAX_WARNING_TEXT + 40
    assert value.endswith('..."')


def test_ignored_names_are_listed_escaped_and_counted() -> None:
    text = ignored_parameters_text(["名", "a\r\nb", "50%", "plain"])
    assert text == ("Unknown query attributes were ignored: %E5%90%8D, a%0D%0Ab, 50%25, plain")


def test_many_ignored_names_are_cut() -> None:
    names = [f"unknown{i}" for i in range(1500)]
    text = ignored_parameters_text(names)
    assert text.count("unknown") == MAX_LISTED_NAMES
    assert text.endswith(f" and {1500 - MAX_LISTED_NAMES} more")
    assert len(warning_value("http://gw", text)) < 400


def test_long_names_are_cut_and_repeats_listed_once() -> None:
    text = ignored_parameters_text(["y" * 10_000, "y" * 10_000, "z"])
    assert text.endswith(": " + "y" * 61 + "..., z")
