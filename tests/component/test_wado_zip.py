"""WADO-RS as a ZIP archive (Accept: application/zip, Supplement 211) from the demo PACS, over a
real socket: every member is a Part-10 file pydicom reads, the members are exactly the
instances QIDO lists, the transfer syntax follows the Accept, and what cannot be produced is a
406 before any retrieval."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread

from app.demo.pacs import DemoPacs
from tests.component.conftest import peer_config
from tests.component.test_wado_cut_short import DyingPacs, _big_series
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


@pytest.fixture(scope="module")
def server(sample_pacs: DemoPacs) -> Iterator[GatewayServer]:
    config: dict[str, Any] = peer_config(sample_pacs.port)
    peer = peer_settings("demo", config["ae_title"], "127.0.0.1", sample_pacs.port,
                         dimse_timeout=5, overall_timeout=20)
    with GatewayServer(gateway_settings(peer)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def aborting_pacs(samples: list[Dataset]) -> Iterator[DyingPacs]:
    """A PACS that aborts a retrieval after its first instance."""
    pacs = DyingPacs(samples, ae_title="DYING_PACS")
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.stop()


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _largest_study(samples: list[Dataset]) -> str:
    counts: dict[str, int] = {}
    for ds in samples:
        counts[str(ds.StudyInstanceUID)] = counts.get(str(ds.StudyInstanceUID), 0) + 1
    return max(counts, key=lambda uid: counts[uid])


def _listed(http: httpx.Client, study: str, series: str | None = None) -> set[str]:
    """SOP Instance UIDs as QIDO-RS lists them."""
    path = f"/studies/{study}/series/{series}/instances" if series else \
        f"/studies/{study}/instances"
    r = http.get(path, headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    return {obj["00080018"]["Value"][0] for obj in r.json()}


def _members(response: httpx.Response) -> dict[str, Dataset]:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None  # every member's CRC checks out
    out: dict[str, Dataset] = {}
    for info in archive.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        ds = dcmread(io.BytesIO(archive.read(info)))  # a Part-10 file: preamble and File Meta
        assert info.filename == f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_study_as_zip_holds_every_instance_qido_lists(http: httpx.Client,
                                                      samples: list[Dataset]) -> None:
    study = _largest_study(samples)
    r = http.get(f"/studies/{study}", headers={"Accept": "application/zip"})
    members = _members(r)
    assert set(members) == _listed(http, study)
    assert r.headers["content-disposition"] == f'attachment; filename="study-{study}.zip"'
    assert "content-length" not in r.headers  # streamed, not built then sent
    for ds in members.values():
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert str(ds.StudyInstanceUID) == study


def test_series_as_zip_from_a_browser_link(http: httpx.Client, samples: list[Dataset]) -> None:
    """``?accept=`` overrides the header, as a plain link needs (PS3.18 8.3.3.1)."""
    ds0 = next(ds for ds in samples if ds.Modality == "CT")
    study, series = str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    r = http.get(f"/studies/{study}/series/{series}", params={"accept": "application/zip"},
                 headers={"Accept": "text/html,*/*;q=0.8"})
    members = _members(r)
    assert set(members) == _listed(http, study, series)
    assert all(str(ds.SeriesInstanceUID) == series for ds in members.values())
    assert r.headers["content-disposition"] == f'attachment; filename="series-{series}.zip"'


def test_zip_members_in_the_transfer_syntax_asked_for(http: httpx.Client,
                                                      samples: list[Dataset]) -> None:
    ds0 = next(ds for ds in samples if ds.Modality == "CT")
    study, series = str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID)
    r = http.get(f"/studies/{study}/series/{series}",
                 headers={"Accept": f"application/zip; transfer-syntax={RLE}"})
    members = _members(r)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in samples}
    for uid, ds in members.items():
        assert ds.file_meta.TransferSyntaxUID == RLE
        assert (ds.pixel_array == by_uid[uid].pixel_array).all()  # lossless: same pixels


@pytest.mark.parametrize("accept", [
    "application/zip; transfer-syntax=1.2.840.10008.1.2",  # Implicit VR LE: never on the web
    "application/zip; transfer-syntax=1.2.3.4",  # unknown
    'application/zip; type="application/dicom+json"',  # metadata in a ZIP: not offered
])
def test_unsupported_zip_is_406_with_a_dicom_status_body(http: httpx.Client,
                                                         samples: list[Dataset],
                                                         accept: str) -> None:
    study = _largest_study(samples)
    r = http.get(f"/studies/{study}", headers={"Accept": accept})
    assert r.status_code == 406
    assert r.headers["content-type"] == "application/dicom+json"
    assert "00000902" in r.json()


def test_multipart_stays_the_default(http: httpx.Client, samples: list[Dataset]) -> None:
    study = _largest_study(samples)
    r = http.get(f"/studies/{study}", headers={"Accept": "*/*"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")
    assert "content-disposition" not in r.headers


def test_unknown_study_as_zip_is_404(http: httpx.Client) -> None:
    r = http.get("/studies/1.2.3.999999", headers={"Accept": "application/zip"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/dicom+json"


def test_a_retrieval_failing_midway_leaves_a_visibly_broken_archive(
        aborting_pacs: DyingPacs, samples: list[Dataset]) -> None:
    """The PACS aborts after the first instance: that member was sent, the central directory
    never is, so no ZIP reader takes the download for a whole archive."""
    study, series, _ = _big_series(samples)
    peer = peer_settings("dying", "DYING_PACS", "127.0.0.1", aborting_pacs.port, dimse_timeout=5,
                         overall_timeout=20)
    received = b""
    with GatewayServer(gateway_settings(peer, cache_backend="none")) as gateway, \
            gateway.client() as client:
        with pytest.raises(httpx.RemoteProtocolError), client.stream(
                "GET", f"/studies/{study}/series/{series}",
                headers={"Accept": "application/zip"}) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += chunk
    assert received.startswith(b"PK\x03\x04")  # the first member's local header
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(received))


def test_an_instance_as_zip_has_its_own_etag(http: httpx.Client, samples: list[Dataset]) -> None:
    ds = next(d for d in samples if d.Modality == "CT")
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/" \
           f"{ds.SOPInstanceUID}"
    r = http.get(path, headers={"Accept": "application/zip"})
    assert list(_members(r)) == [str(ds.SOPInstanceUID)]
    assert r.headers["content-disposition"] == \
        f'attachment; filename="instance-{ds.SOPInstanceUID}.zip"'
    multipart = http.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.headers["etag"] != multipart.headers["etag"]
    again = http.get(path, headers={"Accept": "application/zip",
                                    "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
