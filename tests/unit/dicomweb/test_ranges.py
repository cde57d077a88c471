"""Date and time spans for splitting capped C-FINDs: parsing, halving, and the matching values
written, checked against the demo PACS's own range matching (PS3.4 C.2.2.2.5)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.demo.matching import _range_matches
from app.dicomweb.ranges import EARLIEST, DateSpan, TimeSpan

TODAY = dt.date(2026, 12, 1)


def day(text: str) -> int:
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:])).toordinal()


@pytest.mark.parametrize(("value", "span"), [
    ("", DateSpan(EARLIEST.toordinal(), TODAY.toordinal(), True, True)),
    ("20200229", DateSpan(day("20200229"), day("20200229"))),
    ("20200101-20201231", DateSpan(day("20200101"), day("20201231"))),
    ("-20201231", DateSpan(EARLIEST.toordinal(), day("20201231"), open_before=True)),
    ("-18000101", DateSpan(day("18000101"), day("18000101"), open_before=True)),
    ("20200101-", DateSpan(day("20200101"), TODAY.toordinal(), open_after=True)),
    ("20300101-", DateSpan(day("20300101"), day("20300101"), open_after=True)),
])
def test_parse(value: str, span: DateSpan) -> None:
    assert DateSpan.parse(value, TODAY) == span


@pytest.mark.parametrize("value", ["2020.01.01", "20201301", "-", "20201231-20200101",
                                   "2020*", "20200101\\20200102"])
def test_values_that_are_not_split(value: str) -> None:
    assert DateSpan.parse(value, TODAY) is None


def test_query_values() -> None:
    assert DateSpan(day("20200101"), day("20200101")).query_value() == "20200101"
    assert DateSpan(day("20200101"), day("20200131")).query_value() == "20200101-20200131"
    assert DateSpan(day("20200101"), day("20200131"), True, False).query_value() == "-20200131"
    assert DateSpan(day("20200101"), day("20200131"), False, True).query_value() == "20200101-"
    assert TimeSpan(0, 43199).query_value() == "-120000"
    assert TimeSpan(43200, 86399).query_value() == "120000-"
    assert TimeSpan(3600, 3601).query_value() == "010000-010002"


def test_a_single_day_and_a_single_second_cannot_be_halved() -> None:
    assert DateSpan(day("20200101"), day("20200101")).halves() is None
    assert TimeSpan(5, 5).halves() is None


def test_open_ends_stay_open_in_the_outer_halves() -> None:
    whole = DateSpan.parse("", TODAY)
    assert whole is not None
    first, second = whole.halves() or (None, None)
    assert first is not None and second is not None
    assert first.open_before and not first.open_after
    assert second.open_after and not second.open_before
    assert first.last + 1 == second.first


def _leaves(span: DateSpan, depth: int) -> list[DateSpan]:
    """Halve ``span`` ``depth`` times (where it can be)."""
    halves = span.halves()
    if depth == 0 or halves is None:
        return [span]
    return [leaf for half in halves for leaf in _leaves(half, depth - 1)]


def _dates() -> st.SearchStrategy[str]:
    return st.dates(dt.date(1850, 1, 1), dt.date(2150, 12, 31)).map(
        lambda d: d.strftime("%Y%m%d"))


@given(value=st.one_of(st.just(""), _dates(), st.tuples(_dates(), _dates()).map(
           lambda p: f"{min(p)}-{max(p)}"), _dates().map(lambda d: f"-{d}"),
           _dates().map(lambda d: f"{d}-")),
       date=_dates(), depth=st.integers(0, 8))
def test_the_parts_match_exactly_what_the_whole_matches(value: str, date: str,
                                                        depth: int) -> None:
    """A dated study matched by the original value is matched by exactly one part, and a study
    the original does not match by none (the demo PACS's range matching decides)."""
    whole = DateSpan.parse(value, TODAY)
    assert whole is not None
    parts = _leaves(whole, depth)
    hits = sum(_range_matches("DA", part.query_value(), date) for part in parts)
    expected = 1 if (not value or _range_matches("DA", value, date)) else 0
    assert hits == expected


@given(time=st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59),
                      st.integers(0, 999999)).map(lambda t: f"{t[0]:02d}{t[1]:02d}{t[2]:02d}."
                                                  f"{t[3]:06d}"),
       depth=st.integers(0, 8))
def test_every_time_of_day_falls_in_a_part(time: str, depth: int) -> None:
    parts = [TimeSpan()]
    for _ in range(depth):
        parts = [h for p in parts for h in (p.halves() or (p,))]
    hits = sum(_range_matches("TM", part.query_value(), time) for part in parts)
    assert 1 <= hits <= 2  # parts share their boundary instant
