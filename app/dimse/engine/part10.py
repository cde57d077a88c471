"""Part-10 framing of a received data set (PS3.10 7.1): preamble, "DICM" and a File Meta
Information group built from a template cached per SOP class and transfer syntax, so that each
instance costs one join and no re-encoding."""

from __future__ import annotations

import struct
from functools import lru_cache

from app.dimse.engine.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length (explicit VR little endian)
_UL = struct.Struct("<HH2sHI")


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


@lru_cache(maxsize=512)
def _template(sop_class: str, transfer_syntax: str, source_ae: str) -> tuple[bytes, bytes, int]:
    """(elements before the instance UID, elements after it, their combined length)."""
    version = struct.pack("<HH2s2sI", 0x0002, 0x0001, b"OB", b"\x00\x00", 2) + b"\x00\x01"
    before = version + _element(0x0002, b"UI", _ui(sop_class))
    after = (_element(0x0010, b"UI", _ui(transfer_syntax))
             + _element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID))
             + _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION)))
    if source_ae:
        after += _element(0x0016, b"AE", _text(source_ae))
    return before, after, len(before) + len(after)


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str,
                  source_ae: str = "") -> bytes:
    """Preamble, "DICM" and File Meta Information for an instance in ``transfer_syntax``."""
    before, after, length = _template(sop_class, transfer_syntax, source_ae)
    instance = _element(0x0003, b"UI", _ui(sop_instance))
    group_length = _UL.pack(0x0002, 0x0000, b"UL", 4, length + len(instance))
    return b"".join((_PREAMBLE, group_length, before, instance, after))


def part10(data: bytes, sop_class: str, sop_instance: str, transfer_syntax: str,
           source_ae: str = "") -> bytes:
    """``data`` (a data set in ``transfer_syntax``) as a Part-10 byte stream."""
    return part10_header(sop_class, sop_instance, transfer_syntax, source_ae) + data
