"""QIDO-RS query parameter parsing (PS3.18 8.3.4): keys, values per VR, control parameters."""

from __future__ import annotations

import pytest

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.search import AttributePath, SearchQuery, parse_search, resolve_attribute
from app.errors import BadRequest

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_DATE = 0x00080020
STUDY_UID = 0x0020000D
REQUEST_ATTRIBUTES = 0x00400275
SPS_ID = 0x00400009


def parse(
    *pairs: tuple[str, str], level: QueryLevel = QueryLevel.STUDY, **kw: object
) -> SearchQuery:
    return parse_search(list(pairs), level=level, **kw)  # type: ignore[arg-type]


def only_match(query: SearchQuery) -> tuple[tuple[int, ...], str, tuple[str, ...]]:
    assert len(query.matches) == 1, query.matches
    m = query.matches[0]
    return m.path.tags, m.vr, m.values


# -- attribute IDs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PatientID", "00100020", "00100020 ", " PatientID"])
def test_keyword_and_hex_tag_name_the_same_attribute(name: str) -> None:
    assert only_match(parse((name, "123"))) == ((PATIENT_ID,), "LO", ("123",))


def test_lower_case_hex_tag_is_accepted() -> None:
    assert only_match(parse(("0020000d", "1.2.3"))) == ((STUDY_UID,), "UI", ("1.2.3",))


@pytest.mark.parametrize(
    "name",
    [
        "RequestAttributesSequence.ScheduledProcedureStepID",
        "00400275.00400009",
        "RequestAttributesSequence.00400009",
    ],
)
def test_sequence_dot_paths(name: str) -> None:
    tags, vr, values = only_match(parse((name, "SPS1"), level=QueryLevel.SERIES))
    assert tags == (REQUEST_ATTRIBUTES, SPS_ID)
    assert (vr, values) == ("SH", ("SPS1",))


def test_path_through_a_non_sequence_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="PatientName"):
        parse(("PatientName.PatientID", "x"))


def test_attribute_path_str_uses_keywords() -> None:
    path = resolve_attribute("00400275.00400009")
    assert path is not None
    assert str(path) == "RequestAttributesSequence.ScheduledProcedureStepID"
    assert (path.top, path.tag) == (REQUEST_ATTRIBUTES, SPS_ID)


@pytest.mark.parametrize("name", ["NotAKeyword", "PatientNmae", "foo", "callback", "_"])
def test_unknown_parameters_are_ignored_not_rejected(name: str) -> None:
    query = parse((name, "x"), ("PatientID", "1"))
    assert [m.path.tag for m in query.matches] == [PATIENT_ID]
    assert name in query.ignored


@pytest.mark.parametrize("name", ["accept", "charset", "Accept"])
def test_transaction_parameters_are_not_matches(name: str) -> None:
    query = parse((name, "application/dicom+json"))
    assert query.matches == ()
    assert query.ignored == ()


def test_private_tag_of_an_unknown_creator_is_UN() -> None:
    query = parse(("00090010", "Lunit"), ("00091010", "x"))
    keys = {m.path.tag: (m.vr, m.values) for m in query.matches}
    assert keys == {0x00090010: ("LO", ("Lunit",)), 0x00091010: ("UN", ("x",))}


def test_private_tag_takes_its_vr_from_the_private_dictionary() -> None:
    # (0019,xx08) of "SIEMENS MR HEADER" is CS; the creator may come after the element.
    query = parse(("00191008", "IMAGE NUM 4"), ("00190010", "SIEMENS MR HEADER"))
    keys = {m.path.tag: m.vr for m in query.matches}
    assert keys == {0x00190010: "LO", 0x00191008: "CS"}


def test_private_value_is_checked_against_the_dictionary_vr() -> None:
    # (0019,xx0B) of "SIEMENS MR HEADER" is DS.
    with pytest.raises(BadRequest, match="0019100B"):
        parse(("00190010", "SIEMENS MR HEADER"), ("0019100B", "fast"))


@pytest.mark.parametrize(
    "pairs",
    [
        [("00091001", "98.41")],
        [("00090010", ""), ("00091001", "98.41")],
        [("includefield", "00091001")],
        [("00090011", "Lunit"), ("00091001", "98.41")],  # the block of 0009,10xx is 0009,0010
    ],
)
def test_private_attribute_without_its_creator_is_bad_request(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest, match=r"00091001.*Private Creator 00090010"):
        parse(*pairs)


def test_private_includefield_with_its_creator() -> None:
    query = parse(("00090010", "Lunit"), ("includefield", "00091001"))
    assert query.include == (AttributePath((0x00091001,)),)


@pytest.mark.parametrize("name", ["00090000", "00090002", "0009000F"])
def test_reserved_private_elements_are_bad_request(name: str) -> None:
    with pytest.raises(BadRequest, match=name):
        parse((name, "x"))


# -- values per VR -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PatientName", "Doe*"),
        ("PatientName", "D?e^J*"),
        ("PatientID", "DEMO-*"),
        ("AccessionNumber", "A?C*"),
        ("ModalitiesInStudy", "C*"),
        ("StudyDescription", "*Chest*"),
    ],
)
def test_wildcards_allowed_for_text_vrs(name: str, value: str) -> None:
    assert only_match(parse((name, value)))[2] == (value,)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("StudyDate", "2019*"),
        ("StudyTime", "09?0"),
        ("StudyInstanceUID", "1.2.*"),
        ("SeriesNumber", "1*"),
        ("NumberOfStudyRelatedSeries", "?"),
    ],
)
def test_wildcards_rejected_for_other_vrs(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse((name, value), level=QueryLevel.SERIES)
    assert name in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("StudyDate", "20190314"),
        ("StudyDate", "20190101-20191231"),
        ("StudyDate", "-20200101"),
        ("StudyDate", "20200101-"),
        ("StudyDate", "20240229"),
        ("StudyTime", "09"),
        ("StudyTime", "0930"),
        ("StudyTime", "093015"),
        ("StudyTime", "093015.123456"),
        ("StudyTime", "0900-1000"),
        ("StudyTime", "-1000"),
        ("StudyTime", "235960"),
        ("AcquisitionDateTime", "20190314093015"),
        ("AcquisitionDateTime", "20190314093015.5+0100"),
        ("AcquisitionDateTime", "2019"),
        ("AcquisitionDateTime", "20190101-20191231"),
        ("AcquisitionDateTime", "20190101120000-0500-20190102"),
        ("AcquisitionDateTime", "-201901011200"),
    ],
)
def test_valid_date_time_values_and_ranges(name: str, value: str) -> None:
    assert only_match(parse((name, value), level=QueryLevel.IMAGE))[2] == (value,)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("StudyDate", "2019"),
        ("StudyDate", "2019-03-14"),
        ("StudyDate", "20191332"),
        ("StudyDate", "20190230"),
        ("StudyDate", "20230229"),
        ("StudyDate", "-"),
        ("StudyDate", "20190101-20191232"),
        ("StudyDate", "20190101--20191231"),
        ("StudyDate", "yesterday"),
        ("StudyDate", "20190314\\20190315"),
        ("StudyTime", "2500"),
        ("StudyTime", "0960"),
        ("StudyTime", "09:30"),
        ("StudyTime", "093"),
        ("StudyTime", "0900-2400"),
        ("AcquisitionDateTime", "20191301"),
        ("AcquisitionDateTime", "2019031425"),
        ("AcquisitionDateTime", "20190314+2500"),
    ],
)
def test_bad_dates_and_times_are_bad_request_naming_the_parameter(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse((name, value), level=QueryLevel.IMAGE)
    assert info.value.http_status == 400
    assert name in info.value.message


@pytest.mark.parametrize(
    "value", ["1.2.3,1.2.4", "1.2.3\\1.2.4", "1.2.3, 1.2.4", "1.2.3,1.2.4\\1.2.5"]
)
def test_uid_lists_with_commas_or_backslashes(value: str) -> None:
    values = only_match(parse(("StudyInstanceUID", value)))[2]
    assert values[:2] == ("1.2.3", "1.2.4")
    assert all("," not in v and "\\" not in v for v in values)


@pytest.mark.parametrize("value", ["1.2.3,", "1.2.x", "1..2", ",1.2.3", "1.2.3,abc"])
def test_bad_uid_in_list_is_bad_request(value: str) -> None:
    with pytest.raises(BadRequest, match="StudyInstanceUID"):
        parse(("StudyInstanceUID", value))


def test_repeated_uid_parameter_is_one_uid_list() -> None:
    query = parse(("StudyInstanceUID", "1.2.3"), ("StudyInstanceUID", "1.2.4,1.2.3"))
    assert only_match(query)[2] == ("1.2.3", "1.2.4")


def test_repeated_attribute_with_same_value_is_accepted() -> None:
    assert only_match(parse(("PatientID", "7"), ("00100020", "7")))[2] == ("7",)


def test_repeated_attribute_with_different_values_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="PatientID"):
        parse(("PatientID", "7"), ("PatientID", "8"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SeriesNumber", "abc"),
        ("SeriesNumber", "1.5"),
        ("SliceThickness", "thick"),
        ("Rows", "-1"),
        ("Rows", "65536"),  # US is 16 bits (PS3.5 Table 6.2-1)
        ("Rows", "1" * 5000),  # beyond Python's int-string limit: still a 400
        ("TagAngleSecondAxis", "32768"),  # SS
        ("TagAngleSecondAxis", "-32769"),
        ("NumberOfStudyRecordsInInstance", "4294967296"),  # UL
        ("ReferencePixelX0", "2147483648"),  # SL
        ("FileOffsetInContainer", "18446744073709551616"),  # UV
        ("RecommendedDisplayFrameRateInFloat", "1e39"),  # beyond FL
        ("EventTimeOffset", "1e309"),  # beyond FD
        ("EventTimeOffset", "nan"),
        ("SeriesNumber", "2147483648"),  # IS holds a 32-bit integer
        ("SliceThickness", "1.0000000000000001"),  # DS: at most 16 characters
        ("DimensionIndexPointer", "Rows"),  # AT: 8 hex digits
        ("RecordKey", "00"),  # OB: universal matching only
    ],
)
def test_numbers_are_checked(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name):
        parse((name, value), level=QueryLevel.IMAGE)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SeriesNumber", "3"),
        ("SeriesNumber", "-3"),
        ("SliceThickness", "2.5"),
        ("SliceThickness", "1e-3"),
        ("Rows", "512"),
        ("Rows", "65535"),
        ("TagAngleSecondAxis", "-32768"),
        ("NumberOfStudyRecordsInInstance", "4294967295"),
        ("RecommendedDisplayFrameRateInFloat", "29.97"),
        ("EventTimeOffset", "-1.5e300"),
        ("SeriesNumber", "-2147483648"),
        ("DimensionIndexPointer", "00280010"),
    ],
)
def test_valid_numbers(name: str, value: str) -> None:
    assert only_match(parse((name, value), level=QueryLevel.IMAGE))[2] == (value,)


def test_sequence_with_a_value_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="RequestAttributesSequence"):
        parse(("RequestAttributesSequence", "x"), level=QueryLevel.SERIES)


def test_empty_value_is_universal_matching() -> None:
    query = parse(("PatientName", ""))
    assert query.matches[0].is_universal


@pytest.mark.parametrize("value", ["山田^太郎", "Müller^Jürgen", "王*", "やまだ?たろう"])
def test_non_ascii_values_are_kept_exactly(value: str) -> None:
    assert only_match(parse(("PatientName", value)))[2] == (value,)


# -- includefield ---------------------------------------------------------------------------------


def test_includefield_comma_list_and_repeats_are_merged_without_duplicates() -> None:
    query = parse(
        ("includefield", "PatientAge,00101030"),
        ("includefield", "PatientAge"),
        ("includefield", " StudyDescription , "),
    )
    assert [p.tag for p in query.include] == [0x00101010, 0x00101030, 0x00081030]
    assert not query.include_all


@pytest.mark.parametrize("value", ["all", "ALL", "All"])
def test_includefield_all(value: str) -> None:
    query = parse(("includefield", value))
    assert query.include_all
    assert query.include == ()


def test_includefield_unknown_keyword_is_ignored() -> None:
    query = parse(("includefield", "NoSuchKeyword,PatientAge"))
    assert [p.tag for p in query.include] == [0x00101010]
    assert "NoSuchKeyword" in query.ignored


def test_includefield_sequence_path() -> None:
    query = parse(("includefield", "RequestAttributesSequence.RequestedProcedureID"))
    assert query.include == (AttributePath((REQUEST_ATTRIBUTES, 0x00401001)),)


def test_includefield_parameter_name_is_case_insensitive() -> None:
    assert [p.tag for p in parse(("IncludeField", "PatientAge")).include] == [0x00101010]


# -- limit, offset, flags ------------------------------------------------------------------------


def test_defaults() -> None:
    query = parse(default_limit=50)
    assert (query.limit, query.offset, query.fuzzy) == (50, 0, False)
    assert query.level is QueryLevel.STUDY


def test_limit_and_offset() -> None:
    query = parse(("limit", "10"), ("offset", "20"))
    assert (query.limit, query.offset) == (10, 20)


def test_limit_zero_is_allowed() -> None:
    assert parse(("limit", "0")).limit == 0


def test_limit_is_capped_at_max_limit() -> None:
    assert parse(("limit", "999999"), max_limit=500).limit == 500


@pytest.mark.parametrize("param", ["limit", "offset"])
@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "1e3", "0x10"])
def test_bad_limit_or_offset_is_bad_request_naming_it(param: str, value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse((param, value))
    assert param in info.value.message


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("TRUE", True), ("false", False), ("False", False)]
)
def test_fuzzymatching(value: str, expected: bool) -> None:
    assert parse(("fuzzymatching", value)).fuzzy is expected


def test_bad_fuzzymatching_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="fuzzymatching"):
        parse(("fuzzymatching", "maybe"))


def test_empty_and_multiple_value_matching_flags() -> None:
    query = parse(("emptyvaluematching", "true"), ("multiplevaluematching", "true"))
    assert query.empty_value_matching and query.multiple_value_matching


def test_path_uids() -> None:
    query = parse(level=QueryLevel.IMAGE, study_uid="1.2.3", series_uid="1.2.3.4")
    assert query.path_uids == {STUDY_UID: "1.2.3", 0x0020000E: "1.2.3.4"}


@pytest.mark.parametrize(("name", "value"), [
    ("ModalitiesInStudy", "名前"), ("Modality", "CTé"), ("SeriesNumber", "１２"),
    ("StudyDate", "２０２０0101"), ("StudyInstanceUID", "1.2.３"), ("AccessionNumber", "a\x00b"),
    ("PatientName", "Doe\r\nEvil"), ("PatientID", "x\x7f"), ("StudyDescription", "a\tb"),
])
def test_characters_a_vr_cannot_hold_are_bad_request(name: str, value: str) -> None:
    """Non-ASCII in a default-repertoire VR (CS, IS, DA, UI...) or a control character: a 400
    naming the parameter, not a C-FIND identifier that cannot be encoded (a 502)."""
    with pytest.raises(BadRequest) as info:
        parse_search([(name, value)], level=QueryLevel.STUDY)
    assert name in info.value.message


@pytest.mark.parametrize(("name", "value"), [
    ("PatientName", "山田^太郎"), ("PatientName", "Müller*"), ("StudyDescription", "Tête"),
    ("PatientName", "\x1b$B;3ED\x1b(B"),  # ISO 2022 escape sequences are characters too
])
def test_extended_characters_in_text_vrs_are_fine(name: str, value: str) -> None:
    query = parse_search([(name, value)], level=QueryLevel.STUDY)
    assert query.matches[0].values == (value,)


def test_huge_numbers_are_bad_request_before_conversion() -> None:
    for name in ("limit", "offset", "SeriesNumber", "NumberOfStudyRelatedInstances"):
        with pytest.raises(BadRequest) as info:
            parse_search([(name, "9" * 5000)], level=QueryLevel.SERIES)
        assert name in info.value.message
