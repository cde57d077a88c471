"""Bulk data references: a URL-safe codec for where an element sits, and its value's bytes
(PS3.18 10.4.1.1.5 Bulkdata resource, F.2.6 BulkDataURI).

A reference is the ``path`` of a ``dicomjson.BulkDataRef`` (``(sequence tag, 0-based item
index)`` pairs, outermost first) plus the element's tag, written as dot-separated tokens:
``7FE00010`` for top-level Pixel Data, ``00409096.0.00283010`` for an element of the first item
of a sequence. Only hex digits, decimal digits and dots: safe in a URL path segment.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element

__all__ = [
    "BulkDataPath",
    "bulk_value",
    "decode_bulkdata_path",
    "encode_bulkdata_path",
    "find_element",
]

BulkDataPath = tuple[tuple[int, int], ...]

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")

_WORD_SIZE: dict[str, int] = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def encode_bulkdata_path(path: Sequence[tuple[int, int]], tag: int) -> str:
    """Write ``path`` and ``tag`` as ``SSSSSSSS.i.SSSSSSSS.j.TTTTTTTT`` (uppercase hex tags)."""
    tokens: list[str] = []
    for seq_tag, index in path:
        _check_tag(seq_tag)
        if index < 0:
            raise ValueError(f"item index must not be negative: {index}")
        tokens += [f"{seq_tag:08X}", str(index)]
    _check_tag(tag)
    tokens.append(f"{tag:08X}")
    return ".".join(tokens)


def decode_bulkdata_path(text: str) -> tuple[BulkDataPath, int]:
    """Parse text made by ``encode_bulkdata_path``; raise ValueError when malformed.

    Lowercase hex is accepted; item indexes must be plain decimals without leading zeros, so
    each reference has exactly one spelling.
    """
    tokens = text.split(".")
    if len(tokens) % 2 != 1:
        raise ValueError(f"malformed bulk data reference {text!r}: expected tag(.index.tag)*")
    path: list[tuple[int, int]] = []
    for position in range(0, len(tokens) - 1, 2):
        seq_token, index_token = tokens[position], tokens[position + 1]
        if not _TAG.fullmatch(seq_token) or not _INDEX.fullmatch(index_token):
            raise ValueError(f"malformed bulk data reference {text!r} at {seq_token!r}")
        path.append((int(seq_token, 16), int(index_token)))
    if not _TAG.fullmatch(tokens[-1]):
        raise ValueError(f"malformed bulk data reference {text!r}: bad tag {tokens[-1]!r}")
    return tuple(path), int(tokens[-1], 16)


def _check_tag(tag: int) -> None:
    if not 0 <= tag <= 0xFFFFFFFF:
        raise ValueError(f"not a DICOM tag: {tag!r}")


def find_element(ds: Dataset, path: Sequence[tuple[int, int]], tag: int) -> DataElement:
    """Walk ``path`` from ``ds`` and return the element ``tag``; KeyError when absent."""
    current = ds
    for seq_tag, index in path:
        if seq_tag not in current:
            raise KeyError(f"sequence ({seq_tag >> 16:04X},{seq_tag & 0xFFFF:04X}) not found")
        items = current[seq_tag].value or []
        if not isinstance(items, Sequence) or not 0 <= index < len(items):
            raise KeyError(f"item {index} of ({seq_tag >> 16:04X},{seq_tag & 0xFFFF:04X}) absent")
        current = items[index]
    if tag not in current:
        raise KeyError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not found")
    return current[tag]


def bulk_value(ds: Dataset, path: Sequence[tuple[int, int]], tag: int) -> bytes | list[bytes]:
    """The value of element ``tag`` at ``path`` for the Bulkdata resource, little endian.

    Native values are returned as one ``bytes`` (the whole value field, e.g. all frames of
    uncompressed Pixel Data). Encapsulated Pixel Data is returned as a **list** of compressed
    frames instead, one per part in the frame's compressed media type (PS3.18 8.7.3.3.2);
    the caller types them with ``transfer_syntax.frame_media_type``. Numeric and text VRs
    are encoded as they would be in Explicit VR Little Endian. KeyError when absent.
    """
    elem = find_element(ds, path, tag)
    holder = _holder(ds, path)
    if elem.VR == "SQ":
        raise ValueError("a sequence has no bulk data value")
    if elem.is_undefined_length and isinstance(elem.value, bytes | bytearray):
        frames = _frame_count(holder)
        extended = None
        if "ExtendedOffsetTable" in holder and "ExtendedOffsetTableLengths" in holder:
            extended = (
                bytes(holder.ExtendedOffsetTable),
                bytes(holder.ExtendedOffsetTableLengths),
            )
        return list(
            generate_frames(bytes(elem.value), number_of_frames=frames, extended_offsets=extended)
        )[:frames]
    if " or " in str(elem.VR):
        fixed = correct_ambiguous_vr_element(copy.copy(elem), holder, is_little_endian=True)
        if isinstance(fixed, DataElement):
            elem = fixed
    value = elem.value
    big_endian = ds.original_encoding[1] is False
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        size = _WORD_SIZE.get(str(elem.VR))
        if big_endian and size:
            data = _swap(data, size)
        return data
    charset = holder.get("SpecificCharacterSet") or ds.get("SpecificCharacterSet")
    return _encoded_value(elem, charset)


def _holder(ds: Dataset, path: Sequence[tuple[int, int]]) -> Dataset:
    current = ds
    for seq_tag, index in path:
        current = current[seq_tag].value[index]
    return current


def _frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _swap(data: bytes, size: int) -> bytes:
    usable = len(data) - len(data) % size
    swapped = np.frombuffer(data[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return swapped + data[usable:]


def _encoded_value(elem: DataElement, charset: str | Sequence[str] | None) -> bytes:
    """Encode a non-bytes value as Implicit VR Little Endian would, and strip the header."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    encodings = None
    if charset:
        encodings = convert_encodings(charset if isinstance(charset, str) else list(charset))
    write_data_element(fp, elem, encodings)
    data = fp.getvalue()
    return data[8:]  # tag (4 bytes) + 32-bit length (4 bytes)
