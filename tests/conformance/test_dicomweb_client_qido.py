"""A real DICOMweb client (dicomweb-client) searching through the gateway in front of real PACS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from tests.peers import OrthancServer, PacsEndpoint, find_dicomweb_plugin, require_binary
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(pacs: PacsEndpoint) -> Iterator[DICOMwebClient]:
    peer = peer_settings(pacs.kind, pacs.ae_title, pacs.host, pacs.port)
    with GatewayServer(gateway_settings(peer)) as server:
        yield DICOMwebClient(url=server.dicomweb)


def _value(result: dict, tag: str) -> object:
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def _study_uids(results: list[dict]) -> set[str]:
    return {str(_value(r, "0020000D")) for r in results}


def test_search_for_studies_with_non_ascii_names(
    client: DICOMwebClient, sample_datasets: list[Dataset]
) -> None:
    for ds in sample_datasets:
        if ds.get("SpecificCharacterSet") in ("ISO_IR 100", "ISO_IR 192"):
            alphabetic = ds.PatientName.alphabetic
            results = client.search_for_studies(search_filters={"PatientID": str(ds.PatientID)})
            assert [r["00100010"]["Value"][0]["Alphabetic"] for r in results] == [alphabetic]
            if ds.PatientName.ideographic:
                assert results[0]["00100010"]["Value"][0]["Ideographic"] == (
                    ds.PatientName.ideographic
                )
    latin1 = next(d for d in sample_datasets if d.get("SpecificCharacterSet") == "ISO_IR 100")
    found = client.search_for_studies(search_filters={"PatientName": str(latin1.PatientName)})
    assert _study_uids(found) == {str(latin1.StudyInstanceUID)}


def test_search_with_wildcards_percent_encoded(
    client: DICOMwebClient, sample_datasets: list[Dataset]
) -> None:
    # dicomweb-client sends PatientName=Doe%2A: the gateway must decode it to a wildcard.
    results = client.search_for_studies(search_filters={"PatientName": "Doe*"})
    expected = {
        str(d.StudyInstanceUID) for d in sample_datasets if str(d.PatientName).startswith("Doe")
    }
    assert _study_uids(results) == expected
    single = client.search_for_studies(search_filters={"PatientName": "Do?^Jan?"})
    assert {str(_value(r, "00100020")) for r in single} == {
        str(d.PatientID) for d in sample_datasets if str(d.PatientName) == "Doe^Jane"
    }


def test_search_with_date_range(client: DICOMwebClient, sample_datasets: list[Dataset]) -> None:
    results = client.search_for_studies(search_filters={"StudyDate": "20200101-20221231"})
    expected = {
        str(d.StudyInstanceUID)
        for d in sample_datasets
        if "20200101" <= str(d.StudyDate) <= "20221231"
    }
    assert _study_uids(results) == expected


def test_search_for_series_and_instances(
    client: DICOMwebClient, sample_datasets: list[Dataset]
) -> None:
    ct = [d for d in sample_datasets if d.Modality == "CT"]
    study = str(ct[0].StudyInstanceUID)
    series = client.search_for_series(study_instance_uid=study)
    assert {str(_value(r, "0020000E")) for r in series} == {
        str(d.SeriesInstanceUID) for d in sample_datasets if str(d.StudyInstanceUID) == study
    }
    all_ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert {str(_value(r, "0020000E")) for r in all_ct} == {str(d.SeriesInstanceUID) for d in ct}
    target = ct[0]
    instances = client.search_for_instances(
        study_instance_uid=study, series_instance_uid=str(target.SeriesInstanceUID)
    )
    assert {str(_value(r, "00080018")) for r in instances} == {
        str(d.SOPInstanceUID) for d in ct if d.SeriesInstanceUID == target.SeriesInstanceUID
    }
    in_study = client.search_for_instances(study_instance_uid=study)
    assert len(in_study) == sum(1 for d in sample_datasets if str(d.StudyInstanceUID) == study)
    one = client.search_for_instances(search_filters={"SOPInstanceUID": str(target.SOPInstanceUID)})
    assert [str(_value(r, "00080018")) for r in one] == [str(target.SOPInstanceUID)]


def test_no_match_is_an_empty_list(client: DICOMwebClient) -> None:
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


# -- more than 500 studies, paged: Orthanc only (Debian's dcmqrscp holds 500 per AE title) ------

MANY = 520


@pytest.fixture(scope="module")
def many_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    require_binary("Orthanc")
    assert find_dicomweb_plugin() is not None or True
    from app.demo.samples import generate_many_studies

    server = OrthancServer(Path(tmp_path_factory.mktemp("orthanc-many")), ae_title="MANY")
    server.start()
    try:
        server.load(generate_many_studies(MANY))
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("page", [100, 97])
def test_paging_over_more_than_500_studies(many_orthanc: OrthancServer, page: int) -> None:
    peer = peer_settings("many", many_orthanc.ae_title, many_orthanc.host, many_orthanc.dicom_port)
    with GatewayServer(gateway_settings(peer)) as server:
        client = DICOMwebClient(url=server.dicomweb)
        pages: list[list[dict]] = []
        offset = 0
        while True:
            subset = client.search_for_studies(limit=page, offset=offset)
            if not subset:
                break
            assert len(subset) <= page
            pages.append(subset)
            offset += len(subset)
        uids = [str(_value(r, "0020000D")) for p in pages for r in p]
        assert len(uids) == MANY
        assert len(set(uids)) == MANY
        # The same pages again give the same order (PS3.18 8.3.4.4.1: stable across requests).
        again = client.search_for_studies(limit=page, offset=page)
        assert [str(_value(r, "0020000D")) for r in again] == [
            str(_value(r, "0020000D")) for r in pages[1]
        ]
        # get_remaining walks the pages itself and must reassemble the same set.
        assert _study_uids(client.search_for_studies(limit=page, get_remaining=True)) == set(uids)
