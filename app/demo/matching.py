"""C-FIND attribute matching (PS3.4 C.2.2.2) on pydicom data elements, for the demo PACS.

Implements single value, universal, wildcard, range, UID list and sequence matching, plus the
projection of a matched element onto the requested keys (what a C-FIND response returns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

__all__ = [
    "WILDCARD_VRS",
    "answer_element",
    "has_non_ascii",
    "is_universal",
    "match_element",
]

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
"""VRs for which ``*`` and ``?`` are wildcards (PS3.4 C.2.2.2.4)."""

_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_DT_OFFSET = re.compile(r"[+-]\d{4}$")
_DT_RANGE = re.compile(r"^(\d[\d.]*(?:[+-]\d{4})?)?-(\d[\d.]*(?:[+-]\d{4})?)?$")


def _values(elem: DataElement | None) -> list[Any]:
    """The element's values as a list; [] when absent or zero length."""
    if elem is None:
        return []
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [v for v in value if v is not None and v != ""]
    if isinstance(value, (str, bytes)) and value in ("", b""):
        return []
    if isinstance(value, PersonName) and not str(value):
        return []
    return [value]


def is_universal(elem: DataElement) -> bool:
    """True if ``elem`` asks only for the attribute's value (PS3.4 C.2.2.2.3)."""
    if elem.VR == "SQ":
        items = elem.value or []
        return len(items) == 0 or all(is_universal(e) for e in items[0])
    values = _values(elem)
    if not values:
        return True
    # A lone "*" matches everything, like universal matching (C.2.2.2.4).
    return elem.VR in WILDCARD_VRS and len(values) == 1 and str(values[0]).strip() == "*"


@lru_cache(maxsize=1024)
def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _text_matches(query: str, value: str, *, wildcard: bool, ignore_case: bool) -> bool:
    query, value = query.strip(), value.strip()
    if wildcard and ("*" in query or "?" in query):
        return _wildcard_regex(query, ignore_case).fullmatch(value) is not None
    if ignore_case:
        return query.casefold() == value.casefold()
    return query == value


def _pn_groups(value: object) -> list[str]:
    """The three component groups of a PN (alphabetic, ideographic, phonetic), normalised."""
    groups = str(value).split("=")
    groups += [""] * (3 - len(groups))
    return [g.strip().rstrip("^").strip() for g in groups[:3]]


def _pn_matches(query: object, value: object) -> bool:
    """PN matching, case-insensitive; a query of one group may match any group of the value."""
    q_groups, v_groups = _pn_groups(query), _pn_groups(value)
    if "=" not in str(query):
        return any(
            g and _text_matches(q_groups[0], g, wildcard=True, ignore_case=True) for g in v_groups
        )
    return all(
        not q or (v and _text_matches(q, v, wildcard=True, ignore_case=True))
        for q, v in zip(q_groups, v_groups, strict=True)
    )


def _pad_time(digits: str, fraction: str | None, upper: bool) -> str:
    """HHMMSS.FFFFFF with missing components filled low (or high for an upper bound)."""
    digits = digits.replace(":", "")
    hh = digits[0:2] or ("23" if upper else "00")
    mm = digits[2:4] or ("59" if upper else "00")
    ss = digits[4:6] or ("59" if upper else "00")
    if fraction:
        frac = fraction.ljust(6, "9" if upper else "0")[:6]
    else:
        frac = "999999" if upper else "000000"
    return f"{hh}{mm}{ss}.{frac}"


def _normalise(vr: str, value: str, upper: bool) -> str:
    """A fixed-width, lexically comparable form of a DA, TM or DT value."""
    value = value.strip()
    if vr == "DA":
        digits = value.replace(".", "")
        if len(digits) < 8:
            digits = digits.ljust(8, "9" if upper else "0")
        return digits[:8]
    if vr == "TM":
        whole, _, fraction = value.partition(".")
        return _pad_time(whole, fraction, upper)
    value = _DT_OFFSET.sub("", value)  # offsets are ignored in the demo
    whole, _, fraction = value.partition(".")
    year = whole[0:4] or ("9999" if upper else "0000")
    month = whole[4:6] or ("12" if upper else "01")
    day = whole[6:8] or ("31" if upper else "01")
    return year + month + day + _pad_time(whole[8:], fraction, upper)


def _range_matches(vr: str, query: str, value: str) -> bool:
    """Range (``a-b``, ``-b``, ``a-``) or single-value date/time matching, by meaning."""
    query = query.strip()
    low: str | None
    high: str | None
    if vr == "DT":
        found = _DT_RANGE.match(query) if "-" in query else None
        low, high = (found.group(1), found.group(2)) if found else (query, query)
    elif "-" in query:
        low, _, high = query.partition("-")
    else:
        low = high = query
    v_low, v_high = _normalise(vr, str(value), False), _normalise(vr, str(value), True)
    if low and v_high < _normalise(vr, low, False):
        return False
    if high and v_low > _normalise(vr, high, True):
        return False
    return True


def _number(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def _value_matches(vr: str, query: object, value: object) -> bool:
    if vr == "PN":
        return _pn_matches(query, value)
    if vr in _RANGE_VRS:
        return _range_matches(vr, str(query), str(value))
    if vr in _NUMERIC_VRS:
        q, v = _number(query), _number(value)
        return q is not None and q == v
    if isinstance(query, bytes) or isinstance(value, bytes):
        return query == value
    return _text_matches(str(query), str(value), wildcard=vr in WILDCARD_VRS, ignore_case=False)


def _item_matches(query_item: Dataset, item: Dataset) -> bool:
    return all(
        match_element(q, item[q.tag] if q.tag in item else None)
        for q in query_item
        if not is_universal(q)
    )


def match_element(query: DataElement, candidate: DataElement | None) -> bool:
    """True if ``candidate`` (None when the entity lacks it) satisfies the matching key ``query``.

    Multiple values on either side match when any pair matches; this covers UID list matching
    (C.2.2.2.2) and multi-valued attributes such as ModalitiesInStudy.
    """
    if is_universal(query):
        return True
    if query.VR == "SQ":
        items = candidate.value if candidate is not None and candidate.VR == "SQ" else []
        return any(_item_matches(query.value[0], item) for item in items or [])
    values = _values(candidate)
    vr = candidate.VR if candidate is not None and candidate.VR not in ("UN", "") else query.VR
    return any(_value_matches(vr, q, v) for q in _values(query) for v in values)


def _project(query_item: Dataset, item: Dataset) -> Dataset:
    """A copy of ``item`` holding only the keys of ``query_item`` (all keys when it is empty)."""
    if len(query_item) == 0:
        out = Dataset()
        for elem in item:
            out.add(elem)
        return out
    out = Dataset()
    for q in query_item:
        out.add(answer_element(q, item[q.tag] if q.tag in item else None))
    return out


def answer_element(query: DataElement, found: DataElement | None) -> DataElement:
    """The response element for key ``query``: the entity's value, or empty if it has none."""
    if query.VR == "SQ":
        items = found.value if found is not None and found.VR == "SQ" else None
        if not items:
            return DataElement(query.tag, "SQ", Sequence())
        query_item = query.value[0] if query.value else Dataset()
        return DataElement(query.tag, "SQ", Sequence([_project(query_item, i) for i in items]))
    if found is None or not _values(found):
        return DataElement(query.tag, query.VR, None)
    return DataElement(query.tag, found.VR, found.value)


def has_non_ascii(elements: Iterable[DataElement]) -> bool:
    """True if any text value (recursing into sequences) holds a non-ASCII character."""
    for elem in elements:
        if elem.VR == "SQ":
            if any(has_non_ascii(item) for item in elem.value or []):
                return True
            continue
        for value in _values(elem):
            if isinstance(value, (str, PersonName)) and not str(value).isascii():
                return True
    return False
