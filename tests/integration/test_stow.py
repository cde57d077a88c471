"""STOW-RS through the gateway into real PACS (Orthanc, DCMTK dcmqrscp), over the DIMSE engine
``DWG_DIMSE_ENGINE`` names: the instances stored are then found by QIDO-RS and retrieved by
WADO-RS through the same gateway, bit for bit in their pixels; a PACS that refuses a transfer
syntax is reported per instance; and memory stays bounded however large the request."""

from __future__ import annotations

import copy
import io
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from app.demo.compressed import generate_compressed_samples
from app.dicomweb.multipart import encode_multipart, multipart_content_type, parse_multipart
from tests.peers import DcmqrscpServer, OrthancServer, PacsEndpoint
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BOUNDARY = "integration-stow"
STOW_TYPE = multipart_content_type("application/dicom", BOUNDARY)
JSON = {"Accept": "application/dicom+json"}
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def target(request: pytest.FixtureRequest) -> PacsEndpoint:
    """Each writable peer in turn."""
    if request.param == "orthanc":
        orthanc: OrthancServer = request.getfixturevalue("writable_orthanc")
        return PacsEndpoint("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    dcmqrscp: DcmqrscpServer = request.getfixturevalue("writable_dcmqrscp")
    return PacsEndpoint("dcmqrscp", dcmqrscp.ae_title, dcmqrscp.host, dcmqrscp.port)


def gateway(pacs: PacsEndpoint, **overrides: object) -> GatewayServer:
    peer = peer_settings(pacs.kind, pacs.ae_title, pacs.host, pacs.port)
    return GatewayServer(gateway_settings(peer, ae_title=GATEWAY_AE, read_only=False,
                                          **overrides))


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def new_study(datasets: list[Dataset]) -> list[Dataset]:
    """Copies of ``datasets`` in a study (and series) of their own, of the first one's patient,
    so that every test run stores instances the PACS has never seen."""
    study, series = generate_uid(), {}
    out = []
    for ds in datasets:
        copied = copy.deepcopy(ds)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            setattr(copied, keyword, datasets[0].get(keyword, ""))
        copied.StudyInstanceUID = study
        copied.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        copied.SOPInstanceUID = generate_uid()
        copied.file_meta.MediaStorageSOPInstanceUID = copied.SOPInstanceUID
        out.append(copied)
    return out


def value(obj: dict[str, object], tag: str) -> list[object]:
    return obj[tag]["Value"]  # type: ignore[index, no-any-return]


def test_stored_instances_are_found_and_retrieved(target: PacsEndpoint,
                                                  sample_datasets: list[Dataset]) -> None:
    ct = next(ds for ds in sample_datasets if ds.Modality == "CT")
    mr = next(ds for ds in sample_datasets if ds.Modality == "MR")
    originals = [ds for ds in sample_datasets if ds.StudyInstanceUID == ct.StudyInstanceUID]
    originals += [ds for ds in sample_datasets if ds.SeriesInstanceUID == mr.SeriesInstanceUID]
    stored = new_study(originals)
    study = str(stored[0].StudyInstanceUID)
    body = encode_multipart([(part10(ds), "application/dicom") for ds in stored], BOUNDARY)
    with gateway(target) as server, server.client() as client:
        response = client.post(f"/studies/{study}", content=body,
                               headers={"Content-Type": STOW_TYPE, **JSON})
        assert response.status_code == 200, response.text
        referenced = value(response.json(), "00081199")
        assert {value(item, "00081155")[0] for item in referenced} == {  # type: ignore[arg-type]
            str(ds.SOPInstanceUID) for ds in stored}

        found = client.get("/studies", params={"StudyInstanceUID": study}, headers=JSON)
        assert found.status_code == 200 and len(found.json()) == 1
        by_sop = {str(ds.SOPInstanceUID): ds for ds in stored}
        for series in {str(ds.SeriesInstanceUID) for ds in stored}:
            listed = client.get(f"/studies/{study}/series/{series}/instances", headers=JSON)
            expected = {sop for sop, ds in by_sop.items() if ds.SeriesInstanceUID == series}
            assert {value(obj, "00080018")[0] for obj in listed.json()} == expected
            retrieved = client.get(f"/studies/{study}/series/{series}",
                                   headers={"Accept": MULTIPART_DICOM})
            assert retrieved.status_code == 200
            parts = parse_multipart(retrieved.content, retrieved.headers["content-type"])
            assert len(parts) == len(expected)
            for part in parts:
                got = dcmread(io.BytesIO(part.body))
                original = by_sop[str(got.SOPInstanceUID)]
                assert got.StudyInstanceUID == study
                assert np.array_equal(got.pixel_array, original.pixel_array)


def test_a_refused_transfer_syntax_fails_that_instance_only(
        writable_dcmqrscp: DcmqrscpServer, sample_datasets: list[Dataset]) -> None:
    """dcmqrscp (default options) takes uncompressed syntaxes only: a JPEG instance fails with
    C122 per PS3.18 Table I.2-2, the uncompressed one beside it is stored."""
    jpeg = next(ds for ds in generate_compressed_samples()
                if str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50")
    compressed, plain = new_study([jpeg])[0], new_study([sample_datasets[0]])[0]
    pacs = PacsEndpoint("dcmqrscp", writable_dcmqrscp.ae_title, writable_dcmqrscp.host,
                        writable_dcmqrscp.port)
    body = encode_multipart([(part10(compressed), "application/dicom"),
                             (part10(plain), "application/dicom")], BOUNDARY)
    with gateway(pacs) as server, server.client() as client:
        response = client.post("/studies", content=body,
                               headers={"Content-Type": STOW_TYPE, **JSON})
    assert response.status_code == 202, response.text
    failed = value(response.json(), "00081198")
    assert [(value(i, "00081155")[0], value(i, "00081197")[0]) for i in failed] == [  # type: ignore[arg-type]
        (str(compressed.SOPInstanceUID), TRANSFER_SYNTAX_NOT_SUPPORTED)]
    assert [value(i, "00081155")[0] for i in value(response.json(), "00081199")] == [  # type: ignore[arg-type]
        str(plain.SOPInstanceUID)]


def _large_instance(template: Dataset, study: str, series: str, pixels: bytes) -> bytes:
    ds = copy.deepcopy(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = 512, 1024
    ds.PixelData = pixels
    return part10(ds)


def test_memory_stays_bounded_whatever_the_request_size(
        writable_dcmqrscp: DcmqrscpServer, sample_datasets: list[Dataset]) -> None:
    """40 instances of 1 MiB (a 40 MiB body, sent as it is generated) through a gateway in
    this process: the peak of Python memory (tracemalloc: gateway and client together) stays
    within a few instances, not the body. A gateway that buffered the request would need more
    than 40 MiB (dcmqrscp, another process, holds what is stored)."""
    template = next(ds for ds in sample_datasets if ds.Modality == "CT")
    study, series = generate_uid(), generate_uid()
    pixels = bytes(range(256)) * (512 * 1024 * 2 // 256)
    count = 40
    pacs = PacsEndpoint("dcmqrscp", writable_dcmqrscp.ae_title, writable_dcmqrscp.host,
                        writable_dcmqrscp.port)

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield _large_instance(template, study, series, pixels)
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    with gateway(pacs) as server, server.client() as client:
        client.get("/studies", params={"limit": 1}, headers=JSON)  # warm up, outside the peak
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            response = client.post("/studies", content=body(),
                                   headers={"Content-Type": STOW_TYPE, **JSON})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert len(value(response.json(), "00081199")) == count
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 40 MiB request"
