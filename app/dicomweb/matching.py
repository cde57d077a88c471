"""Local re-check of C-FIND matching (PS3.4 C.2.2.2) on the values a PACS returned.

Some PACS ignore matching keys they do not support and return every record; the gateway drops a
result only when a returned, non-empty value *cannot* match. Comparisons are deliberately lenient
(case-insensitive, any value of a multi-valued attribute) so nothing a conformant PACS matched is
ever dropped.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from app.dicomweb.search import RANGE_VRS, WILDCARD_VRS, MatchKey


def _texts(value: Any) -> list[str]:
    """All string forms of an element value worth comparing (PN: whole name and each group)."""
    values = list(value) if isinstance(value, (list, MultiValue)) else [value]
    out: list[str] = []
    for item in values:
        if item is None:
            continue
        if isinstance(item, PersonName):
            out.append(_pn_trim(str(item)))
            out.extend(_pn_trim(g) for g in (item.alphabetic, item.ideographic, item.phonetic) if g)
        else:
            out.append(str(item))
    return [t.strip() for t in out]


def _pn_trim(text: str) -> str:
    """A PN value without trailing empty components or groups: ``Doe^John^^^`` and
    ``Doe^John`` are the same name (PS3.5 6.2.1)."""
    groups = [g.strip().rstrip("^").strip() for g in text.split("=")]
    return "=".join(groups).rstrip("=")


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in pattern)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)


def _bound(vr: str, text: str, high: bool) -> str:
    """Normalise a DA/TM/DT value so lexicographic order is time order; fill what is missing."""
    text = text.replace(":", "").replace("-", "") if vr == "TM" else text
    text = re.sub(r"[+-]\d{4}$", "", text) if vr == "DT" else text
    width = {"DA": 8, "TM": 13, "DT": 21}[vr]
    if vr != "DA" and "." not in text:
        text = text.ljust(6 if vr == "TM" else 14, "9" if high else "0") + "."
    return text.ljust(width, "9" if high else "0")[:width]


def _in_range(vr: str, spec: str, actual: str) -> bool:
    if "-" not in spec or (vr == "DT" and re.fullmatch(r"[^-]*[+-]\d{4}", spec)):
        low = high = spec
    else:
        low, _, high = spec.partition("-")
    value_low = _bound(vr, actual, high=False)
    value_high = _bound(vr, actual, high=True)
    if low and value_high < _bound(vr, low, high=False):
        return False
    if high and value_low > _bound(vr, high, high=True):
        return False
    return True


def can_match(key: MatchKey, ds: Dataset) -> bool:
    """False only when ``ds`` holds a non-empty value for ``key`` that cannot match it."""
    if key.is_universal or len(key.path.tags) > 1:
        return True
    element = ds.get(key.path.tag)
    if element is None or element.value in (None, "", b"") or element.VR == "SQ":
        return True
    if key.vr == "UN" and not key.is_universal:
        return _unknown_vr_can_match(key.values[0], element.value)
    try:
        actual = _texts(element.value)
    except Exception:  # an undecodable value is not evidence of a mismatch
        return True
    if not actual:
        return True
    if key.vr == "UI":
        return any(a in key.values for a in actual)
    spec = key.values[0]
    if key.vr in RANGE_VRS:
        try:
            return any(_in_range(key.vr, spec, a) for a in actual if a)
        except Exception:
            return True
    if key.vr in WILDCARD_VRS and ("*" in spec or "?" in spec):
        rx = _wildcard_regex(_pn_trim(spec) if key.vr == "PN" else spec)
        return any(rx.match(a) for a in actual)
    if key.vr in WILDCARD_VRS or key.vr in ("AS", "DS", "IS"):
        wanted = {(_pn_trim(v) if key.vr == "PN" else v).strip().lower() for v in spec.split("\\")}
        return (
            any(a.lower() in wanted for a in actual)
            or key.vr in ("DS", "IS")
            and _num_eq(spec, actual)
        )
    return True


def _unknown_vr_can_match(spec: str, value: Any) -> bool:
    """A key of unknown VR (a private attribute pydicom's dictionary does not know) compared
    with the returned value as text: a PACS may not match it, so the gateway does. Bytes (a
    value returned as UN) are read as text without their padding; undecodable bytes are kept."""
    if isinstance(value, bytes):
        try:
            texts = value.decode("utf-8").strip("\x00 ").split("\\")
        except UnicodeDecodeError:
            return True
    else:
        texts = _texts(value)
    wanted = spec.strip().lower()
    for text in (t.strip("\x00 ").lower() for t in texts):
        if text == wanted:
            return True
        try:
            if float(text) == float(wanted):
                return True
        except ValueError:
            continue
    return False


def _num_eq(spec: str, actual: list[str]) -> bool:
    try:
        return any(float(a) == float(spec) for a in actual)
    except ValueError:
        return True


# Date and time attributes that combine into one date-time for range matching (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS: tuple[tuple[int, int], ...] = (
    (0x00080020, 0x00080030),  # StudyDate, StudyTime
    (0x00080021, 0x00080031),  # SeriesDate, SeriesTime
    (0x00080022, 0x00080032),  # AcquisitionDate, AcquisitionTime
    (0x00080023, 0x00080033),  # ContentDate, ContentTime
    (0x00400244, 0x00400245),  # PerformedProcedureStepStartDate, ...StartTime
)


def combined_range_matches(date_key: MatchKey, time_key: MatchKey, ds: Dataset) -> bool:
    """Combined date-time range matching: StudyDate=d1-d2 with StudyTime=t1-t2 means the
    period from d1 t1 to d2 t2, not times t1-t2 on each day (PS3.4 C.2.2.2.5.1). False only
    when the returned date and time certainly fall outside that period."""
    date_el = ds.get(date_key.path.tag)
    if date_el is None or not date_el.value:
        return True
    date = str(date_el.value).strip()
    time_el = ds.get(time_key.path.tag)
    time = str(time_el.value).strip() if time_el is not None and time_el.value else ""
    d_low, _, d_high = date_key.values[0].partition("-")
    t_spec = time_key.values[0]
    t_low, _, t_high = t_spec.partition("-") if "-" in t_spec else (t_spec, "", t_spec)
    value_low = date + _bound("TM", time or "00", high=False)
    value_high = date + _bound("TM", time or "23", high=True)
    if d_low:
        low = d_low + _bound("TM", t_low or "00", high=False)
        if value_high < low:
            return False
    if d_high:
        high = d_high + _bound("TM", t_high or "23", high=True)
        if value_low > high:
            return False
    return True
