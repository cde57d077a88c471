"""DICOM JSON Model (PS3.18 Annex F): pydicom Dataset -> JSON-ready dict, and back.

A walker of our own rather than ``Dataset.to_json_dict``, because Annex F needs sorted keys,
omitted empty PN groups, ``null`` for empty values inside multi-valued attributes, tolerant
IS/DS handling and a bulk-data callback that knows where in the dataset the element sits.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import logging
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from app.dicomweb.tags import PIXEL_DATA_TAGS

logger = logging.getLogger(__name__)

__all__ = [
    "BINARY_VRS",
    "BulkDataRef",
    "BulkDataURIHandler",
    "binary_value",
    "bulk_data_uri_for",
    "dataset_to_json",
    "encode_json",
    "iter_elements",
    "json_to_dataset",
    "number_of",
    "person_name_groups",
    "resolved_vr",
    "text_of",
    "values_of",
]

#: VRs whose value is an opaque byte string: InlineBinary or BulkDataURI (PS3.18 F.2.7).
BINARY_VRS: frozenset[str] = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

_KNOWN_VRS: frozenset[str] = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
        "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
        "UL", "UN", "UR", "US", "UT", "UV",
    }
)  # fmt: skip
_INT_VRS: frozenset[str] = frozenset({"SL", "SS", "SV", "UL", "US", "UV"})
_FLOAT_VRS: frozenset[str] = frozenset({"FL", "FD"})
# Text VRs whose value is a single string: a backslash is not a value delimiter (PS3.5 6.2).
_SINGLE_TEXT_VRS: frozenset[str] = frozenset({"LT", "ST", "UT", "UR"})


@dataclass(frozen=True)
class BulkDataRef:
    """Where a bulk-data element sits, so the caller can mint a BulkDataURI for it.

    ``path`` holds one ``(sequence tag, item index)`` pair per enclosing sequence, outermost
    first; item indexes are 0-based. ``tag`` is the element's own tag, ``vr`` the VR emitted
    and ``length`` the value length in bytes.
    """

    path: tuple[tuple[int, int], ...]
    tag: int
    vr: str
    length: int

    @property
    def is_pixel_data(self) -> bool:
        """True for Pixel Data, Float Pixel Data and Double Float Pixel Data (at any depth)."""
        return self.tag in PIXEL_DATA_TAGS


#: Called for each bulk-data candidate; returns the BulkDataURI, or None to inline the value.
BulkDataURIHandler = Callable[[BulkDataRef], str | None]


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_data_uri: BulkDataURIHandler | None = None,
    bulk_data_threshold: int = 1024,
    drop_tags: Collection[int] = (),
) -> dict[str, Any]:
    """Convert ``ds`` into one DICOM JSON object (PS3.18 F.2), keys ascending at every level.

    Group lengths, File Meta (0002), command (0000) elements and any tag in ``drop_tags`` are
    left out at every nesting level. Text is Unicode and always sent as UTF-8; a
    SpecificCharacterSet (0008,0005) is kept with its source value, which names the source
    data set's encoding, not the JSON's (PS3.18 F.2.2 note 3, CP-2518). Binary values become
    BulkDataURI when ``bulk_data_uri`` is given and the value is longer than
    ``bulk_data_threshold`` bytes or is pixel data; otherwise (or when the handler returns
    None) they are InlineBinary.
    """
    walker = _JsonWalker(bulk_data_uri, bulk_data_threshold, frozenset(drop_tags))
    return walker.dataset(ds, ())


def encode_json(objects: list[dict[str, Any]] | dict[str, Any]) -> bytes:
    """Serialise DICOM JSON to compact UTF-8 bytes with sorted keys; NaN/Infinity rejected."""
    text = json.dumps(
        objects, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text.encode("utf-8")


def json_to_dataset(
    obj: dict[str, Any],
    *,
    bulk_data_uri_handler: Callable[[str, str, str], Any] | None = None,
) -> Dataset:
    """Build a Dataset from one DICOM JSON object (a thin wrapper over ``Dataset.from_json``).

    ``bulk_data_uri_handler(tag, vr, uri)`` resolves BulkDataURI values; without it they are
    left empty, as pydicom does.
    """
    return Dataset.from_json(obj, bulk_data_uri_handler=bulk_data_uri_handler)


# -- shared helpers (also used by dicomxml) -----------------------------------------------------


def iter_elements(ds: Dataset, drop_tags: Collection[int] = ()) -> Iterator[DataElement]:
    """Yield the elements of ``ds`` that belong in a DICOMweb representation, by ascending tag.

    Skips group lengths, command (0000) and File Meta (0002) groups and ``drop_tags``.
    SpecificCharacterSet is yielded as stored: text values are decoded to Unicode, and the
    attribute describes the source encoding (PS3.18 F.2.2 note 3).
    """
    for tag in sorted(ds.keys()):
        group, element = tag >> 16, tag & 0xFFFF
        if element == 0 or group in (0x0000, 0x0002):
            continue
        if tag in drop_tags:
            continue
        yield ds[tag]  # converts raw elements, decoding text with the dataset's character set


def resolved_vr(elem: DataElement, ds: Dataset) -> tuple[str, DataElement]:
    """Return the VR to emit for ``elem`` and the element to read the value from.

    Ambiguous VRs ("US or SS", "OB or OW", ...) are resolved from the dataset as pydicom does
    when writing; whatever is still ambiguous or unknown becomes UN (PS3.18 F.2.3).
    """
    vr = str(elem.VR)
    if vr in _KNOWN_VRS:
        return vr, elem
    if " or " in vr:
        try:
            fixed = correct_ambiguous_vr_element(copy.copy(elem), ds, is_little_endian=True)
        except Exception:  # noqa: BLE001 - a sloppy dataset must not break the response
            fixed = elem
        fixed_vr = str(fixed.VR)
        if fixed_vr in _KNOWN_VRS and isinstance(fixed, DataElement):
            return fixed_vr, fixed
        first = vr.split(" or ")[0]
        if isinstance(elem.value, bytes | bytearray) and first not in BINARY_VRS:
            return ("OW" if "OW" in vr else "UN"), elem
        return first, elem
    return "UN", elem


def binary_value(value: Any) -> bytes:
    """Return the bytes of a binary-VR value (None -> b"")."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    tobytes = getattr(value, "tobytes", None)  # numpy arrays
    if callable(tobytes):
        return bytes(tobytes())
    raise TypeError(f"cannot encode {type(value).__name__} as a binary value")


def values_of(elem: DataElement, vr: str) -> list[Any]:
    """Return the element's values as a list ([] when empty), honouring single-valued VRs."""
    value = elem.value
    if value is None:
        return []
    if vr in _SINGLE_TEXT_VRS:
        return [] if value == "" else [value]
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    if isinstance(value, str) and value == "":
        return []
    return [value]


def text_of(value: Any, vr: str) -> str | None:
    """Return a string value as text, or None when it is empty (DA/DT/TM objects formatted)."""
    if value is None:
        return None
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        text = original
    elif isinstance(value, datetime.datetime):
        text = value.strftime("%Y%m%d%H%M%S.%f" if value.microsecond else "%Y%m%d%H%M%S")
        if value.utcoffset() is not None:
            text += value.strftime("%z")
    elif isinstance(value, datetime.date):
        text = value.strftime("%Y%m%d")
    elif isinstance(value, datetime.time):
        text = value.strftime("%H%M%S.%f" if value.microsecond else "%H%M%S")
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = str(value)
    return text if text != "" else None


def person_name_groups(value: Any) -> dict[str, str] | None:
    """Split a PN value into its non-empty Alphabetic/Ideographic/Phonetic groups, or None."""
    if value is None:
        return None
    if not isinstance(value, PersonName):
        value = PersonName(str(value))
    groups = {
        name: component
        for name, component in zip(
            ("Alphabetic", "Ideographic", "Phonetic"), value.components, strict=False
        )
        if component
    }
    return groups or None


def number_of(value: Any, vr: str) -> int | float | str | None:
    """Return an IS/DS/int/float value as a JSON number, or the original text if invalid.

    Sloppy PACS send IS/DS such as ``"1,5"`` or ``"abc"``; pydicom keeps those as str. Annex F
    allows strings for IS/DS (note to Table F.2.3-1), so they pass through unchanged rather than
    failing the whole response. Non-finite floats, which JSON cannot carry, become strings.
    """
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if vr == "IS":
        if isinstance(value, int):
            return int(value)
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return text
            return int(number) if number.is_integer() else text
    if vr in ("DS", "FL", "FD"):
        if isinstance(value, str):
            text = value.strip()
            try:
                number = float(text)
            except ValueError:
                return text
            return number if math.isfinite(number) else text
        number = float(value)
        if math.isfinite(number):
            return number
        return str(value).strip() if vr == "DS" else _non_finite_text(number)
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _non_finite_text(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def bulk_data_uri_for(
    ref: BulkDataRef, handler: BulkDataURIHandler | None, threshold: int
) -> str | None:
    """Ask ``handler`` for a BulkDataURI when the value is pixel data or above ``threshold``.

    None means "inline it": no handler, a small value, or the handler declined.
    """
    if handler is None or ref.length == 0:
        return None
    if ref.tag in PIXEL_DATA_TAGS or ref.length > threshold:
        return handler(ref)
    return None


# -- JSON walker --------------------------------------------------------------------------------


class _JsonWalker:
    """Walks a Dataset depth-first, producing DICOM JSON objects."""

    def __init__(
        self,
        handler: BulkDataURIHandler | None,
        threshold: int,
        drop_tags: frozenset[int],
    ) -> None:
        self._handler = handler
        self._threshold = threshold
        self._drop_tags = drop_tags

    def dataset(self, ds: Dataset, path: tuple[tuple[int, int], ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for elem in iter_elements(ds, self._drop_tags):
            out[f"{elem.tag:08X}"] = self.element(elem, ds, path)
        return out

    def element(
        self, elem: DataElement, ds: Dataset, path: tuple[tuple[int, int], ...]
    ) -> dict[str, Any]:
        vr, elem = resolved_vr(elem, ds)
        attr: dict[str, Any] = {"vr": vr}
        if vr == "SQ":
            items = [
                self.dataset(item, (*path, (int(elem.tag), index)))
                for index, item in enumerate(elem.value or [])
            ]
            if items:
                attr["Value"] = items
            return attr
        if vr in BINARY_VRS:
            data = binary_value(elem.value)
            if not data:
                return attr
            ref = BulkDataRef(path=path, tag=int(elem.tag), vr=vr, length=len(data))
            uri = bulk_data_uri_for(ref, self._handler, self._threshold)
            if uri is not None:
                attr["BulkDataURI"] = uri
            else:
                attr["InlineBinary"] = base64.b64encode(data).decode("ascii")
            return attr
        values = values_of(elem, vr)
        if not values:
            return attr
        converted: list[Any]
        if vr == "PN":
            converted = [person_name_groups(v) for v in values]
        elif vr == "AT":
            converted = [None if v is None or v == "" else f"{int(v):08X}" for v in values]
        elif vr in ("IS", "DS") or vr in _INT_VRS or vr in _FLOAT_VRS:
            converted = [number_of(v, vr) for v in values]
        else:
            converted = [text_of(v, vr) for v in values]
        if all(v is None for v in converted):
            return attr  # e.g. a PN of "=" only: nothing to say, treat as empty (F.2.5)
        attr["Value"] = converted
        return attr
