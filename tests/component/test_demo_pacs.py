"""The demo PACS over real DICOM networking: a pynetdicom SCU against DemoPacs on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association

from app.demo import DemoPacs, generate_many_studies, generate_sample_studies
from app.dicomweb.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

pytestmark = pytest.mark.timeout(30)

FIND = StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
SCU_AE_TITLE = "TEST_SCU"

SAMPLES = generate_sample_studies()


def _first(keyword: str, value: str) -> Dataset:
    return next(ds for ds in SAMPLES if str(ds.get(keyword)) == value)


CT_STUDY = _first("PatientName", "Doe^John").StudyInstanceUID
CT_SERIES_1 = next(
    ds.SeriesInstanceUID
    for ds in SAMPLES
    if ds.StudyInstanceUID == CT_STUDY and ds.SeriesNumber == 1
)


@pytest.fixture(scope="module")
def pacs() -> Iterator[DemoPacs]:
    server = DemoPacs(SAMPLES)
    server.start()
    yield server
    server.stop()


def _scu(
    pacs: DemoPacs,
    contexts: list[Any],
    *,
    roles: list[Any] | None = None,
    handlers: list[Any] | None = None,
) -> Association:
    ae = AE(ae_title=SCU_AE_TITLE)
    ae.acse_timeout = 5
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    ae.connection_timeout = 5
    assoc = ae.associate(
        "127.0.0.1",
        pacs.port,
        contexts=contexts,
        ae_title=pacs.ae_title,
        ext_neg=roles,
        evt_handlers=handlers,
    )
    assert assoc.is_established
    return assoc


def _query(level: str, charset: str | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _find(
    pacs: DemoPacs, query: Dataset, model: UID = FIND, syntax: str = ExplicitVRLittleEndian
) -> tuple[int, list[Dataset]]:
    assoc = _scu(pacs, [build_context(model, [syntax])])
    try:
        results: list[Dataset] = []
        final = -1
        for status, identifier in assoc.send_c_find(query, model):
            assert status, "no response from the demo PACS"
            if status.Status in (0xFF00, 0xFF01):
                assert identifier is not None
                results.append(identifier)
            else:
                final = status.Status
        return final, results
    finally:
        assoc.release()


def _study_uids(results: list[Dataset]) -> list[str]:
    return [str(r.StudyInstanceUID) for r in results]


def _expected_studies(predicate: Any) -> list[str]:
    studies = {ds.StudyInstanceUID: ds for ds in SAMPLES if predicate(ds)}
    ordered = sorted(studies.values(), key=lambda d: (d.StudyDate, d.StudyTime, d.StudyInstanceUID))
    return [str(d.StudyInstanceUID) for d in ordered]


# --- verification --------------------------------------------------------------------------


def test_echo_succeeds_and_is_counted(pacs: DemoPacs) -> None:
    before = pacs.operation_counts["C-ECHO"]
    assoc = _scu(pacs, [build_context(Verification)])
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000
    assert pacs.operation_counts["C-ECHO"] == before + 1


# --- C-FIND, study level ---------------------------------------------------------------------


def test_study_find_returns_all_studies_in_date_order_with_computed_keys(pacs: DemoPacs) -> None:
    query = _query(
        "STUDY",
        StudyInstanceUID="",
        StudyDate="",
        PatientName="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        SOPClassesInStudy="",
    )
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert _study_uids(results) == _expected_studies(lambda ds: True)
    assert len(results) == 8
    dates = [r.StudyDate for r in results]
    assert dates == sorted(dates)
    ct = next(r for r in results if r.StudyInstanceUID == CT_STUDY)
    assert ct.NumberOfStudyRelatedSeries == 2
    assert ct.NumberOfStudyRelatedInstances == 20
    assert ct.ModalitiesInStudy == "CT"
    assert ct.SOPClassesInStudy == CTImageStorage
    # Only the requested keys come back, plus the level.
    requested = {e.keyword for e in query} | {"QueryRetrieveLevel"}
    for r in results:
        assert {e.keyword for e in r} - {"SpecificCharacterSet"} == requested


def test_study_find_returns_unknown_and_absent_keys_empty(pacs: DemoPacs) -> None:
    query = _query(
        "STUDY", StudyInstanceUID=CT_STUDY, AdmittingDiagnosesDescription="", PatientWeight=""
    )
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert len(results) == 1
    assert "AdmittingDiagnosesDescription" in results[0]
    assert results[0].AdmittingDiagnosesDescription in (None, "")
    assert results[0].PatientWeight is None


@pytest.mark.parametrize(
    ("keys", "predicate"),
    [
        ({"PatientID": "DEMO-0002"}, lambda ds: ds.PatientID == "DEMO-0002"),
        ({"PatientName": "Doe*"}, lambda ds: str(ds.PatientName).startswith("Doe")),
        ({"PatientName": "dOE^j*"}, lambda ds: str(ds.PatientName).startswith("Doe^J")),
        ({"PatientName": "Smith^Ann?"}, lambda ds: str(ds.PatientName) == "Smith^Anna"),
        ({"PatientID": "DEMO-000?"}, lambda ds: True),
        ({"PatientID": "DEMO-0*1"}, lambda ds: ds.PatientID == "DEMO-0001"),
        ({"AccessionNumber": "ACC000003"}, lambda ds: ds.StudyDescription == "MR Brain"),
        ({"StudyDate": "20190101-20201231"}, lambda ds: "2019" <= ds.StudyDate[:4] <= "2020"),
        ({"StudyDate": "-20181231"}, lambda ds: ds.StudyDate < "20190101"),
        ({"StudyDate": "20230101-"}, lambda ds: ds.StudyDate >= "20230101"),
        ({"StudyDate": "20220505"}, lambda ds: ds.StudyDate == "20220505"),
        ({"StudyTime": "080000-093100"}, lambda ds: "080000" <= ds.StudyTime <= "093100"),
        ({"StudyTime": "14"}, lambda ds: ds.StudyTime.startswith("14")),
        ({"ModalitiesInStudy": "MR"}, lambda ds: ds.Modality == "MR"),
        ({"ModalitiesInStudy": ["CR", "US"]}, lambda ds: ds.Modality in ("CR", "US")),
        ({"StudyDescription": "*Chest*"}, lambda ds: "Chest" in ds.StudyDescription),
        ({"StudyDescription": "*chest*"}, lambda ds: False),  # case-sensitive outside PN
        ({"PatientName": "Nobody*"}, lambda ds: False),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_study_find_matching(pacs: DemoPacs, keys: dict[str, Any], predicate: Any) -> None:
    final, results = _find(pacs, _query("STUDY", StudyInstanceUID="", **keys))
    assert final == 0x0000
    expected = _expected_studies(predicate)
    assert _study_uids(results) == expected


def test_study_find_uid_list_matching(pacs: DemoPacs) -> None:
    wanted = _expected_studies(lambda ds: ds.PatientID in ("DEMO-0003", "DEMO-0005"))
    assert len(wanted) == 3
    final, results = _find(pacs, _query("STUDY", StudyInstanceUID=[*wanted, "1.2.3.4.5"]))
    assert final == 0x0000
    assert _study_uids(results) == wanted


def test_wildcard_alone_equals_universal(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("STUDY", StudyInstanceUID="", AccessionNumber="*"))
    assert final == 0x0000
    assert len(results) == 8
    assert all(r.AccessionNumber for r in results)


# --- character sets ----------------------------------------------------------------------------


def test_non_ascii_query_in_utf8_matches_latin1_data(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("STUDY", "ISO_IR 192", PatientName="müller*"))
    assert final == 0x0000
    assert len(results) == 1
    assert results[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(results[0].PatientName) == "Müller^Jürgen"


def test_latin1_query_matches(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("STUDY", "ISO_IR 100", PatientName="Müller^Jürgen"))
    assert final == 0x0000
    assert [str(r.PatientName) for r in results] == ["Müller^Jürgen"]


def test_ideographic_query_matches_chinese_name(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("STUDY", "ISO_IR 192", PatientName="王^小東"))
    assert final == 0x0000
    assert len(results) == 1
    assert results[0].SpecificCharacterSet == "ISO_IR 192"
    name = results[0].PatientName
    assert str(name) == "Wang^XiaoDong=王^小東"
    assert name.ideographic == "王^小東"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_japanese_name_answered_in_iso_2022_and_decoded_exactly(
    pacs: DemoPacs, syntax: str
) -> None:
    query = _query("STUDY", "ISO_IR 192", PatientName="山田*", PatientID="", StudyDescription="")
    final, results = _find(pacs, query, syntax=syntax)
    assert final == 0x0000
    assert len(results) == 1
    answer = results[0]
    assert list(answer.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(answer.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert answer.PatientName.phonetic == "やまだ^たろう"
    assert answer.PatientID == "DEMO-0006"


def test_component_group_query_matches_by_group(pacs: DemoPacs) -> None:
    query = _query("STUDY", "ISO_IR 192", PatientName="Yamada*=山田*")
    assert len(_find(pacs, query)[1]) == 1
    query = _query("STUDY", "ISO_IR 192", PatientName="Yamada*=王*")
    assert _find(pacs, query)[1] == []


def test_ascii_answers_carry_no_character_set(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("STUDY", PatientName="Doe^Jane"))
    assert final == 0x0000
    assert len(results) == 1
    assert "SpecificCharacterSet" not in results[0]


# --- C-FIND, series, image and patient levels -------------------------------------------------


def test_series_find_within_study(pacs: DemoPacs) -> None:
    query = _query(
        "SERIES",
        StudyInstanceUID=CT_STUDY,
        SeriesInstanceUID="",
        SeriesNumber="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
        SeriesDescription="",
    )
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert [int(r.SeriesNumber) for r in results] == [1, 2]
    assert all(r.NumberOfSeriesRelatedInstances == 10 for r in results)
    assert all(r.Modality == "CT" for r in results)
    assert results[0].SeriesInstanceUID == CT_SERIES_1


def test_series_find_by_modality_and_sequence_item(pacs: DemoPacs) -> None:
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS-S0001-2"
    item.RequestedProcedureID = ""
    query = _query("SERIES", SeriesInstanceUID="", Modality="CT", RequestAttributesSequence=[item])
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert len(results) == 1
    assert results[0].SeriesInstanceUID != CT_SERIES_1
    returned = results[0].RequestAttributesSequence[0]
    assert returned.ScheduledProcedureStepID == "SPS-S0001-2"
    assert returned.RequestedProcedureID == "RP-S0001"


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # pydicom flags wildcards in CS
def test_series_find_modality_wildcard_across_studies(pacs: DemoPacs) -> None:
    final, results = _find(pacs, _query("SERIES", SeriesInstanceUID="", Modality="?R"))
    assert final == 0x0000
    assert sorted(str(r.Modality) for r in results) == ["CR", "CR", "MR", "MR"]


def test_image_find_returns_instances_in_instance_number_order(pacs: DemoPacs) -> None:
    query = _query(
        "IMAGE",
        StudyInstanceUID=CT_STUDY,
        SeriesInstanceUID=CT_SERIES_1,
        SOPInstanceUID="",
        SOPClassUID="",
        InstanceNumber="",
        Rows=None,
    )
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert [int(r.InstanceNumber) for r in results] == list(range(1, 11))
    assert all(r.SOPClassUID == CTImageStorage and r.Rows == 64 for r in results)


def test_image_find_multiframe_by_number_of_frames(pacs: DemoPacs) -> None:
    query = _query("IMAGE", SOPInstanceUID="", SOPClassUID="", NumberOfFrames="5")
    final, results = _find(pacs, query)
    assert final == 0x0000
    assert len(results) == 1
    assert results[0].SOPClassUID == UltrasoundMultiFrameImageStorage


def test_patient_root_patient_level(pacs: DemoPacs) -> None:
    query = _query(
        "PATIENT",
        PatientName="Doe*",
        PatientID="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
    )
    final, results = _find(pacs, query, model=PATIENT_FIND)
    assert final == 0x0000
    assert [str(r.PatientName) for r in results] == ["Doe^John", "Doe^Jane"]
    assert [int(r.NumberOfPatientRelatedStudies) for r in results] == [2, 1]
    assert [int(r.NumberOfPatientRelatedInstances) for r in results] == [21, 4]


def test_patient_root_study_level(pacs: DemoPacs) -> None:
    query = _query("STUDY", PatientID="DEMO-0001", StudyInstanceUID="", StudyDate="")
    final, results = _find(pacs, query, model=PATIENT_FIND)
    assert final == 0x0000
    assert [r.StudyDate for r in results] == ["20190314", "20240109"]


@pytest.mark.parametrize(
    ("model", "level"), [(FIND, None), (FIND, "INSTANCE"), (FIND, "PATIENT"), (PATIENT_FIND, "")]
)
def test_invalid_query_level_is_refused(pacs: DemoPacs, model: UID, level: str | None) -> None:
    query = Dataset()
    if level is not None:
        query.QueryRetrieveLevel = level
    query.PatientID = ""
    final, results = _find(pacs, query, model=model)
    assert final == 0xA900
    assert results == []


# --- C-CANCEL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cancel_after", [0, 1])
def test_find_cancel_stops_the_matches(cancel_after: int) -> None:
    # cancel_after=0: the C-CANCEL follows the C-FIND-RQ at once and can reach the SCP before
    # the service starts; 1: it is sent after the first pending response.
    total = 100
    # 10 ms per match: the SCP cannot finish before the cancel arrives, even on a busy machine.
    with DemoPacs(generate_many_studies(total), response_delay=0.01) as many:
        assoc = _scu(many, [build_context(FIND)])
        try:
            received, final = 0, -1
            query = _query("STUDY", StudyInstanceUID="", PatientName="")
            responses = assoc.send_c_find(query, FIND, msg_id=7)
            if cancel_after == 0:
                assoc.send_c_cancel(7, query_model=FIND)
            for status, _ in responses:
                assert status, "no response from the demo PACS"
                if status.Status == 0xFF00:
                    received += 1
                    if received == cancel_after:
                        assoc.send_c_cancel(7, query_model=FIND)
                else:
                    final = status.Status
            # The association is still usable, and a new request with the same Message ID
            # is not affected by the earlier cancel.
            assert many.operation_counts["C-FIND"] == 1
            many.response_delay = 0.0  # the second query runs at full speed
            again = [s.Status for s, _ in assoc.send_c_find(query, FIND, msg_id=7)]
        finally:
            assoc.release()
        assert many.operation_counts["C-FIND"] == 2
    assert final == 0xFE00, f"not cancelled after {received} matches"
    assert cancel_after <= received < total
    assert again.count(0xFF00) == total
    assert again[-1] == 0x0000


def test_many_studies_are_all_found_in_stable_order() -> None:
    with DemoPacs(generate_many_studies(120)) as many:
        first = _find(many, _query("STUDY", StudyInstanceUID="", StudyDate=""))
        second = _find(many, _query("STUDY", StudyInstanceUID="", StudyDate=""))
    assert first[0] == 0x0000
    assert len(first[1]) == 120
    assert _study_uids(first[1]) == _study_uids(second[1])


# --- C-GET -------------------------------------------------------------------------------------


def _get(pacs: DemoPacs, query: Dataset, sop_classes: list[UID]) -> tuple[Dataset, list[Dataset]]:
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    contexts = [build_context(GET)] + [build_context(uid) for uid in sop_classes]
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    assoc = _scu(pacs, contexts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        final = Dataset()
        for status, _ in assoc.send_c_get(query, GET):
            assert status, "no response from the demo PACS"
            final = status
    finally:
        assoc.release()
    return final, received


def test_get_series_returns_exactly_that_series(pacs: DemoPacs) -> None:
    before = pacs.operation_counts["C-GET"]
    query = _query("SERIES", StudyInstanceUID=CT_STUDY, SeriesInstanceUID=CT_SERIES_1)
    final, received = _get(pacs, query, [CTImageStorage])
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 10
    expected = {str(ds.SOPInstanceUID) for ds in SAMPLES if ds.SeriesInstanceUID == CT_SERIES_1}
    assert {str(ds.SOPInstanceUID) for ds in received} == expected
    assert len(received) == 10
    assert pacs.operation_counts["C-GET"] == before + 1
    original = next(ds for ds in SAMPLES if ds.SOPInstanceUID == received[0].SOPInstanceUID)
    assert received[0].PixelData == original.PixelData


def test_get_multiframe_study_keeps_frames_and_japanese_name(pacs: DemoPacs) -> None:
    study = next(ds for ds in SAMPLES if ds.SOPClassUID == UltrasoundMultiFrameImageStorage)
    final, received = _get(
        pacs, _query("STUDY", StudyInstanceUID=study.StudyInstanceUID), [study.SOPClassUID]
    )
    assert final.Status == 0x0000
    assert len(received) == 1
    assert received[0].NumberOfFrames == 5
    assert received[0].pixel_array.shape == (5, 48, 48)
    assert str(received[0].PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_get_cancel_stops_the_sub_operations() -> None:
    ct = [ds for ds in SAMPLES if ds.StudyInstanceUID == CT_STUDY]
    received: list[str] = []
    assoc_box: list[Association] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        if len(received) == 1:
            assoc_box[0].send_c_cancel(9, query_model=GET)
        return 0x0000

    with DemoPacs(ct, response_delay=0.02) as slow:
        assoc = _scu(
            slow,
            [build_context(GET), build_context(CTImageStorage)],
            roles=[build_role(CTImageStorage, scp_role=True)],
            handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assoc_box.append(assoc)
        try:
            query = _query("STUDY", StudyInstanceUID=CT_STUDY)
            statuses = [s for s, _ in assoc.send_c_get(query, GET, msg_id=9)]
        finally:
            assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert 1 <= len(received) < len(ct)
    assert final.NumberOfCompletedSuboperations == len(received)


def test_get_without_matches_succeeds_with_zero_suboperations(pacs: DemoPacs) -> None:
    final, received = _get(pacs, _query("STUDY", StudyInstanceUID="1.2.3.4"), [CTImageStorage])
    assert final.Status == 0x0000
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert received == []


def test_get_without_unique_key_is_refused(pacs: DemoPacs) -> None:
    final, received = _get(pacs, _query("SERIES", StudyInstanceUID=CT_STUDY), [CTImageStorage])
    assert final.Status == 0xA900
    assert received == []


# --- C-MOVE ------------------------------------------------------------------------------------


class _StorageScp:
    """A minimal pynetdicom Storage SCP used as the C-MOVE destination."""

    def __init__(self, ae_title: str) -> None:
        self.received: list[tuple[str, str | None, int | None]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for uid in {ds.SOPClassUID for ds in SAMPLES}:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self._server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> int:
        request = event.request
        with self._lock:
            self.received.append(
                (
                    str(event.dataset.SOPInstanceUID),
                    request.MoveOriginatorApplicationEntityTitle,
                    request.MoveOriginatorMessageID,
                )
            )
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def _move(pacs: DemoPacs, query: Dataset, destination: str, msg_id: int = 1) -> Dataset:
    assoc = _scu(pacs, [build_context(MOVE)])
    try:
        final = Dataset()
        for status, _ in assoc.send_c_move(query, destination, MOVE, msg_id=msg_id):
            assert status, "no response from the demo PACS"
            final = status
    finally:
        assoc.release()
    return final


def test_move_study_to_registered_destination(pacs: DemoPacs) -> None:
    destination = _StorageScp("MOVE_DEST")
    try:
        pacs.add_move_destination("MOVE_DEST", "127.0.0.1", destination.port)
        before = pacs.operation_counts
        final = _move(pacs, _query("STUDY", StudyInstanceUID=CT_STUDY), "MOVE_DEST", msg_id=42)
    finally:
        destination.stop()
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 20
    expected = {str(ds.SOPInstanceUID) for ds in SAMPLES if ds.StudyInstanceUID == CT_STUDY}
    assert {uid for uid, _, _ in destination.received} == expected
    originators = {(ae.strip() if ae else ae, mid) for _, ae, mid in destination.received}
    assert originators == {(SCU_AE_TITLE, 42)}
    after = pacs.operation_counts
    assert after["C-MOVE"] == before["C-MOVE"] + 1
    assert after["C-STORE"] == before["C-STORE"]  # sub-operations are outgoing, not counted


def test_move_to_unknown_destination_fails(pacs: DemoPacs) -> None:
    final = _move(pacs, _query("STUDY", StudyInstanceUID=CT_STUDY), "NOWHERE")
    assert final.Status == 0xA801


def test_move_destinations_from_constructor() -> None:
    destination = _StorageScp("CTOR_DEST")
    try:
        with DemoPacs(
            SAMPLES, move_destinations={"CTOR_DEST": ("127.0.0.1", destination.port)}
        ) as other:
            series = _query("SERIES", StudyInstanceUID=CT_STUDY, SeriesInstanceUID=CT_SERIES_1)
            final = _move(other, series, "CTOR_DEST")
    finally:
        destination.stop()
    assert final.Status == 0x0000
    assert len(destination.received) == 10


# --- C-STORE -----------------------------------------------------------------------------------


def test_store_then_find_and_count() -> None:
    with DemoPacs(ae_title="EMPTY_PACS") as empty:
        assert empty.ae_title == "EMPTY_PACS"
        instances = [ds for ds in SAMPLES if ds.SeriesInstanceUID == CT_SERIES_1][:3]
        assoc = _scu(empty, [build_context(CTImageStorage)])
        try:
            statuses = [assoc.send_c_store(ds).Status for ds in instances]
        finally:
            assoc.release()
        assert statuses == [0x0000] * 3
        assert len(empty) == 3
        assert empty.operation_counts["C-STORE"] == 3
        final, results = _find(
            empty, _query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="")
        )
        assert final == 0x0000
        assert [int(r.NumberOfStudyRelatedInstances) for r in results] == [3]
        assert empty.operation_counts == {
            "C-ECHO": 0,
            "C-FIND": 1,
            "C-GET": 0,
            "C-MOVE": 0,
            "C-STORE": 3,
        }
