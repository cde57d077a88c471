"""Value objects for the DICOMweb resources named by a request path, validated once at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import BadRequest

# PS3.5 9.1: components of ASCII digits separated by dots, at most 64 characters; a component
# has no leading zero unless it is "0" itself. A UID breaking that rule cannot name an object
# the PACS holds, so it is a malformed request (400), not a missing resource (404).
UID_COMPONENT = r"(?:0|[1-9][0-9]*)"
UID_PATTERN = rf"^{UID_COMPONENT}(?:\.{UID_COMPONENT})*$"
_UID_RE = re.compile(UID_PATTERN)


def is_valid_uid(value: str) -> bool:
    """True when ``value`` has the syntax of a DICOM UID (PS3.5 9.1), leading zeros refused."""
    return len(value) <= 64 and bool(_UID_RE.match(value))


def check_uid(value: str, what: str) -> str:
    """Return ``value`` or raise BadRequest naming the path segment that holds a malformed UID."""
    if not is_valid_uid(value):
        raise BadRequest(f"{what} {value!r} is not a valid DICOM UID")
    return value


@dataclass(frozen=True, slots=True)
class StudyRef:
    """A study named by its Study Instance UID."""

    study_uid: str


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """A series within a study."""

    study_uid: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """A SOP instance within a series."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str


def level_and_uid(ref: StudyRef | SeriesRef | InstanceRef) -> tuple[str, str]:
    """The resource's level (``study``, ``series`` or ``instance``) and its own UID, for names
    and messages."""
    if isinstance(ref, InstanceRef):
        return "instance", ref.sop_instance_uid
    if isinstance(ref, SeriesRef):
        return "series", ref.series_uid
    return "study", ref.study_uid


def study_ref(study: str) -> StudyRef:
    """Parse the path UID of a study resource."""
    return StudyRef(check_uid(study, "StudyInstanceUID"))


def series_ref(study: str, series: str) -> SeriesRef:
    """Parse the path UIDs of a series resource."""
    return SeriesRef(check_uid(study, "StudyInstanceUID"), check_uid(series, "SeriesInstanceUID"))


def instance_ref(study: str, series: str, instance: str) -> InstanceRef:
    """Parse the path UIDs of an instance resource."""
    return InstanceRef(
        check_uid(study, "StudyInstanceUID"),
        check_uid(series, "SeriesInstanceUID"),
        check_uid(instance, "SOPInstanceUID"),
    )


_FRAME_LIST = re.compile(r"^\s*[0-9]+\s*(,\s*[0-9]+\s*)*$")
_MAX_FRAME_DIGITS = 9  # no instance has a billion frames; keeps int() far from its limits


def parse_frame_list(text: str, max_frames: int) -> list[int]:
    """1-based frame numbers from ``1,3,5`` (PS3.18 10.4.1.1.3): 400 for anything else, for a
    number listed twice, and for more than ``max_frames`` numbers (each listed frame is a part
    of the response: without these limits a short URL asks for any amount of data)."""
    if not _FRAME_LIST.match(text):
        raise BadRequest(f"frame list {text[:100]!r} is not a comma-separated list of frame "
                         "numbers")
    items = [n.strip() for n in text.split(",")]
    if len(items) > max_frames:
        raise BadRequest(f"frame list names {len(items)} frames; at most {max_frames} may be "
                         "asked for at once (max_frames_per_request)")
    if any(len(n.lstrip("0")) > _MAX_FRAME_DIGITS for n in items):
        raise BadRequest("frame list: a frame number is out of range")
    numbers = [int(n.lstrip("0") or "0") for n in items]
    if any(n < 1 for n in numbers):
        raise BadRequest(f"frame list {text[:100]!r}: frame numbers start at 1")
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise BadRequest(f"frame list: frame {twice} is listed more than once")
    return numbers
