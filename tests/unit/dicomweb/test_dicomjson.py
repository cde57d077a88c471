"""Unit tests for app.dicomweb.dicomjson (DICOM JSON Model, PS3.18 Annex F)."""

from __future__ import annotations

import base64
import datetime
import io
import json
import warnings
from typing import Any

import pytest
from pydicom import Dataset, dcmread, examples
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from app.dicomweb.dicomjson import (
    BulkDataRef,
    dataset_to_json,
    encode_json,
    json_to_dataset,
)


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """A raw element as dcmread would leave it (little endian, explicit VR)."""
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _roundtrip_bytes(ds: Dataset, *, implicit_vr: bool = False) -> Dataset:
    """Encode ``ds`` with pydicom and read it back, as if it came from a PACS."""
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit_vr, little_endian=True)
    return dcmread(io.BytesIO(buf.getvalue()), force=True)


def _assert_sorted(obj: dict[str, Any]) -> None:
    keys = [k for k in obj]
    assert keys == sorted(keys)
    for attr in obj.values():
        if attr["vr"] == "SQ":
            for item in attr.get("Value", []):
                _assert_sorted(item)


# -- structure ---------------------------------------------------------------------------------


def test_keys_are_ascending_at_every_level() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "P1"
    ds.AccessionNumber = "A1"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.ReferencedSOPSequence = Sequence([item])
    out = dataset_to_json(ds)
    assert list(out) == ["00080050", "00081199", "00100020", "0020000D"]
    assert list(out["00081199"]["Value"][0]) == ["00081150", "00081155"]
    _assert_sorted(dataset_to_json(examples.ct))


def test_group_length_meta_and_command_are_dropped_charset_kept() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(0x00080000, "UL", 42)  # group length
    ds.add_new(0x00000100, "US", 1)  # CommandField
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.1")  # file meta in the body
    ds.PatientID = "P1"
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.add_new(0x00100000, "UL", 8)
    item.PatientID = "P2"
    ds.OtherPatientIDsSequence = Sequence([item])
    out = dataset_to_json(ds)
    assert list(out) == ["00080005", "00100020", "00101002"]
    assert out["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert out["00101002"]["Value"] == [
        {
            "00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
            "00100020": {"vr": "LO", "Value": ["P2"]},
        }
    ]


def test_drop_tags_applies_at_every_level() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientName = "A^B"
    item = Dataset()
    item.PatientID = "P2"
    item.IssuerOfPatientID = "X"
    ds.OtherPatientIDsSequence = Sequence([item])
    out = dataset_to_json(ds, drop_tags={0x00100020})
    assert "00100020" not in out
    assert out["00101002"]["Value"] == [{"00100021": {"vr": "LO", "Value": ["X"]}}]


def test_empty_values_have_vr_only_and_empty_multi_values_are_null() -> None:
    ds = Dataset()
    ds.add_new(0x00100020, "LO", "")
    ds.add_new(0x00080020, "DA", None)
    ds.add_new(0x00081199, "SQ", Sequence())
    ds.add_new(0x00200013, "IS", None)
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.add_new(0x00101040, "LO", "")
    out = dataset_to_json(ds)
    assert out["00100020"] == {"vr": "LO"}
    assert out["00080020"] == {"vr": "DA"}
    assert out["00081199"] == {"vr": "SQ"}
    assert out["00200013"] == {"vr": "IS"}
    assert out["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}


def test_sequence_items_including_empty_item() -> None:
    ds = Dataset()
    filled = Dataset()
    filled.CodeValue = "T-A0100"
    ds.AnatomicRegionSequence = Sequence([Dataset(), filled])
    out = dataset_to_json(ds)
    assert out["00082218"] == {
        "vr": "SQ",
        "Value": [{}, {"00080100": {"vr": "SH", "Value": ["T-A0100"]}}],
    }


# -- value shapes ------------------------------------------------------------------------------


def test_person_name_groups_and_empty_groups_omitted() -> None:
    ds = Dataset()
    ds.PatientName = "Wang^XiaoDong=王^小東"
    ds.OtherPatientNames = ["A^B", "", "=Y^Z", "==P^Q"]
    ds.ReferringPhysicianName = "="  # two empty groups: an empty value
    out = dataset_to_json(ds)
    assert out["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}],
    }
    assert out["00101001"]["Value"] == [
        {"Alphabetic": "A^B"},
        None,
        {"Ideographic": "Y^Z"},
        {"Phonetic": "P^Q"},
    ]
    assert out["00080090"] == {"vr": "PN"}


def test_is_ds_are_numbers_when_valid() -> None:
    ds = Dataset()
    ds.InstanceNumber = "12"
    ds.PixelSpacing = ["0.5", "1.25"]
    ds.SliceThickness = "2"
    out = dataset_to_json(ds)
    assert out["00200013"] == {"vr": "IS", "Value": [12]}
    assert out["00280030"] == {"vr": "DS", "Value": [0.5, 1.25]}
    assert out["00180050"] == {"vr": "DS", "Value": [2.0]}
    assert isinstance(out["00200013"]["Value"][0], int)


def test_invalid_is_ds_from_a_sloppy_pacs_pass_through_as_strings() -> None:
    ds = Dataset()
    ds[0x00200013] = _raw(0x00200013, "IS", b"abc ")
    ds[0x00181050] = _raw(0x00181050, "DS", b"1,5 ")
    ds[0x00280030] = _raw(0x00280030, "DS", b"0.5\\abc ")
    ds[0x00201041] = _raw(0x00201041, "DS", b"1e400 ")
    ds[0x00200012] = _raw(0x00200012, "IS", b"1\\\\3 ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = dataset_to_json(ds)
    assert out["00200013"]["Value"] == ["abc"]
    assert out["00181050"]["Value"] == ["1,5"]
    assert out["00280030"]["Value"] == [0.5, "abc"]
    assert out["00201041"]["Value"] == ["1e400"]  # not representable as a JSON number
    assert out["00200012"]["Value"] == [1, None, 3]
    encode_json(out)  # and the whole thing is still valid JSON


def test_binary_numbers_and_at() -> None:
    ds = Dataset()
    ds.Rows = 512
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00189089, "FD", [0.5, -1.0])
    ds.add_new(0x00189087, "FD", float("nan"))
    ds.add_new(0x00186020, "SL", -7)
    ds.add_new(0x00281101, "US or SS", [256, 0, 16])
    out = dataset_to_json(ds)
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00209165"] == {"vr": "AT", "Value": ["00100010", "7FE00010"]}
    assert out["00189089"] == {"vr": "FD", "Value": [0.5, -1.0]}
    assert out["00189087"] == {"vr": "FD", "Value": ["NaN"]}
    assert out["00186020"] == {"vr": "SL", "Value": [-7]}
    assert out["00281101"] == {"vr": "US", "Value": [256, 0, 16]}


def test_text_vrs_keep_backslashes_and_strings() -> None:
    ds = Dataset()
    ds.StudyDescription = "Chest"
    ds.add_new(0x00204000, "LT", "a\\b")
    ds.StudyDate = "20240102"
    out = dataset_to_json(ds)
    assert out["00204000"] == {"vr": "LT", "Value": ["a\\b"]}
    assert out["00080020"] == {"vr": "DA", "Value": ["20240102"]}
    assert out["00081030"] == {"vr": "LO", "Value": ["Chest"]}


# -- binary and bulk data ----------------------------------------------------------------------


def test_binary_inline_without_handler_even_when_large() -> None:
    ds = Dataset()
    ds.PixelData = b"\x01\x02" * 2000
    ds.add_new(0x00420011, "OB", b"")
    out = dataset_to_json(ds)
    assert base64.b64decode(out["7FE00010"]["InlineBinary"]) == b"\x01\x02" * 2000
    assert out["00420011"] == {"vr": "OB"}


def test_bulk_data_threshold_and_pixel_data() -> None:
    calls: list[BulkDataRef] = []

    def handler(ref: BulkDataRef) -> str:
        calls.append(ref)
        return f"https://gw/bulk/{ref.tag:08X}"

    ds = Dataset()
    ds.add_new(0x00420011, "OB", b"x" * 101)  # EncapsulatedDocument, just above threshold
    ds.add_new(0x00282000, "OB", b"y" * 100)  # ICCProfile, exactly at threshold: inline
    ds.add_new(0x7FE00010, "OW", b"\0\0")  # tiny pixel data: still bulk
    out = dataset_to_json(ds, bulk_data_uri=handler, bulk_data_threshold=100)
    assert out["00420011"] == {"vr": "OB", "BulkDataURI": "https://gw/bulk/00420011"}
    assert out["00282000"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"y" * 100).decode()}
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "https://gw/bulk/7FE00010"}
    assert [c.tag for c in calls] == [0x00420011, 0x7FE00010]
    assert calls[1] == BulkDataRef(path=(), tag=0x7FE00010, vr="OW", length=2)
    assert calls[1].is_pixel_data


def test_bulk_data_handler_may_decline() -> None:
    ds = Dataset()
    ds.PixelData = b"\x05" * 4
    out = dataset_to_json(ds, bulk_data_uri=lambda ref: None)
    assert out["7FE00010"]["InlineBinary"] == base64.b64encode(b"\x05" * 4).decode()


def test_bulk_data_ref_path_in_nested_sequences() -> None:
    refs: list[BulkDataRef] = []
    icon = Dataset()
    icon.PixelData = b"\x07" * 8
    inner = Dataset()
    inner.IconImageSequence = Sequence([icon])
    ds = Dataset()
    ds.ReferencedImageSequence = Sequence([Dataset(), inner])

    def handler(ref: BulkDataRef) -> str:
        refs.append(ref)
        return "uri"

    out = dataset_to_json(ds, bulk_data_uri=handler)
    assert refs == [
        BulkDataRef(path=((0x00081140, 1), (0x00880200, 0)), tag=0x7FE00010, vr="OB", length=8)
    ]
    nested = out["00081140"]["Value"][1]["00880200"]["Value"][0]["7FE00010"]
    assert nested == {"vr": "OB", "BulkDataURI": "uri"}


def test_real_ct_with_bulk_data() -> None:
    out = dataset_to_json(examples.ct, bulk_data_uri=lambda ref: f"/bulk/{ref.tag:08X}")
    assert out["7FE00010"] == {"vr": "OW", "BulkDataURI": "/bulk/7FE00010"}
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert out["00080005"] == {"vr": "CS", "Value": ["ISO_IR 100"]}  # the source's, kept
    assert not any(k.startswith("0002") for k in out)


# -- private and unknown VRs -------------------------------------------------------------------


def test_private_tags_keep_vr_and_unknown_become_un() -> None:
    ds = Dataset()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret")
    block.add_new(0x02, "SL", -3)
    ds.PatientID = "P1"
    explicit = _roundtrip_bytes(ds)
    out = dataset_to_json(explicit)
    assert out["00090010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    assert out["00091001"] == {"vr": "LO", "Value": ["secret"]}
    assert out["00091002"] == {"vr": "SL", "Value": [-3]}
    implicit = _roundtrip_bytes(ds, implicit_vr=True)
    out = dataset_to_json(implicit)
    assert out["00091001"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"secret").decode()}


# -- character sets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        ("ISO_IR 100", "Müller^Jürgen", {"Alphabetic": "Müller^Jürgen"}),
        (
            "ISO_IR 192",
            "Wang^XiaoDong=王^小東",
            {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"},
        ),
        (
            ["", "ISO 2022 IR 87"],
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        ),
    ],
)
def test_names_decode_from_any_source_charset(charset: Any, name: str, expected: dict) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = name.split("=")[-1]
    item = Dataset()
    item.PatientName = name  # nested items inherit the dataset's character set
    ds.OtherPatientIDsSequence = Sequence([item])
    read_back = _roundtrip_bytes(ds)
    assert read_back.PatientName.original_string != name.encode("utf-8") or charset == "ISO_IR 192"
    out = dataset_to_json(read_back)
    assert out["00100010"] == {"vr": "PN", "Value": [expected]}
    assert out["00081030"] == {"vr": "LO", "Value": [name.split("=")[-1]]}
    assert out["00101002"]["Value"][0]["00100010"]["Value"] == [expected]
    # Kept with the source value: it names the source encoding, not the JSON's, which is UTF-8
    # (PS3.18 F.2.2 note 3); an empty first value of ISO 2022 is null (F.2.5).
    source = [charset] if isinstance(charset, str) else [v or None for v in charset]
    assert out["00080005"] == {"vr": "CS", "Value": source}
    encoded = encode_json([out])
    assert json.loads(encoded.decode("utf-8"))[0]["00100010"]["Value"] == [expected]
    for part in expected.values():
        assert part.encode("utf-8") in encoded


# -- encode_json / json_to_dataset -------------------------------------------------------------


def test_encode_json_is_compact_sorted_utf8() -> None:
    body = encode_json([{"00100020": {"vr": "LO", "Value": ["é"]}, "00080050": {"vr": "SH"}}])
    assert body == '[{"00080050":{"vr":"SH"},"00100020":{"Value":["é"],"vr":"LO"}}]'.encode()


def test_encode_json_rejects_nan() -> None:
    with pytest.raises(ValueError):
        encode_json({"00189087": {"vr": "FD", "Value": [float("nan")]}})


def test_json_roundtrip_through_pydicom() -> None:
    ds = Dataset()
    ds.PatientName = "Wang^XiaoDong=王^小東"
    ds.PatientID = "P1"
    ds.InstanceNumber = "7"
    ds.PixelSpacing = ["0.5", "0.25"]
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedSOPSequence = Sequence([item])
    ds.add_new(0x00282000, "OB", b"\x00\x01\x02\x03")
    back = json_to_dataset(json.loads(encode_json(dataset_to_json(ds))))
    assert back.PatientName == "Wang^XiaoDong=王^小東"
    assert back.PatientID == "P1"
    assert back.InstanceNumber == 7
    assert back.PixelSpacing == [0.5, 0.25]
    assert back.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3"
    assert back[0x00282000].value == b"\x00\x01\x02\x03"


def test_agrees_with_pydicom_where_pydicom_is_right() -> None:
    """Differential check: on plain data our output equals pydicom's, modulo key order."""
    ds = examples.ct
    ours = dataset_to_json(ds)
    theirs = ds.to_json_dict()
    assert json.loads(encode_json(ours)) == json.loads(json.dumps(theirs, sort_keys=True))


def test_date_time_objects_are_formatted_as_dicom_strings() -> None:
    ds = Dataset()
    ds.StudyDate = datetime.date(2024, 1, 2)
    ds.StudyTime = datetime.time(10, 10, 10, 500000)
    ds.AcquisitionDateTime = datetime.datetime(2024, 1, 2, 3, 4, 5)
    out = dataset_to_json(ds)
    assert out["00080020"]["Value"] == ["20240102"]
    assert out["00080030"]["Value"] == ["101010.500000"]
    assert out["0008002A"]["Value"] == ["20240102030405"]


def test_ambiguous_vrs_resolved_after_implicit_vr_read() -> None:
    ds = Dataset()
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -5
    ds.PixelData = b"\x01\x00"
    out = dataset_to_json(_roundtrip_bytes(ds, implicit_vr=True))
    assert out["00280106"] == {"vr": "SS", "Value": [-5]}
    assert out["7FE00010"] == {"vr": "OW", "InlineBinary": "AQA="}
