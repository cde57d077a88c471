"""Rendered images, thumbnails and WADO-URI through the gateway in front of a real Orthanc (C-GET).

References are computed here, independently of app.dicomweb.render, from the original sample
datasets with each instance's own window (PS3.3 C.11.2.1.2 LINEAR) and Modality LUT."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread

from tests.peers import OrthancServer
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gateway(orthanc: OrthancServer) -> Iterator[GatewayServer]:
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port,
                         retrieve_method="get")
    with GatewayServer(gateway_settings(peer, ae_title=GATEWAY_AE)) as server:
        yield server


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def _reference(ds: Dataset) -> np.ndarray:
    """8-bit display values: rescale, first window (linear), MONOCHROME1 inverted."""
    values = ds.pixel_array.astype(np.float64)
    values = values * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    out = np.empty_like(values)
    below = values <= center - 0.5 - (width - 1) / 2
    above = values > center - 0.5 + (width - 1) / 2
    inside = ~(below | above)
    out[below], out[above] = 0.0, 255.0
    out[inside] = ((values[inside] - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _image(response: httpx.Response, fmt: str) -> np.ndarray:
    assert response.status_code == 200, response.text[:300]
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == fmt
    return np.asarray(picture.convert("L") if picture.mode not in ("L", "RGB") else picture)


def _instance_path(ds: Dataset) -> str:
    return (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def _pick(data: list[Dataset], modality: str) -> Dataset:
    return next(ds for ds in data if ds.Modality == modality)


@pytest.mark.parametrize("modality", ["CT", "CR", "MR"])
def test_rendered_instance_matches_an_independent_reference(
        http: httpx.Client, sample_datasets: list[Dataset], modality: str) -> None:
    ds = _pick(sample_datasets, modality)
    expected = _reference(ds)
    png = _image(http.get(_instance_path(ds) + "/rendered", headers={"Accept": "image/png"}),
                 "PNG")
    assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1
    jpeg = _image(http.get(_instance_path(ds) + "/rendered", headers={"Accept": "image/jpeg"}),
                  "JPEG")
    assert jpeg.shape == expected.shape
    assert np.abs(jpeg.astype(int) - expected.astype(int)).mean() < 4


def test_rendered_rgb_instance(http: httpx.Client, sample_datasets: list[Dataset]) -> None:
    ds = _pick(sample_datasets, "OT")
    png = _image(http.get(_instance_path(ds) + "/rendered", params={"accept": "image/png"}),
                 "PNG")
    assert np.array_equal(png, ds.pixel_array)


def test_rendered_series_has_one_image_per_instance(http: httpx.Client,
                                                    sample_datasets: list[Dataset]) -> None:
    from app.dicomweb.multipart import parse_multipart

    ct = _pick(sample_datasets, "CT")
    members = [d for d in sample_datasets if d.SeriesInstanceUID == ct.SeriesInstanceUID]
    response = http.get(f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/rendered",
                        headers={"Accept": "image/png"})
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    by_uid = {str(d.SOPInstanceUID): d for d in members}
    assert len(parts) == len(members)
    for part in parts:
        uid = (part.content_location or "").split("/instances/")[1].split("/")[0]
        got = np.asarray(Image.open(io.BytesIO(part.body)))
        assert np.abs(got.astype(int) - _reference(by_uid[uid]).astype(int)).max() <= 1


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_thumbnail_is_an_image_without_phi(http: httpx.Client, sample_datasets: list[Dataset],
                                           level: str) -> None:
    ds = _pick(sample_datasets, "CT")
    path = {"study": f"/studies/{ds.StudyInstanceUID}",
            "series": f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
            "instance": _instance_path(ds)}[level] + "/thumbnail"
    response = http.get(path, headers={"Accept": "*/*"})
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG" and max(picture.size) <= 128
    assert not picture.info.get("comment") and not picture.getexif()
    for secret in (str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate),
                   str(ds.AccessionNumber)):
        assert secret.encode() not in response.content
        assert all(secret not in value for value in response.headers.values())


def test_wado_uri_returns_the_same_instance(gateway: GatewayServer,
                                            sample_datasets: list[Dataset]) -> None:
    ds = _pick(sample_datasets, "MR")
    params = {"requestType": "WADO", "studyUID": str(ds.StudyInstanceUID),
              "seriesUID": str(ds.SeriesInstanceUID), "objectUID": str(ds.SOPInstanceUID),
              "contentType": "application/dicom"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for path in ("/dicomweb/wado", "/wado"):
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text[:300]
            assert response.headers["content-type"] == "application/dicom"
            got = dcmread(io.BytesIO(response.content))
            assert str(got.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
            for keyword in ("SOPInstanceUID", "SOPClassUID", "PatientName", "PatientID",
                            "InstanceNumber", "Rows", "Columns", "WindowCenter"):
                assert got.get(keyword) == ds.get(keyword), keyword
            assert np.array_equal(got.pixel_array, ds.pixel_array)
        rendered = client.get("/wado", params={**params, "contentType": "image/png"})
        assert np.abs(_image(rendered, "PNG").astype(int)
                      - _reference(ds).astype(int)).max() <= 1


@pytest.mark.parametrize(("change", "status"), [
    ({"requestType": "WADOX"}, 400),
    ({"objectUID": None}, 400),
    ({"objectUID": "1.2.826.0.1.3680043.2.1125.999999"}, 404),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2"}, 406),
    ({"contentType": "video/mp4"}, 406),
    ({"windowCenter": "10"}, 400),
])
def test_wado_uri_errors(gateway: GatewayServer, sample_datasets: list[Dataset],
                         change: dict[str, str | None], status: int) -> None:
    ds = _pick(sample_datasets, "CT")
    params: dict[str, str] = {"requestType": "WADO", "studyUID": str(ds.StudyInstanceUID),
                              "seriesUID": str(ds.SeriesInstanceUID),
                              "objectUID": str(ds.SOPInstanceUID)}
    for name, value in change.items():
        if value is None:
            params.pop(name)
        else:
            params[name] = value
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert client.get("/wado", params=params).status_code == status
