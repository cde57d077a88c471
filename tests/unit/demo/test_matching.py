"""C-FIND matching rules (PS3.4 C.2.2.2) and the demo information model, without networking."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from app.demo.index import IdentifierError, Level, QueryIndex, answer, level_of
from app.demo.matching import answer_element, has_non_ascii, is_universal, match_element
from app.demo.samples import generate_sample_studies

# Wildcards and legacy forms are deliberately invalid values; pydicom warns on assignment.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def _elem(keyword: str, value: Any) -> DataElement:
    ds = Dataset()
    setattr(ds, keyword, value)
    return ds[keyword]


@pytest.mark.parametrize(
    ("keyword", "query", "value", "expected"),
    [
        ("PatientID", "ABC", "ABC", True),
        ("PatientID", "ABC", "ABCD", False),
        ("PatientID", "A?C", "ABC", True),
        ("PatientID", "A*", "ABC", True),
        ("PatientID", "a*", "ABC", False),  # case-sensitive outside PN
        ("PatientID", "A.C", "ABC", False),  # regex characters are literal
        ("PatientName", "doe^john", "Doe^John", True),
        ("PatientName", "DOE*", "Doe^John", True),
        ("PatientName", "Doe^John^^^", "Doe^John", True),
        ("PatientName", "山田*", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),
        ("PatientName", "やまだ*", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),
        ("PatientName", "=山田*", "Yamada^Tarou=山田^太郎", True),
        ("PatientName", "Tanaka*=山田*", "Yamada^Tarou=山田^太郎", False),
        ("StudyDate", "20200101-20201231", "20200602", True),
        ("StudyDate", "20200101-20201231", "20210101", False),
        ("StudyDate", "-20200602", "20200602", True),
        ("StudyDate", "20200603-", "20200602", False),
        ("StudyDate", "20200602", "20200602", True),
        ("StudyTime", "0800-0930", "093015", True),  # upper bound 0930 covers 09:30:xx
        ("StudyTime", "0800-0929", "093015", False),
        ("StudyTime", "09", "093015.25", True),
        ("StudyTime", "101500", "10:15:00", True),  # ACR-NEMA style colons
        ("AcquisitionDateTime", "20200101-20200102", "20200102235959", True),
        ("AcquisitionDateTime", "20200101120000-", "20200101115959", False),
        ("AcquisitionDateTime", "20200101-20200102", "20200103000000+0100", False),
        ("SeriesNumber", "2", "2", True),
        ("SeriesNumber", "02", "2", True),
        ("SeriesNumber", "3", "2", False),
        ("StudyInstanceUID", ["1.2.3", "1.2.4"], "1.2.4", True),
        ("StudyInstanceUID", ["1.2.3", "1.2.4"], "1.2.5", False),
        ("StudyInstanceUID", "1.2.*", "1.2.3", False),  # no wildcards for UI
        ("ModalitiesInStudy", "MR", ["CT", "MR"], True),
        ("ModalitiesInStudy", ["US", "CR"], ["CT", "MR"], False),
    ],
)
def test_match_element(keyword: str, query: Any, value: Any, expected: bool) -> None:
    assert match_element(_elem(keyword, query), _elem(keyword, value)) is expected


def test_missing_value_matches_only_universal_keys() -> None:
    assert match_element(_elem("PatientID", ""), None)
    assert match_element(_elem("PatientID", "*"), None)
    assert not match_element(_elem("PatientID", "X"), None)
    assert not match_element(_elem("PatientID", "X"), _elem("PatientID", ""))


def test_universal_detection() -> None:
    assert is_universal(_elem("PatientName", ""))
    assert is_universal(_elem("PatientName", "*"))
    assert not is_universal(_elem("PatientName", "D*"))
    assert not is_universal(_elem("StudyInstanceUID", "1.2"))
    empty_item = Dataset()
    empty_item.ScheduledProcedureStepID = ""
    assert is_universal(_elem("RequestAttributesSequence", []))
    assert is_universal(_elem("RequestAttributesSequence", [empty_item]))


def _request_sequence(**keys: str) -> DataElement:
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return _elem("RequestAttributesSequence", [item])


def test_sequence_matching_uses_the_item_keys() -> None:
    data = _request_sequence(RequestedProcedureID="RP1", ScheduledProcedureStepID="S1")
    assert match_element(_request_sequence(ScheduledProcedureStepID="S1"), data)
    assert match_element(_request_sequence(ScheduledProcedureStepID="S*"), data)
    assert not match_element(_request_sequence(ScheduledProcedureStepID="S2"), data)
    assert not match_element(_request_sequence(ScheduledProcedureStepID="S1"), None)


def test_sequence_answer_projects_the_requested_item_keys() -> None:
    data = _request_sequence(RequestedProcedureID="RP1", ScheduledProcedureStepID="S1")
    projected = answer_element(_request_sequence(RequestedProcedureID=""), data)
    assert [e.keyword for e in projected.value[0]] == ["RequestedProcedureID"]
    whole = answer_element(_elem("RequestAttributesSequence", []), data)
    assert len(whole.value[0]) == 2
    missing = answer_element(_elem("RequestAttributesSequence", []), None)
    assert missing.VR == "SQ" and len(missing.value) == 0


def test_answer_element_empty_when_absent() -> None:
    elem = answer_element(_elem("StudyDescription", ""), None)
    assert elem.tag == Tag("StudyDescription") and elem.value in (None, "")


def test_has_non_ascii() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    assert not has_non_ascii(ds)
    ds.PatientName = "Müller"
    assert has_non_ascii(ds)


def test_levels_of_attributes() -> None:
    assert level_of(Tag("PatientName")) is Level.PATIENT
    assert level_of(Tag("StudyDate")) is Level.STUDY
    assert level_of(Tag("Modality")) is Level.SERIES
    assert level_of(Tag("Rows")) is Level.IMAGE


@pytest.fixture(scope="module")
def index() -> QueryIndex:
    return QueryIndex(generate_sample_studies(), retrieve_ae_title="DEMO_PACS")


def test_lower_level_keys_are_not_matched_and_return_empty(index: QueryIndex) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.Modality = "XA"  # a SERIES key at STUDY level: not used for matching
    query.RetrieveAETitle = ""
    matches = list(index.find(Level.STUDY, query))
    assert len(matches) == 8
    response = answer(matches[0], query, Level.STUDY)
    assert response.Modality in (None, "")
    assert response.RetrieveAETitle == "DEMO_PACS"
    assert response.QueryRetrieveLevel == "STUDY"


def test_retrieve_requires_the_unique_key(index: QueryIndex) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.SeriesInstanceUID = ""
    with pytest.raises(IdentifierError):
        index.retrieve(Level.SERIES, query)


def test_patient_level_retrieve_returns_all_studies_of_the_patient(index: QueryIndex) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "DEMO-0001"
    instances = index.retrieve(Level.PATIENT, query)
    assert len(instances) == 21
    assert len({ds.StudyInstanceUID for ds in instances}) == 2
