"""Relative dates in QIDO-style worklist queries (``StudyDate=today``), turned into the DICOM date
values and ranges of PS3.4 C.2.2.2.5 before the query is parsed.

The forms, for any matching attribute whose VR is DA (StudyDate, SeriesDate, ...):

- ``today``, ``yesterday``: that one day (``YYYYMMDD``);
- ``today-N``: the last N days through today, as the range ``YYYYMMDD-YYYYMMDD``
  (``today-7`` is eight calendar days: seven days ago up to and including today);
- ``today+N``: the one day N days from now;
- ``A-B``, ``A-``, ``-B`` where A and B are any of the above or a ``YYYYMMDD`` date: a range, each
  side resolved as a single day (``today-7-yesterday``: from seven days ago through yesterday).

Anything else passes through unchanged, so a plain DICOM value or range keeps its meaning and a
malformed one is reported by the query parser as before. "Today" is the caller's (the gateway's
local) date at the time a run starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR, tag_for_keyword

_TOKEN = r"(?:today(?:[+-]\d{1,4})?|yesterday)"
_SINGLE = re.compile(rf"^{_TOKEN}$", re.IGNORECASE)
_SIDE = rf"(?:{_TOKEN}|\d{{8}})"
_RANGE = re.compile(rf"^({_SIDE})?-({_SIDE})?$", re.IGNORECASE)


def _day(token: str, today: date) -> date | None:
    """The day one token names; None when it is not a relative-date token."""
    text = token.lower()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    match = re.fullmatch(r"today([+-])(\d{1,4})", text)
    if match is None:
        return None
    days = int(match.group(2))
    return today + timedelta(days=days if match.group(1) == "+" else -days)


def _side(text: str | None, today: date) -> str:
    if not text:
        return ""
    day = _day(text, today)
    return day.strftime("%Y%m%d") if day is not None else text


def resolve_relative_date(value: str, today: date) -> str:
    """``value`` with its relative-date tokens resolved (unchanged when it has none)."""
    text = value.strip()
    if _SINGLE.match(text):
        lowered = text.lower()
        day = _day(lowered, today)
        assert day is not None
        if lowered.startswith("today-"):  # the last N days, through today
            return f"{day:%Y%m%d}-{today:%Y%m%d}"
        return f"{day:%Y%m%d}"
    match = _RANGE.match(text)
    if match is None or not any(re.match(_TOKEN, s or "", re.IGNORECASE)
                                for s in match.groups()):
        return value
    return f"{_side(match.group(1), today)}-{_side(match.group(2), today)}"


def _is_date_attribute(name: str) -> bool:
    """Whether a query parameter names an attribute of VR DA (keyword or 8-hex tag)."""
    tag: int | None
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = int(name, 16)
    else:
        tag = tag_for_keyword(name)
    if tag is None:
        return False
    try:
        return bool(dictionary_VR(tag) == "DA")
    except KeyError:
        return False


def resolve_relative_dates(params: Iterable[tuple[str, str]], today: date
                           ) -> list[tuple[str, str]]:
    """Query parameters with relative dates resolved in the values of DA attributes."""
    return [(name, resolve_relative_date(value, today) if _is_date_attribute(name.strip())
             else value) for name, value in params]
