"""Date and time ranges for splitting a C-FIND a PACS capped (pure code, no I/O).

A capped search is cut into StudyDate ranges, and a single day into StudyTime ranges, each
written as a range-matching value (PS3.4 C.2.2.2.5). The parts of a span cover it exactly: the
outer parts of an open-ended span stay open-ended (``-20191231``, ``20200101-``), so a value
outside the finite bounds used for bisecting is still matched by one part. Time parts overlap by
one boundary instant (``-120000`` and ``120000-``): a time with fractional seconds such as
``115959.5`` falls in a part whatever the PACS makes of a bound without fractions, and the
duplicates this may produce are removed by the caller (by unique key).

A range never matches an empty value (PS3.4 C.2.2.2.5): entities without a StudyDate (or
without a StudyTime) are found only by the query the ranges replace.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

EARLIEST = dt.date(1900, 1, 1)
"""Where bisecting an open lower date bound starts (earlier dates stay in the open first part)."""
SECONDS_PER_DAY = 86_400
_DATE_RE = re.compile(r"^\d{8}$")


def _date(text: str) -> int | None:
    """The ordinal of a DA value ``YYYYMMDD``, None when it is not one."""
    if not _DATE_RE.match(text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:])).toordinal()
    except ValueError:
        return None


def _da(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).strftime("%Y%m%d")


def _tm(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


@dataclass(frozen=True, slots=True)
class DateSpan:
    """Days ``first``..``last`` (ordinals, inclusive); ``open_before``/``open_after``: the span
    also takes every date before ``first`` / after ``last``."""

    first: int
    last: int
    open_before: bool = False
    open_after: bool = False

    @classmethod
    def parse(cls, value: str, today: dt.date) -> DateSpan | None:
        """The span a StudyDate matching value covers: empty (universal), a date, or a range
        ``A-B``, ``-B``, ``A-``; None for anything else (it is not split)."""
        text = value.strip()
        if not text:
            return cls(EARLIEST.toordinal(), max(today.toordinal(), EARLIEST.toordinal()),
                       True, True)
        if "-" not in text:
            day = _date(text)
            return None if day is None else cls(day, day)
        low, _, high = text.partition("-")
        first = _date(low) if low else None
        last = _date(high) if high else None
        if (low and first is None) or (high and last is None) or (not low and not high):
            return None
        if first is None:
            assert last is not None
            return cls(min(EARLIEST.toordinal(), last), last, open_before=True)
        if last is None:
            return cls(first, max(first, today.toordinal()), open_after=True)
        return cls(first, last) if first <= last else None

    @property
    def single_day(self) -> bool:
        """The span is exactly one day (it can only be split by time)."""
        return self.first == self.last and not self.open_before and not self.open_after

    @property
    def day(self) -> str:
        """The first day as a DA value."""
        return _da(self.first)

    def halves(self) -> tuple[DateSpan, DateSpan] | None:
        """Two spans covering this one, earlier first; None for a single day."""
        if self.first < self.last:
            middle = (self.first + self.last) // 2
            return (DateSpan(self.first, middle, self.open_before, False),
                    DateSpan(middle + 1, self.last, False, self.open_after))
        if self.open_before and self.first > 1:
            return (DateSpan(self.first - 1, self.first - 1, True, False),
                    DateSpan(self.first, self.last, False, self.open_after))
        if self.open_after and self.last < dt.date.max.toordinal():
            return (DateSpan(self.first, self.last, self.open_before, False),
                    DateSpan(self.last + 1, self.last + 1, False, True))
        return None

    def query_value(self) -> str:
        """The StudyDate matching value for this span."""
        if self.single_day:
            return self.day
        low = "" if self.open_before else _da(self.first)
        high = "" if self.open_after else _da(self.last)
        return f"{low}-{high}"


@dataclass(frozen=True, slots=True)
class TimeSpan:
    """Seconds ``first``..``last`` of a day (inclusive, 0..86399), with the fractions of
    ``last``: the value written reaches to the next second (see the module note)."""

    first: int = 0
    last: int = SECONDS_PER_DAY - 1

    def halves(self) -> tuple[TimeSpan, TimeSpan] | None:
        """Two spans covering this one, earlier first; None for a single second."""
        if self.first >= self.last:
            return None
        middle = (self.first + self.last) // 2
        return TimeSpan(self.first, middle), TimeSpan(middle + 1, self.last)

    def query_value(self) -> str:
        """The StudyTime matching value: open at the start and the end of the day."""
        low = "" if self.first == 0 else _tm(self.first)
        high = "" if self.last >= SECONDS_PER_DAY - 1 else _tm(self.last + 1)
        return f"{low}-{high}"
