"""Bulk data reference codec and value extraction (PS3.18 10.4.1.1.5, F.2.6)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame

from app.demo.compressed import compressed_sample_arrays, generate_compressed_samples
from app.demo.samples import generate_sample_studies
from app.dicomweb.bulkdata import (
    bulk_value,
    decode_bulkdata_path,
    encode_bulkdata_path,
    find_element,
)
from app.dicomweb.dicomjson import BulkDataRef, binary_value, dataset_to_json
from app.dicomweb.pixels import transcode_part10
from app.dicomweb.transfer_syntax import EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

CODEC = [
    ((), 0x7FE00010, "7FE00010"),
    (((0x00409096, 0),), 0x00283010, "00409096.0.00283010"),
    (((0x00081115, 12), (0x0008114A, 3)), 0x00420011, "00081115.12.0008114A.3.00420011"),
    ((), 0x00000000, "00000000"),
    (((0xFFFFFFFF, 0),), 0x0009ABCD, "FFFFFFFF.0.0009ABCD"),
]


@pytest.mark.parametrize(("path", "tag", "text"), CODEC)
def test_codec_table(path: tuple[tuple[int, int], ...], tag: int, text: str) -> None:
    assert encode_bulkdata_path(path, tag) == text
    assert decode_bulkdata_path(text) == (path, tag)


def test_lowercase_hex_is_accepted() -> None:
    assert decode_bulkdata_path("00409096.0.0028301a") == (((0x00409096, 0),), 0x0028301A)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7FE0001",
        "7FE000100",
        "7FE00010.",
        ".7FE00010",
        "00409096.0",
        "00409096.01.00283010",
        "00409096.x.00283010",
        "00409096.-1.00283010",
        "00409096..00283010",
        "GGGG0010",
        "7FE00010/../x",
        "0x7FE00010",
        "00409096.0.00283010.1",
    ],
)
def test_malformed_references(text: str) -> None:
    with pytest.raises(ValueError):
        decode_bulkdata_path(text)


@pytest.mark.parametrize(
    ("path", "tag"),
    [((), -1), ((), 0x1_0000_0000), (((0x00409096, -1),), 0x00283010)],
)
def test_encode_rejects_bad_input(path: tuple[tuple[int, int], ...], tag: int) -> None:
    with pytest.raises(ValueError):
        encode_bulkdata_path(path, tag)


def _nested_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Bulk^Data"
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
    ds.add_new(0x7FE00010, "OW", bytes(range(8)))
    first, second = Dataset(), Dataset()
    first.add_new(0x00283006, "US", [1, 2, 3, 65535])  # LUT Data
    second.add_new(0x00283006, "US", [7] * 600)
    second.add_new(0x00283003, "LO", "second LUT")
    inner = Dataset()
    inner.add_new(0x00420011, "OB", b"%PDF-1.4 " * 200)  # Encapsulated Document
    second.add_new(0x0040A730, "SQ", [inner])
    ds.add_new(0x00283010, "SQ", [first, second])  # VOI LUT Sequence
    return ds


def test_round_trip_with_dicomjson_refs() -> None:
    ds = _nested_dataset()
    refs: list[BulkDataRef] = []

    def handler(ref: BulkDataRef) -> str:
        refs.append(ref)
        return "bulkdata/" + encode_bulkdata_path(ref.path, ref.tag)

    obj = dataset_to_json(ds, bulk_data_uri=handler, bulk_data_threshold=64)
    assert obj["7FE00010"]["BulkDataURI"] == "bulkdata/7FE00010"
    doc = obj["00283010"]["Value"][1]["0040A730"]["Value"][0]["00420011"]
    assert doc["BulkDataURI"] == "bulkdata/00283010.1.0040A730.0.00420011"
    assert {ref.tag for ref in refs} == {0x7FE00010, 0x00420011}
    for ref in refs:
        path, tag = decode_bulkdata_path(encode_bulkdata_path(ref.path, ref.tag))
        assert (path, tag) == (ref.path, ref.tag)
        value = bulk_value(ds, path, tag)
        assert value == binary_value(find_element(ds, path, tag).value)
        assert len(value) == ref.length


def test_numeric_and_text_values_are_little_endian() -> None:
    ds = _nested_dataset()
    lut = bulk_value(ds, ((0x00283010, 0),), 0x00283006)
    assert lut == struct.pack("<4H", 1, 2, 3, 65535)
    assert bulk_value(ds, ((0x00283010, 1),), 0x00283006) == struct.pack("<600H", *([7] * 600))
    assert bulk_value(ds, ((0x00283010, 1),), 0x00283003) == b"second LUT"
    ds.add_new(0x00189219, "FD", [1.5, -2.25])
    assert bulk_value(ds, (), 0x00189219) == struct.pack("<2d", 1.5, -2.25)


def test_missing_elements_raise_key_error() -> None:
    ds = _nested_dataset()
    with pytest.raises(KeyError):
        bulk_value(ds, (), 0x7FE00008)
    with pytest.raises(KeyError):
        bulk_value(ds, ((0x00283010, 2),), 0x00283006)
    with pytest.raises(KeyError):
        bulk_value(ds, ((0x00081115, 0),), 0x00283006)
    with pytest.raises(ValueError):
        bulk_value(ds, (), 0x00283010)  # a sequence has no bulk value


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_native_pixel_data_is_the_whole_value() -> None:
    us = next(ds for ds in generate_sample_studies() if ds.Modality == "US")
    assert bulk_value(us, (), 0x7FE00010) == us.PixelData
    implicit = dcmread(io.BytesIO(transcode_part10(_part10(us), IMPLICIT_VR_LITTLE_ENDIAN)))
    assert bulk_value(implicit, (), 0x7FE00010) == us.PixelData


def test_big_endian_pixel_data_comes_out_little_endian() -> None:
    ct = generate_sample_studies()[0]
    big = dcmread(io.BytesIO(transcode_part10(_part10(ct), EXPLICIT_VR_BIG_ENDIAN)))
    assert big.PixelData != ct.PixelData  # stored as big-endian words
    value = bulk_value(big, (), 0x7FE00010)
    assert isinstance(value, bytes)
    assert value == ct.PixelData
    np.testing.assert_array_equal(np.frombuffer(value, "<i2").reshape(64, 64), ct.pixel_array)


def test_encapsulated_pixel_data_is_a_list_of_frames() -> None:
    specs = compressed_sample_arrays()
    datasets = dict(zip((s.key for s in specs), generate_compressed_samples(), strict=True))
    cine = datasets["rle-cine"]
    frames = bulk_value(cine, (), 0x7FE00010)
    assert isinstance(frames, list) and len(frames) == 4
    assert frames[2] == get_frame(cine.PixelData, 2, number_of_frames=4)
    single = bulk_value(datasets["j2k-mr-0"], (), 0x7FE00010)
    assert isinstance(single, list) and len(single) == 1
