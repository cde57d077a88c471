"""Pixel data for WADO-RS: Part-10 transcoding, wire-safe re-encoding and frame extraction.

Pure functions over bytes and pydicom Datasets (PS3.18 8.7.3, PS3.5 8 and Annex A). No UID ever
changes when pixel data is re-encoded (pydicom's ``generate_instance_uid`` is always False).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from app.dicomweb.mediatypes import OCTET_STREAM
from app.dicomweb.tags import DOUBLE_FLOAT_PIXEL_DATA, FLOAT_PIXEL_DATA, PIXEL_DATA
from app.dicomweb.transfer_syntax import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG2000,
    JPEG_LS_NEAR_LOSSLESS,
    NOT_ON_THE_WIRE,
    UNCOMPRESSED,
    decodable,
    encodable,
    frame_media_type,
    is_compressed,
    is_lossy,
    is_video,
)

__all__ = [
    "Frame",
    "FrameOutOfRange",
    "TranscodeError",
    "dataset_transfer_syntax",
    "frame_count",
    "get_frames",
    "part10_transfer_syntax",
    "read_part10",
    "to_wire",
    "transcode_part10",
]

logger = logging.getLogger(__name__)

# Binary VRs whose values are words of this many bytes (byte-swapped between endiannesses).
_WORD_SIZE: dict[str, int] = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}

# Options used only when a lossy target is explicitly allowed.
_LOSSY_OPTIONS: dict[str, dict[str, Any]] = {
    JPEG2000: {"j2k_cr": [10]},
    JPEG_LS_NEAR_LOSSLESS: {"jls_error": 2},
}
_LOSSY_METHOD: dict[str, str] = {JPEG2000: "ISO_15444_1", JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1"}

# Photometric interpretations decoded to RGB for native frames: they only exist subsampled or
# inside a codec, so a native frame cannot carry them (PS3.3 C.7.6.3.1.2).
_DECODE_AS_RGB: frozenset[str] = frozenset(
    {"YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}
)


class TranscodeError(Exception):
    """The requested transfer syntax cannot be produced from this data (HTTP 406)."""


class FrameOutOfRange(ValueError):
    """A requested frame number is not in 1..NumberOfFrames, or none was requested."""


@dataclass(frozen=True)
class Frame:
    """One frame ready to be a multipart part: 1-based ``number``, bytes, and how to type them.

    ``media_type`` is ``application/octet-stream`` for native little-endian frames, else the
    compressed type of PS3.18 Table 8.7.3-5; ``transfer_syntax`` goes in its parameter.
    """

    number: int
    data: bytes
    media_type: str
    transfer_syntax: str


# -- Part 10 ------------------------------------------------------------------------------------


def read_part10(data: bytes) -> Dataset:
    """Parse Part-10 bytes; datasets without preamble/File Meta are read with ``force=True``.

    When the File Meta carries no Transfer Syntax UID it is filled in from the encoding that
    pydicom detected, so later steps always know the stored syntax.
    """
    try:
        ds = dcmread(io.BytesIO(data))
    except InvalidDicomError:
        logger.warning("instance without a DICM preamble; reading it leniently (force=True)")
        ds = dcmread(io.BytesIO(data), force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = UID(dataset_transfer_syntax(ds))
    return ds


def dataset_transfer_syntax(ds: Dataset) -> str:
    """The stored syntax: File Meta (0002,0010), else inferred from how pydicom read ``ds``."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if little is False:
        return EXPLICIT_VR_BIG_ENDIAN
    return IMPLICIT_VR_LITTLE_ENDIAN if implicit else EXPLICIT_VR_LITTLE_ENDIAN


def part10_transfer_syntax(data: bytes) -> str | None:
    """Read only the File Meta of Part-10 ``data`` and return its Transfer Syntax UID, or None."""
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:  # noqa: BLE001 - any malformation means "unknown", the caller re-reads
        return None
    value = meta.get("TransferSyntaxUID")
    return str(value) if value else None


def to_wire(data: bytes) -> tuple[bytes, str]:
    """Return ``data`` in a syntax a DICOMweb response may carry, and that syntax.

    Implicit VR LE and Explicit VR Big Endian are re-encoded to Explicit VR LE (PS3.18
    8.7.3.4); anything else passes through byte for byte.
    """
    ts = part10_transfer_syntax(data)
    if ts is None:
        ts = dataset_transfer_syntax(read_part10(data))
    if ts in NOT_ON_THE_WIRE:
        return transcode_part10(data, EXPLICIT_VR_LITTLE_ENDIAN), EXPLICIT_VR_LITTLE_ENDIAN
    return data, ts


def transcode_part10(data: bytes, target_ts: str, *, allow_lossy: bool = False) -> bytes:
    """Return Part-10 ``data`` re-encoded in ``target_ts`` (unchanged when already in it).

    Native to native re-encodes; compressed to native decompresses; native to compressed
    compresses when pydicom has an encoder; compressed to another compressed does both.
    Refused with ``TranscodeError``: lossy to lossless compressed (it would hide the loss),
    lossless to lossy unless ``allow_lossy``, and anything without a codec. UIDs never change.
    """
    target = str(target_ts)
    stored_hint = part10_transfer_syntax(data)
    if stored_hint == target:
        return data
    ds = read_part10(data)
    stored = dataset_transfer_syntax(ds)
    if stored == target:
        return data
    _check_transcodable(stored, target, allow_lossy=allow_lossy)
    if is_video(stored):
        raise TranscodeError(f"video in {stored} cannot be transcoded to {target}")
    if is_compressed(stored):
        _decompress(ds, stored)
    if (stored == EXPLICIT_VR_BIG_ENDIAN) != (target == EXPLICIT_VR_BIG_ENDIAN):
        _swap_endianness(ds)
    if is_compressed(target):
        _compress(ds, target)
    else:
        ds.file_meta.TransferSyntaxUID = UID(target)
    return _write(ds, target)


def _check_transcodable(stored: str, target: str, *, allow_lossy: bool) -> None:
    if is_compressed(stored) and not decodable(stored):
        raise TranscodeError(f"no decoder available for stored transfer syntax {stored}")
    if not encodable(target):
        raise TranscodeError(f"no encoder available for transfer syntax {target}")
    if is_compressed(target):
        if is_lossy(stored) and not is_lossy(target):
            raise TranscodeError(
                f"refusing to re-encode lossy {stored} as lossless {target}: the loss would be "
                "hidden"
            )
        if is_lossy(target) and not allow_lossy:
            raise TranscodeError(f"lossy compression to {target} was not allowed")


def _decompress(ds: Dataset, stored: str) -> None:
    """Decompress in place to Explicit VR LE, keeping every UID (PS3.3 C.7.6.1.1.5 kept)."""
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # pydicom raises ValueError/RuntimeError/NotImplementedError
        raise TranscodeError(f"cannot decompress {stored}: {exc}") from exc
    if is_lossy(stored) and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"  # once lossy, always flagged (PS3.3 C.7.6.1.1.5)


def _compress(ds: Dataset, target: str) -> None:
    options = _LOSSY_OPTIONS.get(target, {})
    try:
        ds.compress(target, generate_instance_uid=False, **options)
    except Exception as exc:  # encoder profile mismatch, plugin failure...
        raise TranscodeError(f"cannot compress to {target}: {exc}") from exc
    if target in _LOSSY_METHOD:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[target]


def _swap_endianness(ds: Dataset) -> None:
    """Decode every raw element with its original byte order and byte-swap O* words in place.

    pydicom writes bytes values as they are, so OW/OL/OF/OD/OV must be swapped by hand when
    the byte order changes; numbers become Python values once accessed and are re-encoded by
    the writer in the new order.
    """
    for tag in list(ds.keys()):
        elem = ds[tag]  # converts a RawDataElement using the dataset's original encoding
        if elem.VR == "SQ":
            for item in elem.value or []:
                _swap_endianness(item)
            continue
        size = _WORD_SIZE.get(str(elem.VR))
        if size and isinstance(elem.value, bytes | bytearray) and not elem.is_undefined_length:
            elem.value = _swap_words(bytes(elem.value), size)


def _swap_words(value: bytes, size: int) -> bytes:
    usable = len(value) - len(value) % size
    swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return swapped + value[usable:]


def _write(ds: Dataset, target: str) -> bytes:
    out = io.BytesIO()
    uid = UID(target)
    ds.file_meta.TransferSyntaxUID = uid
    dcmwrite(
        out,
        ds,
        implicit_vr=uid.is_implicit_VR,
        little_endian=uid.is_little_endian,
        enforce_file_format=True,
    )
    return out.getvalue()


# -- Frames --------------------------------------------------------------------------------------


def frame_count(ds: Dataset) -> int:
    """(0028,0008) Number of Frames, or 1 when absent, empty or invalid."""
    value = ds.get("NumberOfFrames")
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1
    return max(count, 1)


def get_frames(
    ds: Dataset, numbers: Sequence[int], *, transfer_syntax: str | None = None
) -> list[Frame]:
    """Return the frames ``numbers`` (1-based, PS3.18 10.4.1.1.5) in the order requested.

    ``transfer_syntax`` None or ``*``: as stored (compressed frames byte for byte; native
    frames as raw little-endian bytes). Any native syntax: raw little-endian bytes (compressed
    frames decoded one at a time; 32-bit and colour frames keep the stored layout; a native
    frame is sliced from the pixel data without decoding the others). A compressed syntax other
    than the stored one: decode then encode, or ``TranscodeError``.

    1-bit pixel data (PS3.5 8.1.1) is packed LSB first across frame boundaries, so frame *k*
    may start mid-byte; each returned frame is re-packed to start at bit 0 of its first byte,
    with its last byte zero-padded.

    Decoded colour frames stored as YBR_FULL_422, YBR_PARTIAL_420, YBR_ICT or YBR_RCT are
    returned as RGB (a native frame cannot be subsampled); YBR_FULL stays YBR_FULL.
    Video syntaxes have no frames of their own: as stored, the whole stream is one Frame
    numbered 1; anything else is a ``TranscodeError``.
    """
    total = frame_count(ds)
    wanted = [int(n) for n in numbers]
    if not wanted:
        raise FrameOutOfRange("no frame number requested")
    for number in wanted:
        if not 1 <= number <= total:
            raise FrameOutOfRange(f"frame {number} is out of range: the instance has {total}")
    stored = dataset_transfer_syntax(ds)
    target = _frame_target(stored, transfer_syntax)

    if is_video(stored):
        if target != stored:
            raise TranscodeError(f"frames of video in {stored} cannot be transcoded")
        stream = b"".join(generate_frames(_pixel_bytes(ds), number_of_frames=1))
        return [Frame(1, stream, frame_media_type(stored), stored)]

    if target == stored and is_compressed(stored):
        found = _encapsulated_frames(ds, wanted, total)
        return [Frame(n, found[n], frame_media_type(stored), stored) for n in wanted]
    if not is_compressed(target):
        if stored in UNCOMPRESSED and stored != EXPLICIT_VR_BIG_ENDIAN:
            data = [_native_frame(ds, n) for n in wanted]
        else:
            data = [_decoded_frame_bytes(ds, stored, n) for n in wanted]
        return [
            Frame(n, chunk, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
            for n, chunk in zip(wanted, data, strict=True)
        ]
    _check_transcodable(stored, target, allow_lossy=False)
    return [
        Frame(n, _reencoded_frame(ds, stored, target, n), frame_media_type(target), target)
        for n in wanted
    ]


def _frame_target(stored: str, requested: str | None) -> str:
    """The syntax frames are produced in: as stored for None/``*``, native LE for native."""
    if requested in (None, "", "*"):
        return stored if is_compressed(stored) else EXPLICIT_VR_LITTLE_ENDIAN
    requested = str(requested)
    if not is_compressed(requested):
        return EXPLICIT_VR_LITTLE_ENDIAN
    return requested


def _pixel_element(ds: Dataset) -> DataElement:
    for tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA):
        if tag in ds:
            return ds[tag]
    raise TranscodeError("the instance has no pixel data")


def _pixel_bytes(ds: Dataset) -> bytes:
    value = _pixel_element(ds).value
    if value is None:
        raise TranscodeError("the instance has empty pixel data")
    return bytes(value)


def _encapsulated_frames(ds: Dataset, numbers: Sequence[int], total: int) -> dict[int, bytes]:
    """Frames ``numbers`` (1-based) of encapsulated pixel data; several fragments are joined.

    The Extended Offset Table (7FE0,0001/0002) is used when present, else the Basic Offset
    Table, else fragment boundaries with ``number_of_frames`` (PS3.5 A.4). One frame is
    looked up directly; several are collected in a single pass (no quadratic re-scans when
    the Basic Offset Table is empty).
    """
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    data = _pixel_bytes(ds)
    wanted = set(numbers)
    found: dict[int, bytes] = {}
    try:
        if len(wanted) == 1:
            (number,) = wanted
            found[number] = get_frame(
                data, number - 1, number_of_frames=total, extended_offsets=extended
            )
        else:
            frames = generate_frames(data, number_of_frames=total, extended_offsets=extended)
            for number, frame in enumerate(frames, start=1):
                if number in wanted:
                    found[number] = frame
                if number >= max(wanted):
                    break
    except (ValueError, IndexError) as exc:
        raise TranscodeError(f"frames cannot be located in the pixel data: {exc}") from exc
    missing = wanted - found.keys()
    if missing:
        raise TranscodeError(f"frame {min(missing)} cannot be located in the pixel data")
    return found


def _native_layout(ds: Dataset) -> tuple[int, int]:
    """(bits per frame, bits allocated) for native pixel data."""
    elem = _pixel_element(ds)
    if elem.tag == FLOAT_PIXEL_DATA:
        bits = 32
    elif elem.tag == DOUBLE_FLOAT_PIXEL_DATA:
        bits = 64
    else:
        bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 and ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # native YBR_FULL_422 is subsampled: two samples per pixel (PS3.3 C.7.6.3.1.2)
    return int(ds.Rows) * int(ds.Columns) * samples * bits, bits


def _native_frame(ds: Dataset, number: int) -> bytes:
    """Slice frame ``number`` out of little-endian native pixel data without decoding."""
    frame_bits, bits_allocated = _native_layout(ds)
    data = _pixel_bytes(ds)
    start_bit = (number - 1) * frame_bits
    if bits_allocated % 8 == 0:
        start, end = start_bit // 8, (start_bit + frame_bits) // 8
        if end > len(data):
            raise TranscodeError(f"pixel data is too short for frame {number}")
        return data[start:end]
    return _bit_frame(data, start_bit, frame_bits, number)


def _bit_frame(data: bytes, start_bit: int, frame_bits: int, number: int) -> bytes:
    """Bits ``start_bit`` to ``start_bit + frame_bits`` re-packed from bit 0 (LSB first)."""
    first, last = start_bit // 8, (start_bit + frame_bits + 7) // 8
    if last > len(data):
        raise TranscodeError(f"pixel data is too short for frame {number}")
    offset = start_bit % 8
    if offset == 0 and frame_bits % 8 == 0:
        return data[first:last]
    bits = np.unpackbits(np.frombuffer(data[first:last], dtype=np.uint8), bitorder="little")
    return np.packbits(bits[offset : offset + frame_bits], bitorder="little").tobytes()


def _decode_frame(ds: Dataset, stored: str, number: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode frame ``number`` only, with pydicom's decoder for the stored syntax."""
    from pydicom.pixels import get_decoder

    if not decodable(stored):
        raise TranscodeError(f"no decoder available for stored transfer syntax {stored}")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        arr, props = get_decoder(stored).as_array(
            ds, index=number - 1, raw=photometric not in _DECODE_AS_RGB
        )
    except Exception as exc:  # decoder plugins raise many exception types
        raise TranscodeError(f"cannot decode frame {number} of {stored}: {exc}") from exc
    return arr, dict(props)


def _decoded_frame_bytes(ds: Dataset, stored: str, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian bytes (colour interleaved)."""
    arr, _ = _decode_frame(ds, stored, number)
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated == 1:
        from pydicom.pixels import pack_bits

        return pack_bits(arr.astype(np.uint8), pad=False)
    kind = "f" if arr.dtype.kind == "f" else arr.dtype.kind
    itemsize = max(bits_allocated // 8, 1)
    return arr.astype(np.dtype(f"<{kind}{itemsize}"), copy=False).tobytes()


def _reencoded_frame(ds: Dataset, stored: str, target: str, number: int) -> bytes:
    """Frame ``number`` decoded, then encoded alone in ``target``."""
    from pydicom.pixels import get_encoder

    arr, props = _decode_frame(ds, stored, number)
    samples = int(props.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)))
    options: dict[str, Any] = {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "number_of_frames": 1,
        "samples_per_pixel": samples,
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.get("BitsStored", ds.BitsAllocated)),
        "pixel_representation": int(ds.get("PixelRepresentation", 0)),
        "photometric_interpretation": str(
            props.get("photometric_interpretation", ds.PhotometricInterpretation)
        ),
    }
    if samples > 1:
        options["planar_configuration"] = 0
    try:
        return bytes(get_encoder(target).encode(arr, **options))
    except Exception as exc:  # profile mismatch or plugin failure
        raise TranscodeError(f"cannot encode frame {number} as {target}: {exc}") from exc
