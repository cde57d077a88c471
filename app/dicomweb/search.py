"""QIDO-RS query parameters (PS3.18 8.3.4) parsed once into a SearchQuery value object.

Lenient at the edge (keywords or tags, commas or backslashes in UID lists, unknown parameters
ignored), strict inside: every value is checked against its VR, and an invalid value of a known
parameter raises BadRequest naming the parameter.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import (
    dictionary_VR,
    keyword_for_tag,
    private_dictionary_VR,
    tag_for_keyword,
)

from app.dicomweb.attributes import UNIQUE_KEY, QueryLevel
from app.dicomweb.numbers import NotANumber, NumberTooLong, parse_integer, preview
from app.dicomweb.refs import is_valid_uid
from app.errors import BadRequest

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
# VRs whose values may use characters beyond the default repertoire (PS3.5 6.1.2.2); every other
# VR (CS, AE, DA, IS, UI, ...) holds ASCII only, which a C-FIND identifier could not encode.
EXTENDED_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
# Control characters allowed in LT, ST and UT besides ESC (PS3.5 Table 6.2-1); none elsewhere.
TEXT_CONTROLS = "\x1b\t\n\f\r"
NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
# VRs whose values are bytes or binary numbers: only universal matching (PS3.4 C.2.2.2.1 lists
# single value matching for the string and binary-number VRs only).
UNMATCHABLE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# Value ranges of the integer VRs (PS3.5 Table 6.2-1); IS is a string but holds a 32-bit integer.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
    "IS": (-(2**31), 2**31 - 1),
}
_FLOAT_MAX = {"FL": 3.4028234663852886e38, "FD": 1.7976931348623157e308}
_FLOAT_MAX["DS"] = _FLOAT_MAX["FD"]
_MAX_CHARS = {"IS": 12, "DS": 16}  # string lengths of the numeric string VRs (PS3.5 6.2)
# Parameters of the search transaction itself (PS3.18 Table 8.3.4-1); never attribute matches.
CONTROL_PARAMETERS = frozenset(
    {
        "includefield",
        "limit",
        "offset",
        "fuzzymatching",
        "emptyvaluematching",
        "multiplevaluematching",
        "accept",
        "charset",
    }
)

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# ASCII digits only ([0-9], not \d: int() and the regex would accept other scripts' digits).
_DA = r"[0-9]{8}"
_TM = r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
_DT = (r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?)?)?)?"
       r"(?:[+-][0-9]{4})?")
_SINGLE = {"DA": re.compile(f"^{_DA}$"), "TM": re.compile(f"^{_TM}$"), "DT": re.compile(f"^{_DT}$")}
_RANGE = {
    vr: re.compile(f"^(?:{p})?-(?:{p})?$") for vr, p in (("DA", _DA), ("TM", _TM), ("DT", _DT))
}
_NUMBER = {
    "IS": re.compile(r"^[+-]?[0-9]+$"),
    "US": re.compile(r"^[0-9]+$"),
    "UL": re.compile(r"^[0-9]+$"),
    "UV": re.compile(r"^[0-9]+$"),
    "SS": re.compile(r"^[+-]?[0-9]+$"),
    "SL": re.compile(r"^[+-]?[0-9]+$"),
    "SV": re.compile(r"^[+-]?[0-9]+$"),
}
# Longest value of each numeric VR as a string (PS3.5 Table 6.2-1: IS 12, DS 16 bytes); binary
# VRs by their widest decimal form. A longer matching value cannot fit the VR: a 400, checked
# before any conversion (int() of thousands of digits raises).
_MAX_NUMBER_LENGTH = {"IS": 12, "DS": 16, "US": 5, "SS": 6, "UL": 10, "SL": 11, "UV": 20,
                      "SV": 20, "FL": 64, "FD": 64}
_MAX_CONTROL_DIGITS = 18  # limit, offset: far beyond any result count
_FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_ID_PART = r"(?:[0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9]*)"
_ATTRIBUTE_ID = re.compile(rf"^{_ID_PART}(?:\.{_ID_PART})*$")


def _valid_calendar(vr: str, value: str) -> bool:
    """True when the digits of a DA/TM/DT value name a real date and time (PS3.5 6.2)."""
    if vr == "TM":
        date, time = "", value
    else:
        date, time = value[:8], value[8:]
        time = re.sub(r"[+-][0-9]{4}$", "", time)
    if date:
        year = int(date[:4])
        month = int(date[4:6]) if len(date) >= 6 else 1
        day = int(date[6:8]) if len(date) >= 8 else 1
        try:
            _dt.date(max(year, 1), month, day)
        except ValueError:
            return False
    digits = time.split(".")[0]
    limits = (23, 59, 60)  # 60: a leap second is a valid TM (PS3.5 Table 6.2-1)
    for i in range(0, len(digits), 2):
        if int(digits[i : i + 2]) > limits[i // 2]:
            return False
    if vr == "DT":
        offset = re.search(r"[+-]([0-9]{2})([0-9]{2})$", value[4:])
        if offset and (int(offset.group(1)) > 14 or int(offset.group(2)) > 59):
            return False
    return True


def _valid_temporal(vr: str, value: str) -> bool:
    """A DA/TM/DT single value or range (``a-b``, ``-b``, ``a-``) of valid values."""
    if _SINGLE[vr].match(value):
        return _valid_calendar(vr, value)
    if value == "-" or not _RANGE[vr].match(value):
        return False
    low, high = _split_range(vr, value)
    return all(_valid_calendar(vr, part) for part in (low, high) if part)


def _split_range(vr: str, value: str) -> tuple[str, str]:
    """Split a range at the hyphen that separates its ends (DT values may carry -HHMM)."""
    pattern = {"DA": _DA, "TM": _TM, "DT": _DT}[vr]
    match = re.match(f"^({pattern})?-({pattern})?$", value)
    assert match is not None
    return match.group(1) or "", match.group(2) or ""


def is_private(tag: int) -> bool:
    """True for an attribute of an odd (private) group (PS3.5 7.8)."""
    return bool((tag >> 16) % 2)


def private_creator_of(tag: int) -> int | None:
    """The Private Creator tag reserving a private data element's block (PS3.5 7.8.1), or None
    for a tag that is not a private data element (gggg,xxyy with xx >= 0x10)."""
    element = tag & 0xFFFF
    if not is_private(tag) or element < 0x1000:
        return None
    return (tag & 0xFFFF0000) | (element >> 8)


def is_private_creator(tag: int) -> bool:
    """True for a Private Creator element (gggg,0010-00FF of an odd group), VR LO."""
    return is_private(tag) and 0x0010 <= tag & 0xFFFF <= 0x00FF


def vr_of(tag: int) -> str:
    """The dictionary VR of a tag, with ambiguous VRs ('US or SS', 'OB or OW') resolved;
    LO for a Private Creator, UN for other private or unknown tags."""
    if is_private_creator(tag):
        return "LO"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


def private_vr(tag: int, creator: str | None) -> str:
    """The VR of a private data element from pydicom's private dictionary for ``creator``; UN
    when the creator or the element is unknown to it (PS3.5 6.2.2)."""
    if is_private_creator(tag):
        return "LO"
    if not creator:
        return "UN"
    try:
        vr = private_dictionary_VR(tag, creator.strip())
    except KeyError:
        return "UN"
    vr = vr.split(" or ")[0] if " or " in vr else vr
    return "UN" if vr in ("", "NONE") else vr


@dataclass(frozen=True, slots=True)
class AttributePath:
    """An attribute, or a dot path into sequence items (e.g. RequestAttributesSequence.X)."""

    tags: tuple[int, ...]

    @property
    def tag(self) -> int:
        """The innermost attribute's tag."""
        return self.tags[-1]

    @property
    def top(self) -> int:
        """The outermost attribute's tag (the one at the query level)."""
        return self.tags[0]

    def __str__(self) -> str:
        return ".".join(keyword_for_tag(t) or f"{t:08X}" for t in self.tags)


@dataclass(frozen=True, slots=True)
class MatchKey:
    """A matching key: one value (single, wildcard or range) or several UIDs (UID list)."""

    path: AttributePath
    vr: str
    values: tuple[str, ...]

    @property
    def is_universal(self) -> bool:
        """True when the key only asks for the attribute to be returned."""
        return self.values == ("",)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Everything a QIDO-RS request asks for, independent of HTTP and DIMSE."""

    level: QueryLevel
    study_uid: str | None = None
    series_uid: str | None = None
    matches: tuple[MatchKey, ...] = ()
    include: tuple[AttributePath, ...] = ()
    include_all: bool = False
    limit: int = 1000
    offset: int = 0
    fuzzy: bool = False
    empty_value_matching: bool = False
    multiple_value_matching: bool = False
    relational: bool = False
    ignored: tuple[str, ...] = field(default=())

    @property
    def path_uids(self) -> dict[int, str]:
        """UIDs fixed by the resource path, keyed by tag."""
        out: dict[int, str] = {}
        if self.study_uid:
            out[UNIQUE_KEY[QueryLevel.STUDY]] = self.study_uid
        if self.series_uid:
            out[UNIQUE_KEY[QueryLevel.SERIES]] = self.series_uid
        return out


def resolve_attribute(name: str) -> AttributePath | None:
    """Parse a keyword, an 8-hex tag or a dot path of those; None if unknown to the dictionary.

    Raises BadRequest when the syntax is not an attribute ID at all or a path goes through an
    attribute that is not a sequence.
    """
    parts = name.strip().split(".")
    tags: list[int] = []
    for part in parts:
        if _HEX_TAG.match(part):
            tag = int(part, 16)
            if not keyword_for_tag(tag) and not (tag >> 16) % 2:
                return None  # a standard-group tag this dictionary does not know
        elif re.match(r"^[A-Za-z][A-Za-z0-9]*$", part):
            found = tag_for_keyword(part)
            if found is None:
                return None
            tag = found
        else:
            raise BadRequest(f"{name!r} is not a DICOM attribute keyword or tag")
        tags.append(tag)
    for outer in tags[:-1]:
        if vr_of(outer) != "SQ":
            raise BadRequest(f"{name!r}: {keyword_for_tag(outer) or outer} is not a sequence")
    return AttributePath(tuple(tags))


def _check_value(param: str, path: AttributePath, vr: str, value: str) -> tuple[str, ...]:
    """Validate a match value against its VR; returns the C-FIND value(s)."""
    if value == "":
        return ("",)
    if vr == "SQ":
        raise BadRequest(f"{param}: a sequence attribute cannot be matched with a value")
    if vr == "UI":
        uids = tuple(u.strip() for u in re.split(r"[,\\]", value))
        bad = [u for u in uids if not is_valid_uid(u)]
        if bad:
            raise BadRequest(f"{param}: {bad[0]!r} is not a valid UID")
        return uids
    if vr not in EXTENDED_TEXT_VRS and not value.isascii():
        raise BadRequest(f"{param}: VR {vr} allows only the default character repertoire "
                         "(ASCII, PS3.5 6.1.2)")
    allowed_controls = TEXT_CONTROLS if vr in {"LT", "ST", "UT"} else "\x1b"
    if any((ord(c) < 0x20 or ord(c) == 0x7F) and c not in allowed_controls for c in value):
        raise BadRequest(f"{param}: control characters are not allowed in VR {vr} "
                         "(PS3.5 6.2)")
    has_wildcard = "*" in value or "?" in value
    if has_wildcard and vr not in WILDCARD_VRS:
        raise BadRequest(f"{param}: wildcards are not allowed for VR {vr} (PS3.4 C.2.2.2.4)")
    if vr in RANGE_VRS:
        if not _valid_temporal(vr, value):
            raise BadRequest(f"{param}: {value!r} is not a valid {vr} value or range")
        return (value,)
    if vr in _MAX_NUMBER_LENGTH and len(value) > _MAX_NUMBER_LENGTH[vr]:
        raise BadRequest(f"{param}: {preview(value)} is too long for VR {vr} (at most "
                         f"{_MAX_NUMBER_LENGTH[vr]} characters)")
    if vr in _NUMBER and not _NUMBER[vr].match(value):
        raise BadRequest(f"{param}: {value!r} is not a valid {vr} number")
    if vr in {"DS", "FL", "FD"} and not _FLOAT.match(value):
        raise BadRequest(f"{param}: {value!r} is not a valid {vr} number")
    if vr in NUMERIC_VRS:
        _check_number(param, vr, value)
    if vr in UNMATCHABLE_VRS:
        raise BadRequest(f"{param}: an attribute of VR {vr} can only be matched universally")
    if vr == "AT" and not _HEX_TAG.match(value):
        raise BadRequest(f"{param}: {value!r} is not a valid AT value (8 hex digits)")
    if "\\" in value and vr not in WILDCARD_VRS:
        raise BadRequest(f"{param}: multiple values are not supported for VR {vr}")
    return (value,)


def _check_number(param: str, vr: str, value: str) -> None:
    """A numeric match value must be one value the VR can encode (PS3.5 6.2): the C-FIND
    identifier carries it in that VR (binary for US, SS, UL, SL, UV, SV, FL, FD)."""
    text = value.strip()
    if vr in _NUMBER:
        if not _NUMBER[vr].match(text):
            raise BadRequest(f"{param}: {value!r} is not a valid {vr} number")
        low, high = INTEGER_RANGES[vr]
        # 20 digits hold any 64-bit value; longer is out of range before int() is asked.
        if len(text.lstrip("+-").lstrip("0")) > 20 or not low <= int(text) <= high:
            raise BadRequest(f"{param}: {value!r} is out of range for VR {vr} ({low} to {high})")
    elif not _FLOAT.match(text):
        raise BadRequest(f"{param}: {value!r} is not a valid {vr} number")
    elif not abs(float(text)) <= _FLOAT_MAX[vr]:
        raise BadRequest(f"{param}: {value!r} is out of range for VR {vr}")
    if vr in _MAX_CHARS and len(text) > _MAX_CHARS[vr]:
        raise BadRequest(f"{param}: {value!r} is longer than {_MAX_CHARS[vr]} characters (VR {vr})")


def dimse_value(vr: str, value: str) -> str | int | float | bytes:
    """One validated match value as the C-FIND identifier holds it: a number for the binary
    numeric VRs, a tag for AT, bytes for UN, the text itself for the string VRs."""
    if vr in INTEGER_RANGES and vr != "IS":
        return int(value.strip())
    if vr in ("FL", "FD"):
        return float(value.strip())
    if vr == "AT":
        return int(value, 16)
    if vr == "UN":
        raw = value.encode("utf-8")
        return raw + b" " if len(raw) % 2 else raw
    return value


def _parse_bool(param: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{param}: {value!r} is not true or false")


def _parse_uint(param: str, value: str) -> int:
    try:
        return parse_integer(value, max_digits=_MAX_CONTROL_DIGITS)
    except NotANumber:
        raise BadRequest(f"{param}: {preview(value)} is not a non-negative integer") from None
    except NumberTooLong:
        raise BadRequest(f"{param}: {preview(value)} is too large (at most "
                         f"{_MAX_CONTROL_DIGITS} digits)") from None


def _resolve_private(
    matches: dict[AttributePath, MatchKey],
    include: list[AttributePath],
    names: dict[AttributePath, str],
) -> tuple[MatchKey, ...]:
    """Give private matching keys their VR and check private keys have their creator.

    A private data element is meaningful only with the Private Creator of its block, so that
    creator must be a matching key with a value in the same item (PS3.18 8.3.4.1; PS3.5 7.8.1):
    else 400. The VR comes from pydicom's private dictionary for that creator, or is UN.
    """
    out: list[MatchKey] = []
    for path in [*matches, *include]:
        tag = path.tag
        if is_private(tag) and tag & 0xFFFF < 0x0010:
            raise BadRequest(
                f"{names[path]}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a "
                "private data element or Private Creator (PS3.5 7.8.1)"
            )
        creator_tag = private_creator_of(tag)
        if creator_tag is None:
            continue
        creator = matches.get(AttributePath((*path.tags[:-1], creator_tag)))
        if creator is None or creator.is_universal:
            raise BadRequest(
                f"{names[path]}: the private attribute {tag:08X} needs its Private Creator "
                f"{creator_tag:08X} as a matching parameter with a value (PS3.18 8.3.4.1)"
            )
    for path, key in matches.items():
        creator_tag = private_creator_of(path.tag)
        if creator_tag is not None:
            creator = matches[AttributePath((*path.tags[:-1], creator_tag))]
            vr = private_vr(path.tag, creator.values[0])
            key = MatchKey(path, vr, _check_value(names[path], path, vr, key.values[0]))
        out.append(key)
    return tuple(out)


def parse_search(
    params: Iterable[tuple[str, str]],
    *,
    level: QueryLevel,
    study_uid: str | None = None,
    series_uid: str | None = None,
    relational: bool = False,
    default_limit: int = 1000,
    max_limit: int = 10_000,
) -> SearchQuery:
    """Turn decoded query-string pairs into a SearchQuery for a resource at ``level``."""
    matches: dict[AttributePath, MatchKey] = {}
    include: list[AttributePath] = []
    include_all = False
    limit, offset = default_limit, 0
    flags = {"fuzzymatching": False, "emptyvaluematching": False, "multiplevaluematching": False}
    ignored: list[str] = []
    names: dict[AttributePath, str] = {}  # the parameter that named each matching key
    for raw_name, value in params:
        name = raw_name.strip()
        lname = name.lower()
        if lname == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item.lower() == "all":
                    include_all = True
                    continue
                path = resolve_attribute(item)
                if path is None:
                    ignored.append(item)
                elif path not in include:
                    include.append(path)
                    names.setdefault(path, f"includefield={item}")
        elif lname == "limit":
            limit = min(_parse_uint(name, value), max_limit)
        elif lname == "offset":
            offset = _parse_uint(name, value)
        elif lname in flags:
            flags[lname] = _parse_bool(name, value)
        elif lname in CONTROL_PARAMETERS:
            continue
        else:
            # Not an attribute ID at all, or one the dictionary does not know: an unknown
            # parameter, ignored (PS3.18 8.3). A known attribute in an impossible path is a 400.
            path = resolve_attribute(name) if _ATTRIBUTE_ID.match(name) else None
            if path is None:
                ignored.append(name)
                continue
            vr = vr_of(path.tag)
            # A private data element's VR depends on its Private Creator's value, which may come
            # later in the query: checked once all parameters are read (_resolve_private).
            deferred = private_creator_of(path.tag) is not None
            values = (value,) if deferred else _check_value(name, path, vr, value)
            if path in matches:
                previous = matches[path]
                if vr == "UI" and not previous.is_universal and values != ("",):
                    values = previous.values + tuple(v for v in values if v not in previous.values)
                elif previous.values != values:
                    raise BadRequest(f"{name}: the attribute is given more than once")
            matches[path] = MatchKey(path, vr, values)
            names.setdefault(path, name)
    resolved = _resolve_private(matches, include, names)
    return SearchQuery(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        matches=resolved,
        include=tuple(include),
        include_all=include_all,
        limit=limit,
        offset=offset,
        fuzzy=flags["fuzzymatching"],
        empty_value_matching=flags["emptyvaluematching"],
        multiple_value_matching=flags["multiplevaluematching"],
        relational=relational,
        ignored=tuple(ignored),
    )
