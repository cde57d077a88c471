"""Rendered resources, thumbnails and WADO-URI through the gateway in front of a DemoPacs holding
the sample studies plus one Structured Report (an instance without pixels): media types and
negotiation, rendering parameters, multipart framing, thumbnail choice, caching and errors."""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage

from app.demo.pacs import DemoPacs
from app.demo.samples import sample_uid
from app.dicomweb.multipart import parse_multipart
from app.dicomweb.render import Window, WindowFunction, display_frame
from tests.component.conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _structured_report(study: Dataset) -> Dataset:
    """A Basic Text SR in its own series of ``study``: something with no pixels to render."""
    ds = Dataset()
    ds.file_meta = copy.deepcopy(study.file_meta)
    uid = sample_uid(0, "render-test-sr")
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, getattr(study, keyword))
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = sample_uid(0, "render-test-sr-series")
    ds.SeriesNumber = 0  # first by number: a study thumbnail must still skip it
    ds.InstanceNumber = 1
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    return ds


@pytest.fixture(scope="module")
def data(samples: list[Dataset]) -> list[Dataset]:
    ct = next(ds for ds in samples if ds.Modality == "CT")
    return [*samples, _structured_report(ct)]


@pytest.fixture(scope="module")
def render_pacs(data: list[Dataset]) -> Iterator[DemoPacs]:
    pacs = DemoPacs(data, ae_title="RENDER_PACS")
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.stop()


@pytest.fixture
async def client(gateway: GatewayFactory,
                 render_pacs: DemoPacs) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(peer_config(render_pacs.port, ae_title="RENDER_PACS"))
    async with gateway(settings) as http:
        yield http


def _first(data: list[Dataset], **wanted: str) -> Dataset:
    return next(ds for ds in data if all(str(ds.get(k)) == v for k, v in wanted.items()))


def _url(ds: Dataset, tail: str = "", *, level: str = "instance") -> str:
    url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        url += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        url += f"/instances/{ds.SOPInstanceUID}"
    return url + tail


def _wado_uri(ds: Dataset, **params: str) -> dict[str, str]:
    query = {"requestType": "WADO", "studyUID": str(ds.StudyInstanceUID),
             "seriesUID": str(ds.SeriesInstanceUID), "objectUID": str(ds.SOPInstanceUID)}
    query.update(params)
    return query


def _picture(response: httpx.Response, fmt: str) -> Image.Image:
    assert response.status_code == 200, response.text[:300]
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    assert picture.format == fmt
    return picture


# -- rendered instance and frames ---------------------------------------------------------------


async def test_rendered_instance_defaults_to_jpeg(client: httpx.AsyncClient,
                                                  data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"), headers={"Accept": "*/*"})
    picture = _picture(response, "JPEG")
    assert response.headers["content-type"] == "image/jpeg"
    assert picture.size == (ct.Columns, ct.Rows)
    expected = display_frame(ct, 1).astype(int)
    assert np.abs(np.asarray(picture.convert("L")).astype(int) - expected).mean() < 3


async def test_rendered_instance_png_equals_the_reference(client: httpx.AsyncClient,
                                                          data: list[Dataset]) -> None:
    for ds in (_first(data, Modality="CT"), _first(data, Modality="CR"),
               _first(data, Modality="OT"), _first(data, Modality="MR")):
        response = await client.get(_url(ds, "/rendered"), headers={"Accept": "image/png"})
        assert np.array_equal(np.asarray(_picture(response, "PNG")), display_frame(ds, 1))


async def test_accept_query_parameter_and_window(client: httpx.AsyncClient,
                                                 data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"),
                                params={"accept": "image/png", "window": "-600,1500,sigmoid"})
    expected = display_frame(ct, 1, Window(-600, 1500, WindowFunction.SIGMOID))
    assert np.array_equal(np.asarray(_picture(response, "PNG")), expected)


async def test_viewport_and_quality(client: httpx.AsyncClient, data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"), params={"viewport": "32,16"},
                                headers={"Accept": "image/gif"})
    assert _picture(response, "GIF").size == (16, 16)
    low = await client.get(_url(ct, "/rendered"), params={"quality": "5"})
    high = await client.get(_url(ct, "/rendered"), params={"quality": "100"})
    assert len(_picture(low, "JPEG").tobytes()) and len(low.content) < len(high.content)


async def test_rendered_frames(client: httpx.AsyncClient, data: list[Dataset]) -> None:
    us = _first(data, Modality="US")
    cube = us.pixel_array
    one = await client.get(_url(us, "/frames/3/rendered"), headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(_picture(one, "PNG")), cube[2])
    several = await client.get(_url(us, "/frames/2,4/rendered"), headers={"Accept": "image/png"})
    assert several.status_code == 200
    content_type = several.headers["content-type"]
    assert content_type.startswith('multipart/related; type="image/png"')
    parts = parse_multipart(several.content, content_type)
    assert [p.content_location.rsplit("/", 2)[-2] for p in parts] == ["2", "4"]  # type: ignore[union-attr]
    for part, index in zip(parts, (1, 3), strict=True):
        assert part.content_type == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(part.body))), cube[index])
    missing = await client.get(_url(us, "/frames/9/rendered"), headers={"Accept": "*/*"})
    assert missing.status_code == 404


async def test_multi_frame_instance_as_gif_is_animated(client: httpx.AsyncClient,
                                                       data: list[Dataset]) -> None:
    us = _first(data, Modality="US")
    response = await client.get(_url(us, "/rendered"), headers={"Accept": "image/gif"})
    assert getattr(_picture(response, "GIF"), "n_frames", 1) == int(us.NumberOfFrames)


async def test_instance_rendering_is_cacheable(client: httpx.AsyncClient,
                                               data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    first = await client.get(_url(ct, "/rendered"), headers={"Accept": "image/jpeg"})
    etag = first.headers["etag"]
    assert "immutable" in first.headers["cache-control"]
    again = await client.get(_url(ct, "/rendered"),
                             headers={"Accept": "image/jpeg", "If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = await client.get(_url(ct, "/rendered"),
                             headers={"Accept": "image/png", "If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    missing = _url(ct, "/rendered").replace(str(ct.SOPInstanceUID), "1.2.3.4")
    star = await client.get(missing, headers={"Accept": "image/jpeg", "If-None-Match": "*"})
    assert star.status_code == 404  # no current representation: '*' is false (RFC 9110)
    uri = await client.get("/wado", params=_wado_uri(ct), headers={"If-None-Match": etag})
    assert uri.status_code == 200
    uri_again = await client.get("/wado", params=_wado_uri(ct),
                                 headers={"If-None-Match": uri.headers["etag"]})
    assert uri_again.status_code == 304


# -- rendered series and study ------------------------------------------------------------------


async def test_rendered_series_is_multipart(client: httpx.AsyncClient,
                                            data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    members = {str(d.SOPInstanceUID) for d in data if d.SeriesInstanceUID == ct.SeriesInstanceUID}
    response = await client.get(_url(ct, "/rendered", level="series"),
                                headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="image/jpeg"')
    parts = parse_multipart(response.content, content_type)
    locations = [p.content_location or "" for p in parts]
    assert {loc.split("/instances/")[1].split("/")[0] for loc in locations} == members
    assert all(loc.endswith("/rendered") and loc.startswith("http://gw.test/dicomweb/studies/")
               for loc in locations)
    for part in parts:
        assert part.content_type == "image/jpeg"
        assert Image.open(io.BytesIO(part.body)).size == (ct.Columns, ct.Rows)


async def test_rendered_study_skips_instances_without_pixels(client: httpx.AsyncClient,
                                                             data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    in_study = [d for d in data if d.StudyInstanceUID == ct.StudyInstanceUID]
    images = {str(d.SOPInstanceUID) for d in in_study if "PixelData" in d}
    assert len(images) < len(in_study)  # the SR is there
    response = await client.get(_url(ct, "/rendered", level="study"),
                                headers={"Accept": "image/png"})
    parts = parse_multipart(response.content, response.headers["content-type"])
    got = {(p.content_location or "").split("/instances/")[1].split("/")[0] for p in parts}
    assert got == images
    assert all(p.content_type == "image/png" for p in parts)


async def test_rendering_an_instance_without_pixels_is_406(client: httpx.AsyncClient,
                                                           data: list[Dataset]) -> None:
    sr = _first(data, Modality="SR")
    response = await client.get(_url(sr, "/rendered"), headers={"Accept": "image/jpeg"})
    assert response.status_code == 406
    series = await client.get(_url(sr, "/rendered", level="series"), headers={"Accept": "*/*"})
    assert series.status_code == 406


# -- thumbnails ---------------------------------------------------------------------------------


async def test_series_thumbnail_is_its_middle_instance(client: httpx.AsyncClient,
                                                       data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    series = sorted((d for d in data if d.SeriesInstanceUID == ct.SeriesInstanceUID),
                    key=lambda d: int(d.InstanceNumber))
    middle = series[(len(series) - 1) // 2]
    response = await client.get(_url(ct, "/thumbnail", level="series"),
                                headers={"Accept": "image/png"})
    picture = _picture(response, "PNG")
    assert picture.size == (ct.Columns, ct.Rows)  # 64x64 fits 128x128: not enlarged
    assert np.array_equal(np.asarray(picture), display_frame(middle, 1))
    default = await client.get(_url(ct, "/thumbnail", level="series"))
    assert default.headers["content-type"] == "image/jpeg"


async def test_study_thumbnail_skips_non_image_series(client: httpx.AsyncClient,
                                                      data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    first_series = min((d for d in data if d.StudyInstanceUID == ct.StudyInstanceUID
                        and d.Modality != "SR"), key=lambda d: int(d.SeriesNumber))
    series = sorted((d for d in data if d.SeriesInstanceUID == first_series.SeriesInstanceUID),
                    key=lambda d: int(d.InstanceNumber))
    response = await client.get(_url(ct, "/thumbnail", level="study"),
                                headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(_picture(response, "PNG")),
                          display_frame(series[(len(series) - 1) // 2], 1))


async def test_thumbnail_viewport_and_no_phi(client: httpx.AsyncClient,
                                             data: list[Dataset]) -> None:
    cr = _first(data, Modality="CR")
    response = await client.get(_url(cr, "/thumbnail"), params={"viewport": "40,40"})
    picture = _picture(response, "JPEG")
    assert max(picture.size) == 40
    for secret in (str(cr.PatientName), str(cr.PatientID), str(cr.PatientBirthDate)):
        assert secret.encode() not in response.content
        assert all(secret not in value for value in response.headers.values())
    assert not picture.info.get("comment") and not picture.getexif()
    bad = await client.get(_url(cr, "/thumbnail"), params={"viewport": "40,40,0,0,5,5"})
    assert bad.status_code == 400


async def test_instance_and_frame_thumbnails(client: httpx.AsyncClient,
                                             data: list[Dataset]) -> None:
    us = _first(data, Modality="US")
    middle = (int(us.NumberOfFrames) + 1) // 2
    instance = await client.get(_url(us, "/thumbnail"), headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(_picture(instance, "PNG")), us.pixel_array[middle - 1])
    frame = await client.get(_url(us, "/frames/2/thumbnail"), headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(_picture(frame, "PNG")), us.pixel_array[1])


async def test_thumbnail_of_unknown_series_is_404(client: httpx.AsyncClient,
                                                  data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/series/1.2.3/thumbnail")
    assert response.status_code == 404


# -- negotiation and parameter errors -----------------------------------------------------------


@pytest.mark.parametrize(("accept", "status"), [
    ("application/dicom, image/jpeg", 400),
    ('multipart/related; type="application/dicom", image/png', 400),
    ("application/dicom", 406),
    ("text/html", 406),
    ("image/webp", 406),
    ("image/gif", 200),
])
async def test_accept_negotiation(client: httpx.AsyncClient, data: list[Dataset], accept: str,
                                  status: int) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"), headers={"Accept": accept})
    assert response.status_code == status, response.text


@pytest.mark.parametrize("params", [
    {"window": "40"}, {"window": "40,0,linear"}, {"window": "40,400,cubic"},
    {"viewport": "0,10"}, {"viewport": "10"}, {"quality": "0"}, {"quality": "abc"},
    {"annotation": "everything"}, {"iccprofile": "cmyk"},
])
async def test_invalid_rendering_parameters_are_400(client: httpx.AsyncClient,
                                                    data: list[Dataset],
                                                    params: dict[str, str]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"), params=params, headers={"Accept": "*/*"})
    assert response.status_code == 400, response.text


async def test_annotation_is_accepted_with_a_warning(client: httpx.AsyncClient,
                                                     data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get(_url(ct, "/rendered"), params={"annotation": "patient,technique"})
    assert response.status_code == 200
    assert "annotation parameter is not supported" in response.headers["warning"]
    assert str(ct.PatientName).encode() not in response.content


async def test_unknown_instance_and_bad_uid(client: httpx.AsyncClient,
                                            data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    unknown = _url(ct, "/rendered", level="series").replace("/rendered",
                                                            "/instances/1.2.3.4/rendered")
    assert (await client.get(unknown, headers={"Accept": "*/*"})).status_code == 404
    bad = await client.get("/dicomweb/studies/not-a-uid/rendered", headers={"Accept": "*/*"})
    assert bad.status_code == 400


async def test_named_pacs_prefix(client: httpx.AsyncClient, data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get("/pacs/demo" + _url(ct, "/rendered"), headers={"Accept": "*/*"})
    _picture(response, "JPEG")
    unknown = await client.get("/pacs/nope" + _url(ct, "/rendered"), headers={"Accept": "*/*"})
    assert unknown.status_code == 404


# -- WADO-URI -----------------------------------------------------------------------------------


async def test_wado_uri_application_dicom(client: httpx.AsyncClient, data: list[Dataset]) -> None:
    mr = _first(data, Modality="MR")
    response = await client.get("/dicomweb/wado",
                                params=_wado_uri(mr, contentType="application/dicom"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-location"].startswith("http://gw.test/dicomweb/wado?")
    got = dcmread(io.BytesIO(response.content))
    assert got.SOPInstanceUID == mr.SOPInstanceUID
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, mr.pixel_array)
    assert got.PatientName == mr.PatientName  # no de-identification unless asked


@pytest.mark.parametrize(("syntax", "status"), [
    ("1.2.840.10008.1.2.1", 200),
    ("1.2.840.10008.1.2.5", 200),     # RLE Lossless: the gateway can encode it
    ("1.2.840.10008.1.2", 406),       # Implicit VR LE: never on the web
    ("1.2.840.10008.1.2.2", 406),     # Explicit VR Big Endian: never on the web
    ("1.2.3.4.5", 406),               # not a known transfer syntax
    ("not-a-uid", 400),
])
async def test_wado_uri_transfer_syntax(client: httpx.AsyncClient, data: list[Dataset],
                                        syntax: str, status: int) -> None:
    ct = _first(data, Modality="CT")
    response = await client.get("/dicomweb/wado", params=_wado_uri(
        ct, contentType="application/dicom", transferSyntax=syntax))
    assert response.status_code == status, response.text
    if status == 200:
        got = dcmread(io.BytesIO(response.content))
        assert str(got.file_meta.TransferSyntaxUID) == syntax
        assert np.array_equal(got.pixel_array, ct.pixel_array)


async def test_wado_uri_rendered_defaults_and_root_path(client: httpx.AsyncClient,
                                                        data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    for path in ("/dicomweb/wado", "/wado", "/pacs/demo/dicomweb/wado"):
        response = await client.get(path, params=_wado_uri(ct), headers={"Accept": "*/*"})
        assert _picture(response, "JPEG").size == (ct.Columns, ct.Rows)
        assert response.headers["content-type"] == "image/jpeg"
    no_accept = await client.get("/wado", params=_wado_uri(ct))
    _picture(no_accept, "JPEG")


async def test_wado_uri_rendering_parameters(client: httpx.AsyncClient,
                                             data: list[Dataset]) -> None:
    ct = _first(data, Modality="CT")
    windowed = await client.get("/dicomweb/wado", params=_wado_uri(
        ct, contentType="image/png", windowCenter="-600", windowWidth="1500"))
    assert np.array_equal(np.asarray(_picture(windowed, "PNG")),
                          display_frame(ct, 1, Window(-600, 1500)))
    region = await client.get("/dicomweb/wado", params=_wado_uri(
        ct, contentType="image/png", region="0,0,0.5,0.25"))
    assert np.array_equal(np.asarray(_picture(region, "PNG")), display_frame(ct, 1)[:16, :32])
    rows = await client.get("/dicomweb/wado", params=_wado_uri(ct, rows="32"))
    assert _picture(rows, "JPEG").size == (32, 32)
    both = await client.get("/dicomweb/wado", params=_wado_uri(ct, rows="32", columns="16"))
    assert _picture(both, "JPEG").size == (16, 16)
    us = _first(data, Modality="US")
    frame = await client.get("/dicomweb/wado", params=_wado_uri(
        us, contentType="image/png", frameNumber="4"))
    assert np.array_equal(np.asarray(_picture(frame, "PNG")), us.pixel_array[3])
    gif = await client.get("/dicomweb/wado", params=_wado_uri(us, contentType="image/gif"))
    assert getattr(_picture(gif, "GIF"), "n_frames", 1) == int(us.NumberOfFrames)


@pytest.mark.parametrize(("change", "status"), [
    ({"requestType": None}, 400),
    ({"requestType": "wado"}, 400),
    ({"requestType": "WADO-RS"}, 400),
    ({"objectUID": None}, 400),
    ({"seriesUID": None}, 400),
    ({"studyUID": None, "studyuid": "KEEP"}, 400),   # names are case-sensitive
    ({"objectUID": "1.2.3..4"}, 400),
    ({"objectUID": "1.2.3.4"}, 404),
    ({"contentType": "text/html"}, 406),
    ({"contentType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}, 400),
    ({"windowCenter": "40"}, 400),
    ({"windowWidth": "400"}, 400),
    ({"windowCenter": "40", "windowWidth": "0"}, 400),
    ({"frameNumber": "2"}, 400),
    ({"frameNumber": "0"}, 400),
    ({"rows": "-5"}, 400),
    ({"region": "0.5,0.5,0.2,0.9"}, 400),
    ({"imageQuality": "101"}, 400),
    ({"contentType": "application/dicom", "rows": "10"}, 400),
    ({"contentType": "image/jpeg", "transferSyntax": "1.2.840.10008.1.2.1"}, 400),
    ({"contentType": "application/dicom", "anonymize": "yes"}, 400),
    ({"presentationUID": "1.2.3", "presentationSeriesUID": "1.2.4"}, 400),
    ({"contentType": "image/png,application/dicom"}, 200),
    ({"annotation": "patient"}, 200),
    ({"charset": "UTF-8", "unknownParameter": "x"}, 200),
])
async def test_wado_uri_errors(client: httpx.AsyncClient, data: list[Dataset],
                               change: dict[str, str | None], status: int) -> None:
    ct = _first(data, Modality="CT")
    params = _wado_uri(ct)
    for name, value in change.items():
        if value is None:
            params.pop(name, None)
        elif value == "KEEP":
            params[name] = str(ct.StudyInstanceUID)
        else:
            params[name] = value
    response = await client.get("/dicomweb/wado", params=params, headers={"Accept": "*/*"})
    assert response.status_code == status, response.text
