"""Differential tests: the raw-bytes DICOM JSON path against the pydicom path, byte for byte."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset

from app.demo.compressed import generate_compressed_samples
from app.demo.samples import generate_ct_series, generate_sample_studies
from app.dicomweb.dicomjson import dataset_to_json, encode_json
from app.dicomweb.pixels import read_part10
from app.dicomweb.rawjson import raw_dataset_to_json
from app.services.wado import bulk_uri_minter, metadata_json

URL = "http://gw/studies/1.2/series/1.2.3/instances/1.2.3.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
UNDEFINED = 0xFFFFFFFF
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def reference(data: bytes) -> bytes:
    """The existing pydicom path."""
    return encode_json(dataset_to_json(read_part10(data), bulk_data_uri=bulk_uri_minter(URL)))


def fast(data: bytes) -> bytes | None:
    """The raw-bytes path alone (None: it falls back)."""
    obj = raw_dataset_to_json(data, bulk_data_uri=bulk_uri_minter(URL))
    return None if obj is None else encode_json(obj)


def check(data: bytes, *, handled: bool | None = None) -> None:
    """Byte-identical output; ``handled`` says whether the fast path must take it."""
    expected = reference(data)
    assert metadata_json(data, URL) == expected
    got = fast(data)
    if got is not None:
        assert got == expected
    if handled is not None:
        assert (got is not None) is handled


def part10_of(ds: Dataset) -> bytes:
    """Part-10 bytes of a pydicom Dataset."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def el(tag: int, vr: str, value: bytes, *, undefined: bool = False) -> bytes:
    """One Explicit VR Little Endian element."""
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    length = UNDEFINED if undefined else len(value)
    if vr in _LONG:
        return head + b"\0\0" + struct.pack("<I", length) + value
    return head + struct.pack("<H", length) + value


def iel(tag: int, value: bytes, *, undefined: bool = False) -> bytes:
    """One Implicit VR Little Endian element."""
    length = UNDEFINED if undefined else len(value)
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value


def item(body: bytes, *, undefined: bool = False) -> bytes:
    """One sequence item (with its delimiter when of undefined length)."""
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + struct.pack(
            "<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def part10(body: bytes, syntax: str = EXPLICIT) -> bytes:
    """Preamble, File Meta and ``body`` (the data set bytes)."""
    uid = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    meta = (el(0x00020001, "OB", b"\0\1") + el(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0")
            + el(0x00020003, "UI", b"1.2.3.4") + el(0x00020010, "UI", uid))
    return (b"\0" * 128 + b"DICM" + el(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
            + body)


def head(charset: bytes | None = None) -> bytes:
    """A few leading elements (SOP Class/Instance) and, optionally, a character set."""
    out = el(0x00080005, "CS", charset) if charset is not None else b""
    return (out + el(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0")
            + el(0x00080018, "UI", b"1.2.3.4"))


def test_every_sample_instance_is_identical() -> None:
    datasets = [*generate_sample_studies(), *generate_compressed_samples()]
    fallbacks = 0
    for ds in datasets:
        data = part10_of(ds)
        check(data)
        fallbacks += fast(data) is None
    charsets = [str(ds.get("SpecificCharacterSet", "")) for ds in datasets]
    assert fallbacks == sum("2022" in c for c in charsets)  # only ISO 2022 falls back


def test_ct_instance_takes_the_fast_path() -> None:
    check(part10_of(next(generate_ct_series(1, rows=64, columns=64))), handled=True)


def test_nested_sequences_defined_and_undefined() -> None:
    inner = el(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2\0") + el(0x00081155, "UI", b"1.9")
    seq_defined = b"".join([item(inner), item(b""), item(inner, undefined=True)])
    seq_undefined = item(el(0x00080100, "SH", b"T-1 ") + el(0x00080102, "SH", b"SRT ")
                         + el(0x00081140, "SQ", item(inner)), undefined=True)
    body = (head() + el(0x00081115, "SQ", seq_defined)
            + el(0x00081140, "SQ", b"")
            + el(0x00082218, "SQ", seq_undefined + item(b"", undefined=True) + SEQ_END,
                 undefined=True)
            + el(0x00400275, "SQ", SEQ_END, undefined=True))
    check(part10(body), handled=True)


def test_empty_values_and_multi_valued_with_empty_members() -> None:
    body = (head() + el(0x00080020, "DA", b"")
            + el(0x00080050, "SH", b"  ") + el(0x00080060, "CS", b"\\")
            + el(0x00080068, "CS", b"ORIGINAL\\\\AXIAL ")
            + el(0x00080090, "PN", b"") + el(0x00081030, "LO", b"a \\ \\b\0")
            + el(0x00100010, "PN", b"Doe^J\\\\Roe ") + el(0x00104000, "LT", b"  ")
            + el(0x00180050, "DS", b"1.5\\\\ 2 ") + el(0x00200013, "IS", b"\\3")
            + el(0x00280010, "US", b"") + el(0x00281050, "DS", b"")
            + el(0x00282000, "OB", b""))
    check(part10(body), handled=True)


def test_person_names_with_groups_utf8_and_iso2022() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう".encode()
    body = head(b"ISO_IR 192") + el(0x00100010, "PN", name + b" ") + el(
        0x00100020, "LO", "Ünïcode".encode())
    check(part10(body), handled=True)
    jis = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
    body = head(b"\\ISO 2022 IR 87") + el(0x00100010, "PN", jis)
    check(part10(body), handled=False)
    check(part10(head() + el(0x00100010, "PN", b"=Ideo==")), handled=True)


def test_latin1_character_sets_and_bad_utf8() -> None:
    check(part10(head(b"ISO_IR 100") + el(0x00100010, "PN", b"M\xfcller^J\xf6rg ")),
          handled=True)
    check(part10(head() + el(0x00081030, "LO", b"caf\xe9")), handled=True)
    check(part10(head(b"ISO_IR 192") + el(0x00081030, "LO", b"caf\xe9")), handled=False)


@pytest.mark.parametrize("text", [b" 1.50", b"+2 ", b"1e3\\-0.5E-2", b".5", b"007", b"1,5",
                                  b"abc", b"NaN", b"1.5\0", b"  "])
def test_decimal_strings(text: bytes) -> None:
    check(part10(head() + el(0x00180050, "DS", text + b" " * (len(text) % 2))))


@pytest.mark.parametrize("text", [b" 007", b"+12", b"-3\\4", b"1.0", b"1.5", b"x", b"  ",
                                  b"99999999999"])
def test_integer_strings(text: bytes) -> None:
    check(part10(head() + el(0x00200013, "IS", text + b" " * (len(text) % 2))))


def test_at_float_and_integer_vrs() -> None:
    body = (head() + el(0x00189152 - 0x00000001, "FD", struct.pack("<d", 2.5))
            + el(0x00201041, "DS", b"12") + el(0x00280009, "AT", struct.pack("<HH", 0x18, 0x1063))
            + el(0x00280010, "US", struct.pack("<H", 64))
            + el(0x00281041, "SS", struct.pack("<h", -1))
            + el(0x00400009, "SH", b"X ")
            + el(0x00540081, "UL", struct.pack("<2I", 1, 2**32 - 1))
            + el(0x00660000 + 0x0016, "FL", struct.pack("<3f", 1.5, float("nan"), float("inf")))
            + el(0x00660000 + 0x0017, "FL", struct.pack("<f", -0.0))
            + el(0x00700000 + 0x0052, "SL", struct.pack("<2i", -5, 7))
            + el(0x00720000 + 0x0026, "AT", struct.pack("<4H", 0x10, 0x10, 0x20, 0x0D))
            + el(0x00720000 + 0x0074, "FD", struct.pack("<2d", 1e300, -2.25)))
    check(part10(body), handled=True)


@pytest.mark.parametrize("size", [0, 4, 1024, 1026, 4096])
def test_binary_below_and_above_the_threshold(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    body = (head() + el(0x00091010 - 0x1000, "LO", b"ACME 1.0") + el(0x00091001, "OB", value)
            + el(0x00091002, "OW", value) + el(0x00091003, "LO", b"private ")
            + el(0x00282000, "OB", value)
            + el(0x7FE00010, "OW", value))
    check(part10(body), handled=True)


@pytest.mark.parametrize("size", [2, 2048])
def test_un_elements(size: int) -> None:
    value = b"\1" * size
    check(part10(head() + el(0x00091010 - 0x1000, "LO", b"ACME 1.0")
                 + el(0x00091001, "UN", value)), handled=False)
    check(part10(head() + el(0x00280010, "UN", struct.pack("<H", 512))), handled=False)
    check(part10(head() + el(0x00310000 + 0x0010, "UN", value)))


def test_icon_pixel_data_in_a_sequence_and_encapsulated_pixels() -> None:
    icon = (el(0x00280100, "US", struct.pack("<H", 8)) + el(0x7FE00010, "OB", b"\7" * 64))
    fragments = (item(b"") + item(b"\xff\xd8" + b"\0" * 100 + b"\xff\xd9") + SEQ_END)
    body = (head() + el(0x00880200, "SQ", item(icon))
            + el(0x7FE00010, "OB", fragments, undefined=True))
    check(part10(body, "1.2.840.10008.1.2.4.50"), handled=True)


def test_implicit_vr_and_ambiguous_vrs() -> None:
    lut = (iel(0x00283002, struct.pack("<3H", 4, 0, 16)) + iel(0x00283006, b"\1\0" * 4))
    front = (iel(0x00080016, b"1.2.840.10008.5.1.4.1.1.7\0") + iel(0x00080018, b"1.2.3.4")
             + iel(0x00080060, b"OT")
             + iel(0x00081140, item(iel(0x00081155, b"1.9\0"), undefined=True) + SEQ_END,
                   undefined=True)
             + iel(0x00083010, b"1.2\0"))
    back = (iel(0x00100010, b"Doe^J ") + iel(0x00280100, struct.pack("<H", 8))
            + iel(0x00280103, struct.pack("<H", 1)))
    pixels = iel(0x7FE00010, b"\1" * 64)
    check(part10(front + back + pixels, IMPLICIT), handled=True)
    check(part10(front + back + iel(0x00283010, item(lut)) + pixels, IMPLICIT), handled=False)
    private = iel(0x00090010, b"ACME") + iel(0x00091001, b"xy")
    check(part10(front + private + back + pixels, IMPLICIT), handled=False)
    explicit_lut = el(0x00283010, "SQ", item(
        el(0x00283002, "US", struct.pack("<3H", 4, 0, 16)) + el(0x00283006, "US", b"\1\0" * 4)))
    check(part10(head() + el(0x00280103, "US", struct.pack("<H", 1)) + explicit_lut),
          handled=True)


def test_truncated_or_odd_bytes_fall_back_or_match() -> None:
    good = part10(head() + el(0x00100010, "PN", b"Doe^J "))
    assert fast(good[:-3]) is None
    assert fast(b"no preamble") is None
    odd = part10(head() + el(0x00280010, "US", b"\1\0\2"))
    assert fast(odd) is None
    with pytest.raises(Exception) as reference_error:
        reference(odd)
    with pytest.raises(reference_error.type):
        metadata_json(odd, URL)
