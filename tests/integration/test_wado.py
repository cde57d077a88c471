"""WADO-RS through the gateway against real Orthanc and DCMTK dcmqrscp, each with C-GET and with
C-MOVE: instances, metadata, bulk data and frames, checked against the data the peers hold."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from pydicom import Dataset, dcmread

from app.dicomweb.multipart import Part, parse_multipart
from tests.peers import PacsEndpoint
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(params=["get", "move"])
def gateway(request: pytest.FixtureRequest, pacs: PacsEndpoint,
            gateway_storage_port: int) -> Iterator[GatewayServer]:
    method = request.param
    peer = peer_settings(pacs.kind, pacs.ae_title, pacs.host, pacs.port, retrieve_method=method)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, storage_scp_enabled=method == "move",
                                storage_scp_host="127.0.0.1", storage_scp_port=gateway_storage_port)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def _by(data: list[Dataset], keyword: str) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = defaultdict(list)
    for ds in data:
        out[str(ds.get(keyword))].append(ds)
    return out


def _parts(response: httpx.Response) -> list[Part]:
    assert response.status_code == 200, response.text[:500]
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    return parse_multipart(response.content, content_type)


def _instances(response: httpx.Response) -> list[Dataset]:
    parts = _parts(response)
    assert 'type="application/dicom"' in response.headers["content-type"]
    out = []
    for part in parts:
        assert part.headers["Content-Type"].startswith("application/dicom")
        ds = dcmread(io.BytesIO(part.body))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert f"transfer-syntax={syntax}" in part.headers["Content-Type"]
        assert syntax not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
        out.append(ds)
    return out


def _same_pixels(got: Dataset, original: Dataset) -> None:
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_retrieve_study(http: httpx.Client, sample_datasets: list[Dataset]) -> None:
    study_uid, originals = max(_by(sample_datasets, "StudyInstanceUID").items(),
                               key=lambda kv: len(kv[1]))
    got = _instances(http.get(f"/studies/{study_uid}",
                              headers={"Accept": 'multipart/related; type="application/dicom"'}))
    by_uid = {str(d.SOPInstanceUID): d for d in originals}
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(by_uid)
    for ds in got:
        assert str(ds.file_meta.TransferSyntaxUID) == EXPLICIT_LE
        _same_pixels(ds, by_uid[str(ds.SOPInstanceUID)])


def test_retrieve_series_is_series_level(http: httpx.Client,
                                         sample_datasets: list[Dataset]) -> None:
    by_series = _by(sample_datasets, "SeriesInstanceUID")
    series_uid, originals = next((k, v) for k, v in by_series.items()
                                 if len(_by(sample_datasets, "StudyInstanceUID")[
                                     str(v[0].StudyInstanceUID)]) > len(v))
    study_uid = str(originals[0].StudyInstanceUID)
    got = _instances(http.get(f"/studies/{study_uid}/series/{series_uid}"))
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(
        str(d.SOPInstanceUID) for d in originals)


def test_retrieve_instance_with_content_location(http: httpx.Client, gateway: GatewayServer,
                                                 sample_datasets: list[Dataset]) -> None:
    original = sample_datasets[3]
    path = (f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}")
    response = http.get(path)
    (part,) = _parts(response)
    assert part.headers["Content-Location"] == gateway.dicomweb + path
    got = dcmread(io.BytesIO(part.body))
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PatientName == original.PatientName
    _same_pixels(got, original)


def test_missing_and_malformed(http: httpx.Client, sample_datasets: list[Dataset]) -> None:
    ds = sample_datasets[0]
    assert http.get("/studies/1.2.3.4.5.6.7.8.9").status_code == 404
    assert http.get(f"/studies/{ds.StudyInstanceUID}/series/1.2.3.999").status_code == 404
    assert http.get("/studies/1.2.x").status_code == 400
    bad = http.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                   f"/instances/{ds.SOPInstanceUID}/frames/0")
    assert bad.status_code == 400
    assert http.get(f"/studies/{ds.StudyInstanceUID}",
                    headers={"Accept": "text/html"}).status_code == 406


def test_series_metadata_and_bulk_data(http: httpx.Client, gateway: GatewayServer,
                                       sample_datasets: list[Dataset]) -> None:
    ct = [d for d in sample_datasets if d.Modality == "CT"]
    series_uid = str(ct[0].SeriesInstanceUID)
    originals = {str(d.SOPInstanceUID): d for d in ct if str(d.SeriesInstanceUID) == series_uid}
    response = http.get(f"/studies/{ct[0].StudyInstanceUID}/series/{series_uid}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    items = response.json()
    assert len(items) == len(originals)
    for item in items:
        assert list(item) == sorted(item)
        original = originals[item["00080018"]["Value"][0]]
        for tag in ("00200032", "00200037", "00280030", "00281052", "00281053", "00281050"):
            assert tag in item, f"{tag} missing from metadata"
        assert item["00200032"]["Value"] == [float(v) for v in original.ImagePositionPatient]
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri.startswith(gateway.dicomweb)
    first = items[0]
    original = originals[first["00080018"]["Value"][0]]
    bulk = http.get(first["7FE00010"]["BulkDataURI"][len(gateway.dicomweb):],
                    headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    parts = _parts(bulk)
    assert b"".join(p.body for p in parts) == original.PixelData


def test_frames_of_a_multiframe_instance(http: httpx.Client,
                                         sample_datasets: list[Dataset]) -> None:
    original = next(d for d in sample_datasets if int(d.get("NumberOfFrames", 1) or 1) > 2)
    frames = original.pixel_array
    base = (f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}/frames")
    parts = _parts(http.get(f"{base}/1,3", headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}))
    assert len(parts) == 2
    for number, part in zip((1, 3), parts, strict=True):
        assert part.headers["Content-Type"].startswith("application/octet-stream")
        assert part.body == frames[number - 1].tobytes()
    assert http.get(f"{base}/99").status_code == 404
    assert http.get(f"{base}/x").status_code == 400


def test_as_stored_transfer_syntax(http: httpx.Client, sample_datasets: list[Dataset]) -> None:
    original = sample_datasets[0]
    response = http.get(f"/studies/{original.StudyInstanceUID}/series/"
                        f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; '
                                           "transfer-syntax=*"})
    (got,) = _instances(response)
    assert got.SOPInstanceUID == original.SOPInstanceUID


def test_metadata_keeps_the_source_character_set(
    http: httpx.Client, pacs: PacsEndpoint, request: pytest.FixtureRequest,
    sample_datasets: list[Dataset],
) -> None:
    """SpecificCharacterSet names the source encoding; the JSON itself is UTF-8 (PS3.18 F.2.2
    note 3): kept as stored, as Orthanc's own DICOMweb keeps it (issue #10, item 15)."""
    charsets = {}
    for ds in sample_datasets:
        charset = ds.get("SpecificCharacterSet")
        if charset is not None:
            charsets.setdefault(str(charset), ds)
    assert len(charsets) >= 2
    for original in charsets.values():
        url = (f"/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
               f"/instances/{original.SOPInstanceUID}/metadata")
        response = http.get(url)
        assert response.status_code == 200, response.text
        (item,) = response.json()
        source = original.SpecificCharacterSet
        expected = [source] if isinstance(source, str) else [v or None for v in source]
        assert item["00080005"] == {"vr": "CS", "Value": expected}
        name = original.PatientName
        assert item["00100010"]["Value"][0]["Alphabetic"] == name.alphabetic
        if pacs.kind == "orthanc":
            orthanc = request.getfixturevalue("orthanc")
            with httpx.Client(timeout=30) as client:
                theirs = client.get(f"{orthanc.dicomweb_url}{url}").json()[0]
            # Orthanc 1.10 drops the empty first value of ["", "ISO 2022 IR 87"].
            assert [v for v in theirs["00080005"]["Value"] if v] == [v for v in expected if v]
