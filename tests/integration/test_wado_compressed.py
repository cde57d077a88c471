"""WADO-RS of compressed originals (RLE, JPEG 2000 lossless, JPEG baseline, multi-frame RLE,
JPEG-LS) through the gateway in front of real Orthanc and dcmqrscp, with C-GET and C-MOVE:
default and as-stored transfer syntaxes, transcoding, 406s, and compressed frames.

Peer behaviour seen here (Orthanc 1.10.1, DCMTK 3.6.7):
- Orthanc sends every instance as stored, over C-GET (it picks the context proposed for the
  stored syntax) and over C-MOVE.
- dcmqrscp has no codecs, so it can only send a file in its stored syntax. Over C-GET it uses
  the first accepted context of the SOP class whatever its syntax, and by default accepts only
  uncompressed ones; over C-MOVE it proposes uncompressed syntaxes plus at most one compressed
  syntax (``-x?`` option) in a single context per SOP class. Started with ``+xr -xr`` it serves
  the RLE instances through the gateway: over C-GET because the gateway guesses the storage
  classes from the series Modality (dcmqrscp returns no SOPClassUID), proposes every syntax, and
  asks again with compressed contexts first for instances the first pass could not get; over
  C-MOVE because the gateway's Storage SCP accepts lossless compressed syntaxes first.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from app.demo.compressed import SampleSpec
from app.dicomweb.multipart import Part, parse_multipart
from tests.peers import DcmqrscpServer, OrthancServer
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = pytest.mark.timeout(120)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
DICOM = 'multipart/related; type="application/dicom"'

COMBINATIONS = [("orthanc", "get"), ("orthanc", "move"), ("dcmqrscp", "get"), ("dcmqrscp", "move")]



@dataclass(frozen=True)
class Target:
    """A gateway in front of one compressed peer, with one retrieve method."""

    kind: str
    method: str
    server: GatewayServer


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def target(request: pytest.FixtureRequest, compressed_storage_port: int) -> Iterator[Target]:
    kind, method = request.param
    if kind == "orthanc":
        orthanc: OrthancServer = request.getfixturevalue("compressed_orthanc")
        ae_title, port = orthanc.ae_title, orthanc.dicom_port
    else:
        dcmqrscp: DcmqrscpServer = request.getfixturevalue("compressed_dcmqrscp")
        ae_title, port = dcmqrscp.ae_title, dcmqrscp.port
    peer = peer_settings(kind, ae_title, "127.0.0.1", port, retrieve_method=method,
                         dimse_timeout=20)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, storage_scp_enabled=method == "move",
                                storage_scp_host="127.0.0.1",
                                storage_scp_port=compressed_storage_port)
    with GatewayServer(settings) as server:
        yield Target(kind, method, server)


@pytest.fixture
def http(target: Target) -> Iterator[httpx.Client]:
    """A client for requests that need no pixel data from the PACS."""
    with target.server.client() as client:
        yield client


@pytest.fixture
def pixels_http(target: Target, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client for requests served from compressed pixel data held by the PACS."""
    with target.server.client() as client:
        yield client


def _only_orthanc(target: Target) -> None:
    if target.kind != "orthanc":
        pytest.skip("dcmqrscp is started for RLE only: without codecs it can send one "
                    "compressed syntax per process, never JPEG 2000/JPEG/JPEG-LS alongside RLE")


# -- helpers -------------------------------------------------------------------------------------


def _series(datasets: list[Dataset], syntax: str, multiframe: bool = False) -> list[Dataset]:
    """The instances stored in ``syntax`` (single- or multi-frame ones)."""
    return [d for d in datasets if str(d.file_meta.TransferSyntaxUID) == syntax
            and (int(d.get("NumberOfFrames", 1) or 1) > 1) == multiframe]


def _path(ds: Dataset, level: str = "instance") -> str:
    out = f"/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out


def _parts(response: httpx.Response) -> list[Part]:
    assert response.status_code == 200, response.text[:500]
    return parse_multipart(response.content, response.headers["content-type"])


def _instances(response: httpx.Response) -> list[tuple[str, Dataset]]:
    """(part Content-Type, dataset) of each part; the part's syntax must match its File Meta."""
    out: list[tuple[str, Dataset]] = []
    for part in _parts(response):
        ds: Dataset = dcmread(io.BytesIO(part.body))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert part.headers["Content-Type"] == f"application/dicom; transfer-syntax={syntax}"
        out.append((syntax, ds))
    return out


def _frames(ds: Dataset) -> list[bytes]:
    """The encapsulated frames of a compressed dataset."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=count))


def _assert_same(got: Dataset, original: Dataset, spec: SampleSpec) -> None:
    """UIDs unchanged, pixels exactly the original array."""
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        assert got[keyword].value == original[keyword].value
    assert np.array_equal(got.pixel_array, spec.pixels)


# -- default and as-stored ---------------------------------------------------------------------


def test_default_decompresses_lossless_originals(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:
    syntaxes = [RLE] if target.kind == "dcmqrscp" else [RLE, J2K_LOSSLESS, JPEG_LS_LOSSLESS]
    series = [s for ts in syntaxes for mf in (False, True) if (s := _series(
        compressed_datasets, ts, mf))]
    for originals in series:
        by_uid = {str(d.SOPInstanceUID): d for d in originals}
        got = _instances(pixels_http.get(_path(originals[0], "series"), headers={"Accept": DICOM}))
        assert sorted(str(d.SOPInstanceUID) for _, d in got) == sorted(by_uid)
        for syntax, ds in got:
            assert syntax == EXPLICIT_LE
            _assert_same(ds, by_uid[str(ds.SOPInstanceUID)], compressed_specs[
                str(ds.SOPInstanceUID)])


def test_default_keeps_lossy_jpeg_as_stored(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:
    # Documented choice (app/services/wado.py, PS3.18 8.7.3.5.2): without a transfer-syntax the
    # default is Explicit VR LE unless only lossy pixels exist, which are then sent as stored.
    _only_orthanc(target)
    originals = {str(d.SOPInstanceUID): d for d in _series(compressed_datasets, JPEG_BASELINE)}
    got = _instances(pixels_http.get(_path(next(iter(originals.values())), "series")))
    assert sorted(str(d.SOPInstanceUID) for _, d in got) == sorted(originals)
    for syntax, ds in got:
        original = originals[str(ds.SOPInstanceUID)]
        assert syntax == JPEG_BASELINE
        assert ds.LossyImageCompression == "01"
        assert _frames(ds) == _frames(original)
        error = np.abs(ds.pixel_array.astype(int) - compressed_specs[
            str(ds.SOPInstanceUID)].pixels.astype(int))
        assert error.mean() < 4
    # Asked for explicitly, lossy pixels are decoded (and stay flagged as lossy).
    first = next(iter(originals.values()))
    ((syntax, ds),) = _instances(pixels_http.get(_path(first), headers={
        "Accept": f"{DICOM}; transfer-syntax={EXPLICIT_LE}"}))
    assert syntax == EXPLICIT_LE
    assert ds.LossyImageCompression == "01"
    assert ds.SOPInstanceUID == first.SOPInstanceUID


def test_as_stored_is_byte_identical(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
) -> None:
    originals = {str(d.SOPInstanceUID): d for d in compressed_datasets}
    accept = {"Accept": f"{DICOM}; transfer-syntax=*"}
    if target.kind == "orthanc":
        got = _instances(pixels_http.get(_path(compressed_datasets[0], "study"), headers=accept))
        assert sorted(str(d.SOPInstanceUID) for _, d in got) == sorted(originals)
    else:
        got = [item for d in (_series(compressed_datasets, RLE)[0],
                              _series(compressed_datasets, RLE, True)[0])
               for item in _instances(pixels_http.get(_path(d, "series"), headers=accept))]
    for syntax, ds in got:
        original = originals[str(ds.SOPInstanceUID)]
        assert syntax == str(original.file_meta.TransferSyntaxUID)
        assert _frames(ds) == _frames(original)


# -- transcoding ---------------------------------------------------------------------------------


def test_transcode_to_rle(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:
    _only_orthanc(target)
    for source in (J2K_LOSSLESS, JPEG_LS_LOSSLESS):
        originals = _series(compressed_datasets, source)
        if not originals:
            continue  # JPEG-LS only when pyjpegls is installed
        by_uid = {str(d.SOPInstanceUID): d for d in originals}
        got = _instances(pixels_http.get(_path(originals[0], "series"), headers={
            "Accept": f"{DICOM}; transfer-syntax={RLE}"}))
        assert len(got) == len(by_uid)
        for syntax, ds in got:
            assert syntax == RLE
            _assert_same(ds, by_uid[str(ds.SOPInstanceUID)],
                         compressed_specs[str(ds.SOPInstanceUID)])


def test_transcode_rle_to_jpeg2000_lossless(
    pixels_http: httpx.Client, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:
    for original in (_series(compressed_datasets, RLE)[0],
                     _series(compressed_datasets, RLE, True)[0]):
        ((syntax, ds),) = _instances(pixels_http.get(_path(original), headers={
            "Accept": f"{DICOM}; transfer-syntax={J2K_LOSSLESS}"}))
        assert syntax == J2K_LOSSLESS
        assert len(_frames(ds)) == int(original.get("NumberOfFrames", 1) or 1)
        _assert_same(ds, original, compressed_specs[str(original.SOPInstanceUID)])


def test_unknown_syntax_is_406_without_asking_the_pacs(
    http: httpx.Client, compressed_datasets: list[Dataset],
) -> None:
    original = _series(compressed_datasets, RLE)[0]
    response = http.get(_path(original), headers={
        "Accept": f"{DICOM}; transfer-syntax=1.2.3.4"})
    assert response.status_code == 406
    assert response.headers["content-type"].startswith("application/dicom+json")


def test_unproducible_syntax_is_406_before_any_byte(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
) -> None:
    # No JPEG baseline encoder; lossy J2K only when allowed; lossy never re-encoded as lossless.
    rle = _series(compressed_datasets, RLE)[0]
    cases = [(rle, JPEG_BASELINE), (rle, J2K_LOSSY)]
    if target.kind == "orthanc":
        jpeg = _series(compressed_datasets, JPEG_BASELINE)[0]
        cases += [(jpeg, J2K_LOSSLESS), (jpeg, RLE)]
    for original, syntax in cases:
        response = pixels_http.get(_path(original), headers={
            "Accept": f"{DICOM}; transfer-syntax={syntax}"})
        assert response.status_code == 406, (syntax, response.status_code)
        assert syntax in response.json()["00000902"]["Value"][0]


def test_mixed_study_falls_back_per_part_to_another_accepted_syntax(
    target: Target, compressed_datasets: list[Dataset],
) -> None:
    _only_orthanc(target)
    accept = f"{DICOM}; transfer-syntax={J2K_LOSSLESS}, {DICOM}; transfer-syntax=*; q=0.5"
    with target.server.client() as client:
        got = _instances(client.get(_path(compressed_datasets[0], "study"),
                                    headers={"Accept": accept}))
    syntaxes = {str(ds.SOPInstanceUID): syntax for syntax, ds in got}
    for original in compressed_datasets:
        stored = str(original.file_meta.TransferSyntaxUID)
        expected = JPEG_BASELINE if stored == JPEG_BASELINE else J2K_LOSSLESS
        assert syntaxes[str(original.SOPInstanceUID)] == expected


# -- frames and bulk data --------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [
    'multipart/related; type="image/dicom-rle"',
    "multipart/related; type=application/octet-stream; transfer-syntax=*",
    'multipart/related; type="image/dicom-rle"; transfer-syntax=1.2.840.10008.1.2.5',
], ids=["dicom-rle", "octet-stream-any", "dicom-rle-explicit-syntax"])
def test_compressed_frames_as_stored(
    pixels_http: httpx.Client, compressed_datasets: list[Dataset], accept: str,
) -> None:
    original = _series(compressed_datasets, RLE, True)[0]
    stored = _frames(original)
    response = pixels_http.get(f"{_path(original)}/frames/1,3,4", headers={"Accept": accept})
    parts = _parts(response)
    assert 'type="image/dicom-rle"' in response.headers["content-type"]
    assert [p.body for p in parts] == [stored[0], stored[2], stored[3]]
    for number, part in zip((1, 3, 4), parts, strict=True):
        assert part.headers["Content-Type"] == f"image/dicom-rle; transfer-syntax={RLE}"
        assert part.headers["Content-Location"].endswith(f"/frames/{number}")


@pytest.mark.parametrize("accept", [
    None,
    'multipart/related; type="application/octet-stream"',
    f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}',
], ids=["no-accept", "octet-stream", "octet-stream-explicit-le"])
def test_compressed_frames_decoded(
    pixels_http: httpx.Client, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec], accept: str | None,
) -> None:
    original = _series(compressed_datasets, RLE, True)[0]
    pixels = compressed_specs[str(original.SOPInstanceUID)].pixels
    headers = {"Accept": accept} if accept else {}
    parts = _parts(pixels_http.get(f"{_path(original)}/frames/2,4", headers=headers))
    assert [p.body for p in parts] == [pixels[1].tobytes(), pixels[3].tobytes()]
    for part in parts:
        assert part.headers["Content-Type"] == (
            f"application/octet-stream; transfer-syntax={EXPLICIT_LE}")


def test_compressed_frames_transcoded(
    pixels_http: httpx.Client, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:

    original = _series(compressed_datasets, RLE, True)[0]
    pixels = compressed_specs[str(original.SOPInstanceUID)].pixels
    parts = _parts(pixels_http.get(f"{_path(original)}/frames/2", headers={
        "Accept": 'multipart/related; type="image/jp2"'}))
    (part,) = parts
    assert part.headers["Content-Type"] == f"image/jp2; transfer-syntax={J2K_LOSSLESS}"
    frame = Dataset()
    for keyword in ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
                    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(frame, keyword, original[keyword].value)
    frame.file_meta = FileMetaDataset()
    frame.file_meta.TransferSyntaxUID = UID(J2K_LOSSLESS)
    frame.PixelData = encapsulate([part.body])
    frame["PixelData"].VR = "OB"
    decoded, _ = get_decoder(J2K_LOSSLESS).as_array(frame)
    assert np.array_equal(decoded, pixels[1])


def test_bulk_data_of_a_compressed_instance(
    pixels_http: httpx.Client, target: Target, compressed_datasets: list[Dataset],
    compressed_specs: dict[str, SampleSpec],
) -> None:
    original = _series(compressed_datasets, RLE)[0]
    response = pixels_http.get(f"{_path(original)}/metadata")
    assert response.status_code == 200, response.text[:300]
    (item,) = response.json()
    uri = item["7FE00010"]["BulkDataURI"]
    assert uri.startswith(target.server.dicomweb)
    relative = uri[len(target.server.dicomweb):]
    raw = _parts(pixels_http.get(relative, headers={
        "Accept": 'multipart/related; type="application/octet-stream"'}))
    assert b"".join(p.body for p in raw) == compressed_specs[
        str(original.SOPInstanceUID)].pixels.tobytes()
    stored = _parts(pixels_http.get(relative, headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}))
    assert [p.body for p in stored] == _frames(original)
