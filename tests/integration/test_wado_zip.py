"""WADO-RS as a ZIP archive (Accept: application/zip) through the gateway from a real Orthanc:
the archive holds exactly the instances the gateway's QIDO lists, each a Part-10 file with the
pixels Orthanc stores; also checked against Orthanc's own DICOMweb listing of the study."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from pydicom import Dataset, dcmread

from tests.peers.fixtures import GATEWAY_AE
from tests.peers.orthanc import OrthancServer
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def http(orthanc: OrthancServer) -> Iterator[httpx.Client]:
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    with GatewayServer(gateway_settings(peer, ae_title=GATEWAY_AE)) as gateway, \
            gateway.client() as client:
        yield client


def _unzip(response: httpx.Response) -> dict[str, Dataset]:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    members: dict[str, Dataset] = {}
    for name in archive.namelist():
        ds = dcmread(io.BytesIO(archive.read(name)))
        assert name == f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        members[str(ds.SOPInstanceUID)] = ds
    assert len(members) == len(archive.namelist())
    return members


def _qido_instances(http: httpx.Client, path: str) -> set[str]:
    r = http.get(path, headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    return {obj["00080018"]["Value"][0] for obj in r.json()}


def _study_with_most_series(samples: list[Dataset]) -> str:
    series: dict[str, set[str]] = {}
    for ds in samples:
        series.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SeriesInstanceUID))
    return max(series, key=lambda uid: len(series[uid]))


def test_study_zip_matches_qido_and_orthanc(http: httpx.Client, orthanc: OrthancServer,
                                            sample_datasets: list[Dataset]) -> None:
    study = _study_with_most_series(sample_datasets)
    members = _unzip(http.get(f"/studies/{study}", headers={"Accept": "application/zip"}))
    assert set(members) == _qido_instances(http, f"/studies/{study}/instances")
    with orthanc.client() as rest:
        theirs = rest.get(f"/dicom-web/studies/{study}/instances")
    assert set(members) == {obj["00080018"]["Value"][0] for obj in theirs.json()}
    originals = {str(ds.SOPInstanceUID): ds for ds in sample_datasets}
    for uid, ds in members.items():
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
        if "PixelData" in originals[uid]:
            assert np.array_equal(ds.pixel_array, originals[uid].pixel_array)


def test_series_zip_in_jpeg2000_lossless(http: httpx.Client,
                                         sample_datasets: list[Dataset]) -> None:
    ct = next(ds for ds in sample_datasets if ds.Modality == "CT")
    study, series = str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)
    accept = f"application/zip; transfer-syntax={JPEG2000_LOSSLESS}"
    members = _unzip(http.get(f"/studies/{study}/series/{series}", params={"accept": accept}))
    assert set(members) == _qido_instances(http, f"/studies/{study}/series/{series}/instances")
    originals = {str(ds.SOPInstanceUID): ds for ds in sample_datasets}
    for uid, ds in members.items():
        assert ds.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
        assert np.array_equal(ds.pixel_array, originals[uid].pixel_array)


def test_zip_in_a_syntax_the_gateway_cannot_produce_is_406(
        http: httpx.Client, sample_datasets: list[Dataset]) -> None:
    study = str(sample_datasets[0].StudyInstanceUID)
    r = http.get(f"/studies/{study}",
                 headers={"Accept": "application/zip; transfer-syntax=1.2.840.10008.1.2.2"})
    assert r.status_code == 406
    assert "00000902" in r.json()
