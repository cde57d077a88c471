"""A real DICOMweb client (dicomweb-client) retrieving through the gateway in front of real PACS
(Orthanc and DCMTK dcmqrscp), with C-GET and with C-MOVE: instances, metadata, bulk data and
frames, as the client builds its Accept headers, compared with the data the peers hold."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from tests.peers import DcmqrscpServer, OrthancServer, PacsEndpoint
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
PIXEL_DATA = "7FE00010"
COMBINATIONS = [("orthanc", "get"), ("orthanc", "move"), ("dcmqrscp", "get"), ("dcmqrscp", "move")]


def _endpoint(request: pytest.FixtureRequest, kind: str) -> PacsEndpoint:
    """The session-wide peer of ``kind`` (started on first use) as an endpoint."""
    if kind == "orthanc":
        orthanc: OrthancServer = request.getfixturevalue("orthanc")
        return PacsEndpoint(kind, orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    dcmqrscp: DcmqrscpServer = request.getfixturevalue("dcmqrscp")
    return PacsEndpoint(kind, dcmqrscp.ae_title, dcmqrscp.host, dcmqrscp.port)


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def gateway(request: pytest.FixtureRequest, gateway_storage_port: int) -> Iterator[GatewayServer]:
    """One gateway per (peer, retrieve method), shared by the tests of this module.

    Module scope with parameters: pytest runs all tests of one combination, then tears its
    gateway down before the next, so the C-MOVE storage port is never bound twice."""
    kind, method = request.param
    pacs = _endpoint(request, kind)
    peer = peer_settings(kind, pacs.ae_title, pacs.host, pacs.port, retrieve_method=method)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, storage_scp_enabled=method == "move",
                                storage_scp_host="127.0.0.1", storage_scp_port=gateway_storage_port)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> DICOMwebClient:
    """A client whose requests name the gateway's real origin.

    dicomweb-client 0.61 sends ``Host: 127.0.0.1`` without the port on non-streamed requests
    (RFC 9110 7.2 requires it for a non-default port), and the gateway mints BulkDataURIs from
    the Host the client sent; ``X-Forwarded-Host`` (trusted by default) carries the port, as a
    reverse proxy would. ``test_bulk_data_uris_follow_the_host_header`` shows the raw case."""
    return DICOMwebClient(url=gateway.dicomweb,
                          headers={"X-Forwarded-Host": f"127.0.0.1:{gateway.port}"})


def _uid(ds: Dataset | dict, keyword: str, tag: str) -> str:
    if isinstance(ds, Dataset):
        return str(ds[keyword].value)
    return str(ds[tag]["Value"][0])


def _ct_series(datasets: list[Dataset]) -> tuple[str, str, dict[str, Dataset]]:
    """The first CT series: study UID, series UID and its instances by SOP Instance UID."""
    first = next(d for d in datasets if d.Modality == "CT")
    series = {str(d.SOPInstanceUID): d for d in datasets
              if d.SeriesInstanceUID == first.SeriesInstanceUID}
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), series


def _multiframe(datasets: list[Dataset]) -> Dataset:
    return next(d for d in datasets if int(d.get("NumberOfFrames", 1) or 1) > 2)


def _assert_same_instance(got: Dataset, original: Dataset) -> None:
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.SeriesInstanceUID == original.SeriesInstanceUID
    assert got.StudyInstanceUID == original.StudyInstanceUID
    assert got.SOPClassUID == original.SOPClassUID
    assert str(got.file_meta.TransferSyntaxUID) == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, original.pixel_array)


# -- instances ---------------------------------------------------------------------------------


def test_retrieve_study(client: DICOMwebClient, sample_datasets: list[Dataset]) -> None:
    study_uid, _, _ = _ct_series(sample_datasets)
    originals = {str(d.SOPInstanceUID): d for d in sample_datasets
                 if str(d.StudyInstanceUID) == study_uid}
    got = client.retrieve_study(study_uid)
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(originals)
    for ds in got:
        _assert_same_instance(ds, originals[str(ds.SOPInstanceUID)])


def test_retrieve_series(client: DICOMwebClient, sample_datasets: list[Dataset]) -> None:
    study_uid, series_uid, originals = _ct_series(sample_datasets)
    got = client.retrieve_series(study_uid, series_uid)
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(originals)
    for ds in got:
        _assert_same_instance(ds, originals[str(ds.SOPInstanceUID)])


def test_retrieve_instance(client: DICOMwebClient, sample_datasets: list[Dataset]) -> None:
    for original in (sample_datasets[0], _multiframe(sample_datasets),
                     next(d for d in sample_datasets if d.get("SamplesPerPixel") == 3)):
        got = client.retrieve_instance(str(original.StudyInstanceUID),
                                       str(original.SeriesInstanceUID),
                                       str(original.SOPInstanceUID))
        _assert_same_instance(got, original)
        assert got.PatientName == original.PatientName


def test_retrieve_instance_any_transfer_syntax(client: DICOMwebClient,
                                               sample_datasets: list[Dataset]) -> None:
    # ("application/dicom", "*") is how dicomweb-client asks for the stored syntax.
    original = sample_datasets[1]
    got = client.retrieve_instance(str(original.StudyInstanceUID),
                                   str(original.SeriesInstanceUID),
                                   str(original.SOPInstanceUID),
                                   media_types=(("application/dicom", "*"),))
    _assert_same_instance(got, original)


def test_iter_series_streams_every_instance(client: DICOMwebClient,
                                           sample_datasets: list[Dataset]) -> None:
    study_uid, series_uid, originals = _ct_series(sample_datasets)
    seen: list[str] = []
    for ds in client.iter_series(study_uid, series_uid):
        _assert_same_instance(ds, originals[str(ds.SOPInstanceUID)])
        seen.append(str(ds.SOPInstanceUID))
    assert sorted(seen) == sorted(originals)


def test_iter_study_streams_every_instance(client: DICOMwebClient,
                                          sample_datasets: list[Dataset]) -> None:
    original = _multiframe(sample_datasets)
    study_uid = str(original.StudyInstanceUID)
    expected = sorted(str(d.SOPInstanceUID) for d in sample_datasets
                      if str(d.StudyInstanceUID) == study_uid)
    got = list(client.iter_study(study_uid))
    assert sorted(str(d.SOPInstanceUID) for d in got) == expected


# -- metadata and bulk data ----------------------------------------------------------------------


def test_metadata_at_every_level_has_bulk_data_uris(client: DICOMwebClient,
                                                    gateway: GatewayServer,
                                                    sample_datasets: list[Dataset]) -> None:
    study_uid, series_uid, originals = _ct_series(sample_datasets)
    series_items = client.retrieve_series_metadata(study_uid, series_uid)
    assert sorted(_uid(i, "SOPInstanceUID", "00080018") for i in series_items) == sorted(originals)
    study_items = client.retrieve_study_metadata(study_uid)
    assert len(study_items) == sum(1 for d in sample_datasets
                                   if str(d.StudyInstanceUID) == study_uid)
    sop_uid = next(iter(originals))
    instance_items = client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
    # dicomweb-client returns the single dataset of an instance's metadata as a dict.
    assert isinstance(instance_items, dict)
    assert _uid(instance_items, "SOPInstanceUID", "00080018") == sop_uid
    for item in [*series_items, *study_items, instance_items]:
        pixel = item[PIXEL_DATA]
        assert "Value" not in pixel and "InlineBinary" not in pixel
        assert pixel["BulkDataURI"].startswith(gateway.dicomweb + "/studies/")
        assert _uid(item, "SOPInstanceUID", "00080018") in pixel["BulkDataURI"]
    # pydicom resolves each BulkDataURI through the client, as an application would.
    loaded = Dataset.from_json(
        instance_items,
        bulk_data_uri_handler=lambda _tag, _vr, uri: b"".join(client.retrieve_bulkdata(uri)))
    original = originals[sop_uid]
    assert loaded.Rows == original.Rows and loaded.Columns == original.Columns
    assert loaded.PixelData == original.PixelData
    assert [float(v) for v in loaded.ImagePositionPatient] == [
        float(v) for v in original.ImagePositionPatient]


def test_bulk_data_uris_follow_the_host_header(gateway: GatewayServer,
                                               sample_datasets: list[Dataset]) -> None:
    original = sample_datasets[0]
    bare = DICOMwebClient(url=gateway.dicomweb)
    item = bare.retrieve_instance_metadata(str(original.StudyInstanceUID),
                                           str(original.SeriesInstanceUID),
                                           str(original.SOPInstanceUID))
    path = (f"/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}/bulkdata/7FE00010")
    # The origin is the one the request named: dicomweb-client's port-less Host header.
    assert item[PIXEL_DATA]["BulkDataURI"] == "http://127.0.0.1" + path


def test_retrieve_bulkdata_equals_pixel_data(client: DICOMwebClient,
                                             sample_datasets: list[Dataset]) -> None:
    for original in (sample_datasets[0], _multiframe(sample_datasets)):
        item = client.retrieve_instance_metadata(str(original.StudyInstanceUID),
                                                 str(original.SeriesInstanceUID),
                                                 str(original.SOPInstanceUID))
        uri = item[PIXEL_DATA]["BulkDataURI"]
        parts = client.retrieve_bulkdata(uri)
        assert b"".join(parts) == original.PixelData
        octet = client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))
        assert b"".join(octet) == original.PixelData


# -- frames ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("media_types", [
    None,
    ("application/octet-stream",),
    (("application/octet-stream", "*"),),
    (("application/octet-stream", EXPLICIT_LE),),
], ids=["default", "octet-stream", "octet-stream-any-syntax", "octet-stream-explicit-le"])
def test_retrieve_instance_frames(client: DICOMwebClient, sample_datasets: list[Dataset],
                                  media_types: tuple[str | tuple[str, str], ...] | None) -> None:
    original = _multiframe(sample_datasets)
    frames = original.pixel_array
    got = client.retrieve_instance_frames(str(original.StudyInstanceUID),
                                          str(original.SeriesInstanceUID),
                                          str(original.SOPInstanceUID),
                                          frame_numbers=[1, 2], media_types=media_types)
    assert got == [frames[0].tobytes(), frames[1].tobytes()]
    last = client.retrieve_instance_frames(str(original.StudyInstanceUID),
                                           str(original.SeriesInstanceUID),
                                           str(original.SOPInstanceUID),
                                           frame_numbers=[len(frames), 1],
                                           media_types=media_types)
    assert last == [frames[-1].tobytes(), frames[0].tobytes()]


def test_iter_instance_frames_of_a_single_frame_image(client: DICOMwebClient,
                                                      sample_datasets: list[Dataset]) -> None:
    original = next(d for d in sample_datasets if d.get("SamplesPerPixel") == 3)
    got = list(client.iter_instance_frames(str(original.StudyInstanceUID),
                                           str(original.SeriesInstanceUID),
                                           str(original.SOPInstanceUID), frame_numbers=[1]))
    assert got == [original.PixelData]


def test_missing_frame_is_an_http_error(client: DICOMwebClient,
                                        sample_datasets: list[Dataset]) -> None:
    from requests.exceptions import HTTPError

    original = _multiframe(sample_datasets)
    with pytest.raises(HTTPError) as raised:
        client.retrieve_instance_frames(str(original.StudyInstanceUID),
                                        str(original.SeriesInstanceUID),
                                        str(original.SOPInstanceUID), frame_numbers=[99])
    assert raised.value.response is not None
    assert raised.value.response.status_code == 404
