"""C-FIND identifier building (PS3.4 C.4.1.1.3): return keys, match keys, UID lists, sequences,
SpecificCharacterSet, and that the result encodes as a DIMSE data set."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from app.dicomweb.attributes import REQUIRED_RETURN_KEYS, QueryLevel
from app.dicomweb.identifiers import build_identifier
from app.dicomweb.search import AttributePath, parse_search

STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E


def matches(*pairs: tuple[str, str], level: QueryLevel = QueryLevel.STUDY):  # type: ignore[no-untyped-def]
    return parse_search(list(pairs), level=level).matches


def roundtrip(ds: Dataset, *, implicit: bool = True) -> Dataset:
    """Encode as pynetdicom would for a C-FIND request, then decode again."""
    raw = encode(ds, implicit, True)
    assert raw is not None, "pynetdicom could not encode the identifier"
    return decode(BytesIO(raw), implicit, True)


def test_level_and_return_keys_are_empty() -> None:
    ds = build_identifier(QueryLevel.STUDY, return_keys=REQUIRED_RETURN_KEYS[QueryLevel.STUDY])
    assert ds.QueryRetrieveLevel == "STUDY"
    for tag in REQUIRED_RETURN_KEYS[QueryLevel.STUDY]:
        if tag == 0x00080005:
            continue
        assert tag in ds, hex(tag)
        assert ds[tag].value in (None, "", []), (hex(tag), ds[tag].value)
    # SpecificCharacterSet is never a return key (it is not matched, PS3.4 C.2.2.2)
    assert 0x00080005 not in ds


def test_image_level_is_IMAGE_not_INSTANCE() -> None:
    assert build_identifier(QueryLevel.IMAGE).QueryRetrieveLevel == "IMAGE"


def test_match_keys_carry_their_values() -> None:
    ds = build_identifier(
        QueryLevel.STUDY,
        matches=matches(("PatientID", "DEMO-0001"), ("StudyDate", "20190101-")),
        return_keys=[0x00100020, 0x00080020, 0x00100010],
    )
    assert ds.PatientID == "DEMO-0001"
    assert ds.StudyDate == "20190101-"
    assert ds.PatientName in (None, "")


def test_universal_match_is_an_empty_key() -> None:
    ds = build_identifier(QueryLevel.STUDY, matches=matches(("StudyDescription", "")))
    assert 0x00081030 in ds and ds[0x00081030].value in (None, "")


def test_uid_list_is_multi_valued() -> None:
    ds = build_identifier(
        QueryLevel.STUDY, matches=matches(("StudyInstanceUID", "1.2.3,1.2.4,1.2.5"))
    )
    assert ds[STUDY_UID].VM == 3
    assert list(ds.StudyInstanceUID) == ["1.2.3", "1.2.4", "1.2.5"]
    back = roundtrip(ds)
    assert list(back.StudyInstanceUID) == ["1.2.3", "1.2.4", "1.2.5"]


def test_unique_keys_single_and_list() -> None:
    ds = build_identifier(
        QueryLevel.IMAGE,
        unique_keys={STUDY_UID: "1.2.3", SERIES_UID: ("1.2.3.4", "1.2.3.5")},
    )
    assert ds.StudyInstanceUID == "1.2.3"
    assert list(ds.SeriesInstanceUID) == ["1.2.3.4", "1.2.3.5"]
    one = build_identifier(QueryLevel.SERIES, unique_keys={STUDY_UID: ("1.2.3",)})
    assert one.StudyInstanceUID == "1.2.3" and one[STUDY_UID].VM == 1


def test_sequence_match_is_one_item() -> None:
    ds = build_identifier(
        QueryLevel.SERIES,
        matches=matches(
            ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1"),
            ("RequestAttributesSequence.RequestedProcedureID", "RP1"),
            level=QueryLevel.SERIES,
        ),
        return_keys=[0x00400275],
    )
    seq = ds.RequestAttributesSequence
    assert isinstance(seq, Sequence) and len(seq) == 1
    assert seq[0].ScheduledProcedureStepID == "SPS1"
    assert seq[0].RequestedProcedureID == "RP1"
    back = roundtrip(ds)
    assert back.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS1"


def test_sequence_return_key_is_empty_and_nested_return_key_is_one_empty_item() -> None:
    ds = build_identifier(QueryLevel.SERIES, return_keys=[0x00400275])
    assert ds[0x00400275].VR == "SQ" and len(ds[0x00400275].value) == 0
    nested = build_identifier(
        QueryLevel.SERIES, return_keys=[AttributePath((0x00400275, 0x00401001))]
    )
    assert len(nested.RequestAttributesSequence) == 1
    assert nested.RequestAttributesSequence[0].RequestedProcedureID in (None, "")
    roundtrip(nested)


def test_ascii_values_send_no_specific_character_set() -> None:
    ds = build_identifier(QueryLevel.STUDY, matches=matches(("PatientName", "Doe^John")))
    assert "SpecificCharacterSet" not in ds


@pytest.mark.parametrize("value", ["山田^太郎", "Müller*", "Wang^XiaoDong=王^小東"])
def test_non_ascii_value_sends_specific_character_set(value: str) -> None:
    ds = build_identifier(
        QueryLevel.STUDY, matches=matches(("PatientName", value)), character_set="ISO_IR 192"
    )
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back = roundtrip(ds)
    back.SpecificCharacterSet = "ISO_IR 192"
    back.decode()
    assert str(back.PatientName) == value


def test_configured_character_set_is_used() -> None:
    ds = build_identifier(
        QueryLevel.STUDY, matches=matches(("PatientName", "Müller*")), character_set="ISO_IR 100"
    )
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    roundtrip(ds)


@pytest.mark.parametrize("level", list(QueryLevel))
@pytest.mark.parametrize("implicit", [True, False])
def test_every_level_encodes_with_pynetdicom(level: QueryLevel, implicit: bool) -> None:
    ds = build_identifier(
        level,
        unique_keys={STUDY_UID: "1.2.3"} if level is not QueryLevel.STUDY else {},
        matches=matches(("PatientName", "D*"), ("StudyDate", "-20200101"), level=level),
        return_keys=REQUIRED_RETURN_KEYS[level],
    )
    back = roundtrip(ds, implicit=implicit)
    assert back.QueryRetrieveLevel == level.value
    assert str(back.PatientName) == "D*"


def test_match_overrides_a_return_key_of_the_same_attribute() -> None:
    ds = build_identifier(
        QueryLevel.STUDY,
        matches=matches(("PatientID", "X1")),
        return_keys=[0x00100020],
    )
    assert ds.PatientID == "X1"


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("Rows", "512", 512),  # US
        ("TagAngleSecondAxis", "-7", -7),  # SS
        ("NumberOfStudyRecordsInInstance", "4294967295", 4294967295),  # UL
        ("ReferencePixelX0", "-70000", -70000),  # SL
        ("RecommendedDisplayFrameRateInFloat", "29.5", 29.5),  # FL
        ("EventTimeOffset", "-1.25e-3", -1.25e-3),  # FD
        ("SeriesNumber", "+7", 7),  # IS: sent as written, a valid IS
        ("SliceThickness", "2.50", 2.5),  # DS
        ("DimensionIndexPointer", "00280010", 0x00280010),  # AT
    ],
)
def test_numeric_match_values_are_encoded_in_their_vr(
    keyword: str, text: str, expected: float, implicit: bool
) -> None:
    ident = build_identifier(
        QueryLevel.IMAGE, matches=matches((keyword, text), level=QueryLevel.IMAGE)
    )
    back = roundtrip(ident, implicit=implicit)
    assert back[keyword].value == expected


def test_private_keys_are_sent_with_their_creator() -> None:
    query = parse_search(
        [("00090010", "Lunit"), ("00091001", "98.41"), ("includefield", "00091002")],
        level=QueryLevel.STUDY,
    )
    ident = build_identifier(QueryLevel.STUDY, matches=query.matches, return_keys=query.include)
    back = roundtrip(ident, implicit=False)
    assert back[0x00090010].VR == "LO" and back[0x00090010].value == "Lunit"
    assert back[0x00091001].VR == "UN" and back[0x00091001].value == b"98.41 "
    assert back[0x00091002].VR == "UN" and back[0x00091002].value in (b"", None)


def test_private_return_key_takes_the_dictionary_vr_of_its_creator() -> None:
    query = parse_search(
        [("00190010", "SIEMENS MR HEADER"), ("includefield", "0019100B")],
        level=QueryLevel.IMAGE,
    )
    ident = build_identifier(QueryLevel.IMAGE, matches=query.matches, return_keys=query.include)
    assert ident[0x0019100B].VR == "DS"
    assert roundtrip(ident, implicit=False)[0x00190010].value == "SIEMENS MR HEADER"
