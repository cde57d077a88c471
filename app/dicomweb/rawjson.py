"""DICOM JSON straight from Part-10 bytes for the common case, without a pydicom parse.

``raw_dataset_to_json`` gives exactly what ``dataset_to_json(read_part10(data), ...)`` gives
for Explicit/Implicit VR Little Endian data sets (native or encapsulated pixel data) in the
default, ISO_IR 100 or ISO_IR 192 character set, and None for anything it does not handle
(other character sets, private tags in Implicit VR, UN, ambiguous VRs, sloppy IS/DS, odd
lengths...), so that the caller falls back to the pydicom path. Values that become
BulkDataURIs are never read.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR

from app.dicomweb.dicomjson import (
    BINARY_VRS,
    BulkDataRef,
    BulkDataURIHandler,
    number_of,
)
from app.dicomweb.integrity import (
    IMPLICIT_LE,
    ITEM,
    ITEM_END,
    SEQUENCE_END,
    UNDEFINED,
    Malformed,
    element_header,
    read_file_meta,
)
from app.dicomweb.tags import PIXEL_DATA, PIXEL_DATA_TAGS, SPECIFIC_CHARACTER_SET

__all__ = ["raw_dataset_to_json"]

_MAX_DEPTH = 16
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"

#: Transfer syntaxes whose data set is Little Endian, not deflated (1.2.4.95 is deflated JPIP).
_EXPLICIT_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")
_EXPLICIT_EXACT = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"})
_DEFLATED = frozenset({"1.2.840.10008.1.2.4.95"})

#: Source character set (as stored) -> codec for SH/LO/UC/ST/LT/UT/PN, as pydicom decodes them.
_CHARSETS: dict[str, str] = {"": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})

_VRS: dict[bytes, str] = {
    vr.encode("ascii"): vr
    for vr in (
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
        "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
        "UL", "UN", "UR", "US", "UT", "UV",
    )
}  # fmt: skip
_NUMBERS: dict[str, tuple[int, str]] = {
    "US": (2, "H"), "SS": (2, "h"), "UL": (4, "L"), "SL": (4, "l"), "UV": (8, "Q"),
    "SV": (8, "q"), "FL": (4, "f"), "FD": (8, "d"),
}  # fmt: skip
_SPLIT_STRIP_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # rstrip all, split, as is
_IS_TEXT = re.compile(r" *[+-]?[0-9]{1,15} *")
_DS_TEXT = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})? *")

_implicit_vrs: dict[int, str] = {}


class _Unhandled(Exception):
    """Something only the pydicom path reproduces: fall back to it."""


def raw_dataset_to_json(
    data: bytes,
    *,
    bulk_data_uri: BulkDataURIHandler | None = None,
    bulk_data_threshold: int = 1024,
) -> dict[str, Any] | None:
    """The DICOM JSON object of Part-10 ``data`` read from its bytes, or None (use pydicom)."""
    meta = read_file_meta(data)
    if meta is None:
        return None
    start, syntax = meta.dataset_start, meta.transfer_syntax
    if syntax == IMPLICIT_LE:
        explicit = False
    elif syntax in _EXPLICIT_EXACT or (
        syntax.startswith(_EXPLICIT_PREFIXES) and syntax not in _DEFLATED
    ):
        explicit = True
    else:
        return None
    walker = _RawWalker(data, explicit, bulk_data_uri, bulk_data_threshold)
    try:
        out, _ = walker.dataset(start, len(data), (), delimited=False)
    except (_Unhandled, struct.error, IndexError, UnicodeDecodeError, ValueError):
        return None
    return out


def _implicit_vr(tag: int) -> str:
    """The dictionary VR of ``tag`` for Implicit VR, as pydicom picks it (private: unhandled)."""
    vr = _implicit_vrs.get(tag)
    if vr is not None:
        return vr
    if (tag >> 16) & 1:
        raise _Unhandled("private tag in Implicit VR")
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        vr = "UL" if tag & 0xFFFF == 0 else "UN"
    _implicit_vrs[tag] = vr
    return vr


class _RawWalker:
    """Walks Little Endian data set bytes depth-first, producing DICOM JSON objects."""

    def __init__(
        self, data: bytes, explicit: bool, handler: BulkDataURIHandler | None, threshold: int
    ) -> None:
        self.data = data
        self.explicit = explicit
        self.handler = handler
        self.threshold = threshold
        self.codec = "latin_1"
        self.charset_fixed = False  # a text value was decoded: the character set is settled
        self.bits_allocated: int | None = None

    def dataset(
        self, offset: int, end: int, path: tuple[tuple[int, int], ...], *, delimited: bool
    ) -> tuple[dict[str, Any], int]:
        """One data set from ``offset``: its JSON object and the offset after it."""
        data = self.data
        explicit = self.explicit
        out: dict[str, Any] = {}
        last = -1
        while offset < end:
            try:
                tag, raw_vr, length, value = element_header(data, offset, end, explicit)
            except Malformed as exc:
                raise _Unhandled(str(exc)) from None
            group, element = tag >> 16, tag & 0xFFFF
            if tag == ITEM_END:
                if not delimited:
                    raise _Unhandled("item delimiter outside an item")
                return out, offset + 8
            if group == 0xFFFE or tag <= last:
                raise _Unhandled("unexpected delimiter or tags out of order")
            last = tag
            if explicit:
                vr_or_none = _VRS.get(raw_vr)
                if vr_or_none is None:
                    raise _Unhandled("unknown VR")
                vr = vr_or_none
            else:
                vr = _implicit_vr(tag)
            offset = value
            keep = element != 0 and group not in (0x0000, 0x0002)
            if length == UNDEFINED:
                if vr == "SQ":
                    attr, offset = self.undefined_sequence(offset, end, path, tag)
                elif tag == PIXEL_DATA and vr == "OB" and explicit:
                    found = data.find(_SEQUENCE_DELIMITER, offset, end)
                    if found < 0 or found == offset:
                        raise _Unhandled("encapsulated pixel data without its delimiter")
                    attr = self.binary(tag, vr, offset, found - offset, path)
                    offset = found + 8
                else:
                    raise _Unhandled("undefined length outside SQ and encapsulated pixels")
            else:
                if length > end - offset:
                    raise _Unhandled("element runs past the end")
                if not keep:
                    offset += length
                    continue
                attr = self.element(tag, vr, offset, length, path)
                offset += length
            if keep:
                out[f"{tag:08X}"] = attr
        if delimited or offset != end:
            raise _Unhandled("data set does not end where it should")
        return out, offset

    def undefined_sequence(
        self, offset: int, end: int, path: tuple[tuple[int, int], ...], tag: int
    ) -> tuple[dict[str, Any], int]:
        """An undefined-length sequence: its JSON attribute and the offset after its delimiter."""
        data = self.data
        items: list[dict[str, Any]] = []
        while True:
            if end - offset < 8:
                raise _Unhandled("sequence without its delimiter")
            item_tag, _, length, offset = element_header(data, offset, end, explicit=False)
            if item_tag == SEQUENCE_END:
                break
            if item_tag != ITEM:
                raise _Unhandled("sequence content is not an item")
            offset = self.item(offset, end, length, (*path, (tag, len(items))), items)
        attr: dict[str, Any] = {"vr": "SQ"}
        if items:
            attr["Value"] = items
        return attr, offset

    def item(
        self, offset: int, end: int, length: int, path: tuple[tuple[int, int], ...],
        items: list[dict[str, Any]],
    ) -> int:
        """Append one item's JSON object to ``items``; returns the offset after the item."""
        if len(path) > _MAX_DEPTH:
            raise _Unhandled("sequences nested too deeply")
        if length == UNDEFINED:
            obj, offset = self.dataset(offset, end, path, delimited=True)
        else:
            if length > end - offset:
                raise _Unhandled("item runs past its sequence")
            obj, _ = self.dataset(offset, offset + length, path, delimited=False)
            offset += length
        items.append(obj)
        return offset

    def binary(
        self, tag: int, vr: str, offset: int, length: int, path: tuple[tuple[int, int], ...]
    ) -> dict[str, Any]:
        """A binary-VR attribute: BulkDataURI (value never read) or InlineBinary."""
        attr: dict[str, Any] = {"vr": vr}
        if length == 0:
            return attr
        handler = self.handler
        if handler is not None and (tag in PIXEL_DATA_TAGS or length > self.threshold):
            uri = handler(BulkDataRef(path=path, tag=tag, vr=vr, length=length))
            if uri is not None:
                attr["BulkDataURI"] = uri
                return attr
        value = self.data[offset:offset + length]
        attr["InlineBinary"] = base64.b64encode(value).decode("ascii")
        return attr

    def element(
        self, tag: int, vr: str, offset: int, length: int, path: tuple[tuple[int, int], ...]
    ) -> dict[str, Any]:
        """The JSON attribute of a defined-length element."""
        if vr == "SQ":
            return self.defined_sequence(offset, offset + length, path, tag)
        if tag == SPECIFIC_CHARACTER_SET:
            self.character_set(path, offset, length)
        if vr in BINARY_VRS:
            if vr == "UN":
                raise _Unhandled("UN: pydicom may replace it with a known VR")
            return self.binary(tag, vr, offset, length, path)
        if vr in ("OB or OW", "US or SS", "US or OW", "US or SS or OW", "OW or OB"):
            if tag != PIXEL_DATA or self.explicit:
                raise _Unhandled("ambiguous VR")
            return self.binary(tag, "OW", offset, length, path)  # Implicit VR: OW (PS3.5 A.1)
        if len(vr) != 2:
            raise _Unhandled("VR not handled")
        attr: dict[str, Any] = {"vr": vr}
        if length == 0:
            return attr
        raw = self.data[offset:offset + length]
        converted: list[Any]
        number = _NUMBERS.get(vr)
        if number is not None:
            size, code = number
            if length % size:
                raise _Unhandled("numeric value of odd length")
            values = struct.unpack(f"<{length // size}{code}", raw)
            if code in "fd":
                converted = [number_of(v, vr) for v in values]
            else:
                converted = list(values)
        elif vr == "AT":
            if length % 4:
                raise _Unhandled("AT value of odd length")
            pairs = struct.unpack(f"<{length // 2}H", raw)
            converted = [f"{pairs[i] << 16 | pairs[i + 1]:08X}" for i in range(0, len(pairs), 2)]
        elif vr in _CHARSET_VRS:
            self.charset_fixed = True
            text = raw.decode(self.codec)
            if vr == "PN":
                converted = [_person_name(v) for v in text.rstrip("\0 ").split("\\")]
            elif vr in ("SH", "LO", "UC"):
                converted = [v.rstrip("\0 ") or None for v in text.split("\\")]
            else:
                converted = [text.rstrip("\0 ") or None]
        else:
            text = raw.decode("latin_1")
            if vr in _SPLIT_STRIP_VRS:
                converted = [v or None for v in text.rstrip(" \0").split("\\")]
            elif vr == "UI":
                converted = [v.strip() or None for v in text.rstrip("\0 ").split("\\")]
            elif vr == "AE":
                converted = [v.strip() or None for v in text.split("\\")]
            elif vr == "UR":
                converted = [text.rstrip() or None]
            elif vr == "IS":
                converted = [_integer(v) for v in text.rstrip(" \0").split("\\")]
            elif vr == "DS":
                converted = [_decimal(v) for v in text.strip().split("\\")]
            else:
                raise _Unhandled("VR not handled")
        if all(v is None for v in converted):
            return attr
        attr["Value"] = converted
        return attr

    def defined_sequence(
        self, offset: int, end: int, path: tuple[tuple[int, int], ...], tag: int
    ) -> dict[str, Any]:
        """A defined-length sequence's JSON attribute."""
        data = self.data
        items: list[dict[str, Any]] = []
        while offset < end:
            if end - offset < 8:
                raise _Unhandled("truncated item header")
            item_tag, _, length, offset = element_header(data, offset, end, explicit=False)
            if item_tag != ITEM:
                raise _Unhandled("sequence content is not an item")
            offset = self.item(offset, end, length, (*path, (tag, len(items))), items)
        if offset != end:
            raise _Unhandled("items run past their sequence")
        attr: dict[str, Any] = {"vr": "SQ"}
        if items:
            attr["Value"] = items
        return attr

    def character_set(self, path: tuple[tuple[int, int], ...], offset: int, length: int) -> None:
        """Take the data set's character set from (0008,0005), if it is one handled here."""
        if path or self.charset_fixed:
            raise _Unhandled("character set after text, or inside an item")
        value = self.data[offset:offset + length].decode("latin_1").rstrip(" \0")
        codec = _CHARSETS.get(value)
        if codec is None:
            raise _Unhandled(f"character set {value!r}")
        self.codec = codec


def _person_name(value: str) -> dict[str, str] | None:
    """The non-empty PN groups of one decoded value (as ``person_name_groups`` gives them)."""
    groups = {
        name: component
        for name, component in zip(
            ("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False
        )
        if component
    }
    return groups or None


def _integer(text: str) -> int | None:
    """One IS value as pydicom + ``number_of`` give it; unhandled unless plainly an integer."""
    if text.strip() == "":
        return None
    if _IS_TEXT.fullmatch(text) is None:
        raise _Unhandled("IS value that is not a plain integer")
    return int(text)


def _decimal(text: str) -> float | None:
    """One DS value as pydicom + ``number_of`` give it; unhandled unless plainly a number."""
    if text.strip() == "":
        return None
    if _DS_TEXT.fullmatch(text) is None:
        raise _Unhandled("DS value that is not a plain number")
    return float(text)
