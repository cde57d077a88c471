"""Unit tests for app.dicomweb.stow: what a STOW-RS part must be, the Store Instances Response
Module and the HTTP status of a store."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from app.dicomweb.dicomjson import dataset_to_json
from app.dicomweb.stow import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    FailedInstance,
    RejectedPart,
    StoredInstance,
    inspect_part,
    part_uids,
    store_response,
    store_status,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
BASE = "https://gw.example/dicomweb"


def instance(syntax: str = ExplicitVRLittleEndian, **changes: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = SOP
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientName = "Doe^John"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00\x01" * 4
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_a_good_part_is_inspected_in_place(syntax: str) -> None:
    data = part10(instance(syntax))
    found = inspect_part(data, "application/dicom; transfer-syntax=" + syntax, None)
    assert (found.sop_class, found.sop_instance, found.study, found.series) == (
        CT, SOP, STUDY, SERIES)
    assert found.transfer_syntax == syntax
    assert found.data is data
    if syntax != DeflatedExplicitVRLittleEndian:  # the first element: (0008,0016)
        assert data[found.dataset_offset:found.dataset_offset + 4] == b"\x08\x00\x16\x00"
    assert inspect_part(data, None, STUDY).sop_instance == SOP  # no Content-Type: the multipart's


def _rejected(data: bytes, content_type: str | None = "application/dicom",
              study: str | None = None) -> FailedInstance:
    with pytest.raises(RejectedPart) as caught:
        inspect_part(data, content_type, study)
    return caught.value.failure


def test_a_study_the_url_does_not_name_is_a900() -> None:
    failure = _rejected(part10(instance()), study="1.2.999")
    assert (failure.sop_class, failure.sop_instance, failure.reason) == (CT, SOP, DOES_NOT_MATCH)
    assert "1.2.999" in failure.explanation and not failure.bad_syntax


def test_not_part10_is_bad_syntax_without_uids() -> None:
    failure = _rejected(b"GIF89a" + b"\x00" * 300)
    assert (failure.sop_class, failure.sop_instance) == (None, None)
    assert failure.reason == CANNOT_UNDERSTAND and failure.bad_syntax


def test_another_media_type_is_refused_with_what_can_be_read() -> None:
    failure = _rejected(part10(instance()), "application/octet-stream")
    assert failure.reason == CANNOT_UNDERSTAND and failure.bad_syntax
    assert (failure.sop_class, failure.sop_instance) == (CT, SOP)


def test_a_truncated_data_set_is_refused() -> None:
    data = part10(instance())
    failure = _rejected(data[:-3])
    assert failure.reason == CANNOT_UNDERSTAND and "malformed" in failure.explanation
    assert failure.sop_instance == SOP  # from the File Meta


def test_file_meta_and_data_set_must_agree() -> None:
    data = part10(instance())
    # the first occurrence is the File Meta's (pydicom would write the data set's UID there)
    failure = _rejected(data.replace(b"1.2.3.4.5\x00", b"1.2.3.4.6\x00", 1))
    assert failure.reason == DOES_NOT_MATCH and failure.sop_instance == SOP


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "SOPClassUID"])
def test_sop_uids_are_required(missing: str) -> None:
    failure = _rejected(part10(instance(**{missing: None})))
    assert failure.reason == CANNOT_UNDERSTAND


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_study_and_series_uids_are_required(missing: str) -> None:
    assert _rejected(part10(instance(**{missing: None}))).reason == DOES_NOT_MATCH


def test_part_uids_of_a_head() -> None:
    data = part10(instance())
    head = inspect_part(data, None, None).dataset_offset + 20
    assert part_uids(data[:head]) == (CT, SOP)  # the data set is cut: the File Meta says
    assert part_uids(b"junk") == (None, None)


# -- response -----------------------------------------------------------------------------------

STORED = StoredInstance(CT, SOP, STUDY, SERIES)
WARNED = StoredInstance(CT, "1.2.3.4.6", STUDY, SERIES, warning=0xB000)
REFUSED = FailedInstance(CT, "1.2.3.4.7", 0xA700, "out of resources")
GARBAGE = FailedInstance(None, None, CANNOT_UNDERSTAND, "not DICOM", bad_syntax=True)


def test_response_module() -> None:
    module = dataset_to_json(store_response([STORED, WARNED], [REFUSED, GARBAGE], BASE, None))
    assert module["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/{STUDY}"]}
    first, second = module["00081199"]["Value"]
    assert first == {
        "00081150": {"vr": "UI", "Value": [CT]},
        "00081155": {"vr": "UI", "Value": [SOP]},
        "00081190": {"vr": "UR", "Value": [
            f"{BASE}/studies/{STUDY}/series/{SERIES}/instances/{SOP}"]},
    }
    assert second["00081196"] == {"vr": "US", "Value": [0xB000]}
    assert module["00081198"]["Value"] == [{
        "00081150": {"vr": "UI", "Value": [CT]},
        "00081155": {"vr": "UI", "Value": ["1.2.3.4.7"]},
        "00081197": {"vr": "US", "Value": [0xA700]},
    }]
    assert module["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0xC000]}}]


def test_study_retrieve_url_is_empty_without_one_study() -> None:
    other = StoredInstance(CT, "1.2.9.9", "1.2.9", "1.2.9.1")
    assert dataset_to_json(store_response([STORED, other], [], BASE, None))["00081190"] == {
        "vr": "UR"}
    assert dataset_to_json(store_response([], [REFUSED], BASE, None))["00081190"] == {"vr": "UR"}
    named = dataset_to_json(store_response([], [REFUSED], BASE, "1.2.5"))
    assert named["00081190"]["Value"] == [f"{BASE}/studies/1.2.5"]
    assert "00081199" not in named and "0008119A" not in named


@pytest.mark.parametrize(("stored", "failed", "status"), [
    ([STORED], [], 200),
    ([STORED, WARNED], [], 202),
    ([STORED], [REFUSED], 202),
    ([STORED], [GARBAGE], 202),
    ([], [REFUSED], 409),
    ([], [REFUSED, GARBAGE], 409),
    ([], [GARBAGE], 400),
    ([], [], 400),
])
def test_http_status(stored: list[StoredInstance], failed: list[FailedInstance],
                     status: int) -> None:
    assert store_status(stored, failed) == status


def test_a_file_meta_without_preamble_is_tolerated() -> None:
    """What dicomweb-client sends: pydicom's dcmwrite of an in-memory data set writes the File
    Meta group without the preamble and "DICM" (PS3.10 7.1 wants them)."""
    data = part10(instance())[128 + 4:]
    found = inspect_part(data, None, STUDY)
    assert (found.sop_instance, found.prefixed) == (SOP, False)
    assert data[found.dataset_offset:found.dataset_offset + 4] == b"\x08\x00\x16\x00"
    assert part_uids(data) == (CT, SOP)
    assert inspect_part(part10(instance()), None, STUDY).prefixed
