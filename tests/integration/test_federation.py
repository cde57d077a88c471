"""Issue #12 item 3 against real peers: ``/dicomweb`` federates a real Orthanc (all eight sample
studies) and a real DCMTK dcmqrscp that holds two of them (study 0 only in part) and one study
Orthanc does not have. Merged and de-duplicated searches with RetrieveAETitle naming both AE
titles, stable paging, a PACS that is down, a retrieval of the study only dcmqrscp holds, and
fail-over to Orthanc when the dcmqrscp remembered for a study has gone."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from app.dicomweb.multipart import parse_multipart
from tests.peers import DcmqrscpServer, OrthancServer, free_port, require_binary
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = pytest.mark.timeout(120)
DICOM = {"Accept": 'multipart/related; type="application/dicom"'}


def _by_study(datasets: list[Dataset]) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {}
    for ds in datasets:
        out.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return out


def _new_study(instances: list[Dataset]) -> list[Dataset]:
    """A copy of a sample study under new UIDs (a study only dcmqrscp holds)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in instances:
        clone = copy.deepcopy(ds)
        clone.StudyInstanceUID, clone.SeriesInstanceUID = study, series
        clone.SOPInstanceUID = generate_uid()
        clone.file_meta.MediaStorageSOPInstanceUID = clone.SOPInstanceUID
        out.append(clone)
    return out


class Archive:
    """What the dcmqrscp of this module holds, against the sample studies Orthanc holds."""

    def __init__(self, samples: list[Dataset]) -> None:
        self.studies = _by_study(samples)
        self.uids = list(self.studies)
        first = self.studies[self.uids[0]]
        first_series = str(first[0].SeriesInstanceUID)
        self.only_here = _new_study(self.studies[self.uids[6]])
        self.datasets = ([ds for ds in first if str(ds.SeriesInstanceUID) == first_series]
                         + self.studies[self.uids[3]] + self.only_here)
        self.only_here_uid = str(self.only_here[0].StudyInstanceUID)

    def sops(self, study_uid: str) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in self.datasets
                if str(ds.StudyInstanceUID) == study_uid}


@pytest.fixture(scope="module")
def archive(sample_datasets: list[Dataset]) -> Archive:
    return Archive(sample_datasets)


def _start_dcmqrscp(workdir: Path, archive: Archive, ae_title: str) -> DcmqrscpServer:
    require_binary("dcmqrscp")
    require_binary("dcmqridx")
    server = DcmqrscpServer(workdir, ae_titles=(ae_title,))
    server.load(archive.datasets)
    server.start()
    return server


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory, archive: Archive
           ) -> Iterator[DcmqrscpServer]:
    server = _start_dcmqrscp(tmp_path_factory.mktemp("dcmqrscp-federated"), archive, "SECOND")
    try:
        yield server
    finally:
        server.stop()


def _settings(orthanc: OrthancServer, dcmqrscp: DcmqrscpServer, **extra: Any) -> Any:
    return gateway_settings(
        peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port),
        peer_settings("second", dcmqrscp.ae_title, dcmqrscp.host, dcmqrscp.port),
        federate=True, **extra)


@pytest.fixture(scope="module")
def gateway(orthanc: OrthancServer, second: DcmqrscpServer) -> Iterator[GatewayServer]:
    with GatewayServer(_settings(orthanc, second)) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def _results(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text[:300]
    return {r["0020000D"]["Value"][0]: r for r in response.json()}


def _titles(result: dict[str, Any]) -> list[str]:
    return list(result.get("00080054", {}).get("Value", []))


def _sops(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return {str(dcmread(BytesIO(part.body)).SOPInstanceUID) for part in parts}


def test_studies_of_both_pacs_are_merged_and_deduplicated(
        http: httpx.Client, archive: Archive, orthanc: OrthancServer,
        second: DcmqrscpServer) -> None:
    response = http.get("/studies")
    results = _results(response)
    assert list(results) == sorted([*archive.uids, archive.only_here_uid])
    for i in (0, 3):
        assert _titles(results[archive.uids[i]]) == [orthanc.ae_title, second.ae_title]
    for i in (1, 2, 4, 5, 6, 7):
        assert _titles(results[archive.uids[i]]) == [orthanc.ae_title]
    assert _titles(results[archive.only_here_uid]) == [second.ae_title]
    # Study 0: Orthanc holds both series, dcmqrscp one (its count computed by the gateway).
    study0 = results[archive.uids[0]]
    assert study0["00201206"]["Value"] == [2]
    assert study0["00201208"]["Value"] == [len(archive.studies[archive.uids[0]])]
    assert not [w for w in response.headers.get_list("warning") if w.startswith("299 ")]


def test_paging_is_stable_across_pages(http: httpx.Client, archive: Archive) -> None:
    everything = list(_results(http.get("/studies")))
    pages = [list(_results(http.get("/studies", params={"limit": 4, "offset": offset})))
             for offset in (0, 4, 8)]
    assert [uid for page in pages for uid in page] == everything
    assert list(_results(http.get("/studies", params={"limit": 4, "offset": 4}))) == pages[1]


def test_a_study_only_on_the_second_pacs_is_retrieved_from_it(
        http: httpx.Client, archive: Archive) -> None:
    uid = archive.only_here_uid
    assert _sops(http.get(f"/studies/{uid}", headers=DICOM)) == archive.sops(uid)
    metadata = http.get(f"/studies/{uid}/metadata")
    assert metadata.status_code == 200
    assert {m["00080018"]["Value"][0] for m in metadata.json()} == archive.sops(uid)


def test_named_routes_are_unchanged(gateway: GatewayServer, archive: Archive) -> None:
    orthanc_only = _results(httpx.get(f"{gateway.url}/pacs/orthanc/dicomweb/studies"))
    second_only = _results(httpx.get(f"{gateway.url}/pacs/second/dicomweb/studies"))
    missing = httpx.get(f"{gateway.url}/pacs/orthanc/dicomweb/studies/"
                        f"{archive.only_here_uid}/metadata", timeout=30)
    assert sorted(orthanc_only) == sorted(archive.uids)
    assert sorted(second_only) == sorted([archive.uids[0], archive.uids[3],
                                          archive.only_here_uid])
    assert all("00080054" not in r for r in [*orthanc_only.values(), *second_only.values()])
    assert missing.status_code == 404


def test_a_pacs_that_is_down_gives_a_warning_and_the_others_results(
        orthanc: OrthancServer, second: DcmqrscpServer, archive: Archive) -> None:
    settings = gateway_settings(
        peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port),
        peer_settings("second", second.ae_title, second.host, second.port),
        peer_settings("gone", "GONE", "127.0.0.1", free_port(), connect_timeout=2),
        federate=True)
    with GatewayServer(settings) as server, server.client() as client:
        response = client.get("/studies")
    assert sorted(_results(response)) == sorted([*archive.uids, archive.only_here_uid])
    assert any(w.startswith("299 ") and "PACS gone failed" in w
               for w in response.headers.get_list("warning"))


def test_retrieval_fails_over_when_the_remembered_pacs_has_gone(
        tmp_path: Path, orthanc: OrthancServer, archive: Archive) -> None:
    """dcmqrscp comes first in ``federate``, so it is tried first for study 3; it is stopped
    after the search, and Orthanc serves the study."""
    doomed = _start_dcmqrscp(tmp_path / "doomed", archive, "DOOMED")
    try:
        settings = gateway_settings(
            peer_settings("doomed", doomed.ae_title, doomed.host, doomed.port,
                          connect_timeout=2),
            peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port),
            federate=["doomed", "orthanc"])
        study3 = archive.uids[3]
        with GatewayServer(settings) as server, server.client() as client:
            results = _results(client.get("/studies", params={"StudyInstanceUID": study3}))
            assert _titles(results[study3]) == [doomed.ae_title, orthanc.ae_title]
            doomed.stop()
            response = client.get(f"/studies/{study3}", headers=DICOM)
            metrics = httpx.get(f"{server.url}/metrics")
    finally:
        doomed.stop()
    assert _sops(response) == {str(ds.SOPInstanceUID) for ds in archive.studies[study3]}
    assert 'federation_failovers_total{peer="doomed"' in metrics.text
