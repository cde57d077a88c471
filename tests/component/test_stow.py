"""STOW-RS against the in-process demo PACS, over either DIMSE engine (``DWG_DIMSE_ENGINE``):
instances stored by C-STORE are then found by QIDO-RS and retrieved by WADO-RS through the same
gateway (the cache forgot the stale series), PACS statuses become the Store Instances Response,
one association serves a request, the body is read as a stream, and the refusals (read_only,
media types, sizes, study mismatch) are precise."""

from __future__ import annotations

import copy
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import encode_multipart, multipart_content_type, parse_multipart
from tests.component.conftest import gateway_settings, open_app, peer_config
from tests.support.gateway_server import GatewayServer

pytestmark = pytest.mark.timeout(60)

BOUNDARY = "stow-test-boundary"
STOW_TYPE = multipart_content_type("application/dicom", BOUNDARY)
JSON = {"Accept": "application/dicom+json"}
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
CT = "1.2.840.10008.5.1.4.1.1.2"


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def new_instance(template: Dataset, **uids: str) -> Dataset:
    """A copy of ``template`` with a new SOP Instance UID (and any UIDs given)."""
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def stow_body(*datasets: Dataset, extra: list[bytes] | None = None) -> bytes:
    parts = [(part10(ds), "application/dicom") for ds in datasets]
    parts += [(raw, "application/dicom") for raw in extra or []]
    return encode_multipart(parts, BOUNDARY)


def value(obj: dict[str, Any], tag: str) -> Any:
    return obj[tag]["Value"]


@pytest.fixture
def pacs(samples: list[Dataset]) -> Iterator[DemoPacs]:
    """A demo PACS of the test's own (stores change it), holding the sample studies."""
    server = DemoPacs(samples, ae_title="STOW_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


def writable(pacs: DemoPacs, **extra: Any) -> Any:
    return gateway_settings(peer_config(pacs.port, "STOW_PACS"), read_only=False, **extra)


def ct_series(samples: list[Dataset]) -> list[Dataset]:
    first = next(ds for ds in samples if ds.Modality == "CT")
    return [ds for ds in samples if ds.SeriesInstanceUID == first.SeriesInstanceUID]


async def test_stored_instances_are_searched_and_retrieved(samples: list[Dataset],
                                                           pacs: DemoPacs) -> None:
    series = ct_series(samples)
    study, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    added = [new_instance(series[0]), new_instance(series[1])]
    new_uids = {str(ds.SOPInstanceUID) for ds in added}
    instances_url = f"/dicomweb/studies/{study}/series/{series_uid}/instances"
    async with open_app(writable(pacs, cache_backend="memory", qido_cache_ttl=60)) as (client, _):
        # warm the cache: the series (complete), its metadata and a search of its instances
        before = await client.get(f"/dicomweb/studies/{study}/series/{series_uid}",
                                  headers={"Accept": MULTIPART_DICOM})
        assert len(parse_multipart(before.content, before.headers["content-type"])) == len(series)
        assert len((await client.get(instances_url, headers=JSON)).json()) == len(series)
        await client.get(f"/dicomweb/studies/{study}/series/{series_uid}/metadata", headers=JSON)

        response = await client.post(f"/dicomweb/studies/{study}", content=stow_body(*added),
                                     headers={"Content-Type": STOW_TYPE, **JSON})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom+json"
        module = response.json()
        assert value(module, "00081190") == [f"http://gw.test/dicomweb/studies/{study}"]
        referenced = value(module, "00081199")
        assert {value(item, "00081155")[0] for item in referenced} == new_uids
        for item in referenced:
            sop = value(item, "00081155")[0]
            assert value(item, "00081150") == [CT]
            assert value(item, "00081190") == [
                f"http://gw.test{instances_url}/{sop}"]
        assert "00081198" not in module
        assert new_uids <= {str(ds.SOPInstanceUID) for ds in pacs.datasets()}

        # what was cached before the store is not what is answered after it
        found = (await client.get(instances_url, headers=JSON)).json()
        assert new_uids <= {value(obj, "00080018")[0] for obj in found}
        after = await client.get(f"/dicomweb/studies/{study}/series/{series_uid}",
                                 headers={"Accept": MULTIPART_DICOM})
        retrieved = [dcmread(io.BytesIO(p.body)) for p in
                     parse_multipart(after.content, after.headers["content-type"])]
        assert len(retrieved) == len(series) + 2
        assert new_uids <= {str(ds.SOPInstanceUID) for ds in retrieved}
        metadata = (await client.get(f"/dicomweb/studies/{study}/series/{series_uid}/metadata",
                                     headers=JSON)).json()
        assert new_uids <= {value(obj, "00080018")[0] for obj in metadata}
        one = next(iter(new_uids))
        single = await client.get(f"{instances_url}/{one}", headers={"Accept": MULTIPART_DICOM})
        assert single.status_code == 200


async def test_pacs_statuses_and_study_mismatch_make_a_202(samples: list[Dataset]) -> None:
    series = ct_series(samples)
    study = str(series[0].StudyInstanceUID)
    coerced, refused, good = (new_instance(series[0]) for _ in range(3))
    elsewhere = new_instance(series[0], StudyInstanceUID="1.2.3.999")

    def status(ds: Dataset) -> int:
        return {str(coerced.SOPInstanceUID): 0xB000,
                str(refused.SOPInstanceUID): 0xA700}.get(str(ds.SOPInstanceUID), 0)

    pacs = DemoPacs([], ae_title="STOW_PACS", store_status=status)
    pacs.start("127.0.0.1", 0)
    try:
        async with open_app(writable(pacs)) as (client, _):
            response = await client.post(
                f"/pacs/demo/dicomweb/studies/{study}",
                content=stow_body(coerced, refused, good, elsewhere, extra=[b"not dicom"]),
                headers={"Content-Type": STOW_TYPE})
    finally:
        pacs.stop()
    assert response.status_code == 202, response.text
    module = response.json()
    referenced = {value(i, "00081155")[0]: i for i in value(module, "00081199")}
    assert set(referenced) == {str(coerced.SOPInstanceUID), str(good.SOPInstanceUID)}
    assert value(referenced[str(coerced.SOPInstanceUID)], "00081196") == [0xB000]
    assert "00081196" not in referenced[str(good.SOPInstanceUID)]
    failed = {value(i, "00081155")[0]: value(i, "00081197")[0]
              for i in value(module, "00081198")}
    assert failed == {str(refused.SOPInstanceUID): 0xA700, str(elsewhere.SOPInstanceUID): 0xA900}
    assert value(module, "0008119A") == [{"00081197": {"vr": "US", "Value": [0xC000]}}]
    assert value(module, "00081190")[0].endswith(f"/pacs/demo/dicomweb/studies/{study}")
    warnings = response.headers.get_list("warning")
    assert any("1.2.3.999" in w for w in warnings) and any("0xA700" in w for w in warnings)
    assert {str(ds.SOPInstanceUID) for ds in pacs.datasets()} == {
        str(coerced.SOPInstanceUID), str(good.SOPInstanceUID)}


async def test_nothing_stored_is_409_or_400(samples: list[Dataset], pacs: DemoPacs) -> None:
    other = new_instance(samples[0], StudyInstanceUID="1.2.3.998")
    async with open_app(writable(pacs)) as (client, _):
        conflict = await client.post(f"/dicomweb/studies/{samples[0].StudyInstanceUID}",
                                     content=stow_body(other),
                                     headers={"Content-Type": STOW_TYPE})
        garbage = await client.post("/dicomweb/studies",
                                    content=stow_body(extra=[b"x" * 200, b"y"]),
                                    headers={"Content-Type": STOW_TYPE})
        truncated = await client.post("/dicomweb/studies",
                                      content=stow_body(samples[0])[:-40],
                                      headers={"Content-Type": STOW_TYPE})
    assert conflict.status_code == 409
    assert value(value(conflict.json(), "00081198")[0], "00081197") == [0xA900]
    assert garbage.status_code == 400 and len(value(garbage.json(), "0008119A")) == 2
    assert truncated.status_code == 400
    assert "malformed multipart body" in truncated.headers["warning"]
    assert pacs.operation_counts["C-STORE"] == 0


async def test_one_association_serves_a_request(samples: list[Dataset], pacs: DemoPacs) -> None:
    cts = [new_instance(ds) for ds in ct_series(samples)[:3]]
    mr = next(ds for ds in samples if ds.Modality == "MR")
    mrs = [new_instance(mr) for _ in range(3)]
    interleaved = [cts[0], cts[1], mrs[0], cts[2], mrs[1], mrs[2]]
    pacs.reset_operation_counts()
    async with open_app(writable(pacs)) as (client, _):
        response = await client.post("/dicomweb/studies", content=stow_body(*interleaved),
                                     headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 200, response.text
    assert pacs.operation_counts["C-STORE"] == 6
    # the first association proposes CT; MR needs a second, proposing both, which then serves
    # the rest of the request
    assert pacs.associations == 2


async def test_read_only_refuses_with_405(samples: list[Dataset], pacs: DemoPacs) -> None:
    settings = gateway_settings(peer_config(pacs.port, "STOW_PACS"))
    assert settings.read_only
    async with open_app(settings) as (client, _):
        response = await client.post("/dicomweb/studies", content=stow_body(samples[0]),
                                     headers={"Content-Type": STOW_TYPE})
        study = await client.post(f"/dicomweb/studies/{samples[0].StudyInstanceUID}",
                                  content=b"", headers={"Content-Type": STOW_TYPE})
    for refused in (response, study):
        assert refused.status_code == 405
        allowed = {m.strip() for m in refused.headers["allow"].split(",")}
        assert "GET" in allowed and "POST" not in allowed
        assert "read_only" in refused.json()["00000902"]["Value"][0]
    assert pacs.operation_counts["C-STORE"] == 0


@pytest.mark.parametrize(("headers", "status"), [
    ({"Content-Type": "application/dicom"}, 415),
    ({"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b'}, 415),
    ({"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=b'}, 415),
    ({"Content-Type": STOW_TYPE, "Content-Encoding": "gzip"}, 415),
    ({}, 415),
    ({"Content-Type": 'multipart/related; type="application/dicom"'}, 400),
    ({"Content-Type": STOW_TYPE, "Accept": "image/png"}, 406),
    ({"Content-Type": STOW_TYPE, "Content-Length": str(10**12)}, 413),
])
async def test_request_refusals(samples: list[Dataset], pacs: DemoPacs,
                                headers: dict[str, str], status: int) -> None:
    async with open_app(writable(pacs)) as (client, _):
        request = client.build_request("POST", "/dicomweb/studies",
                                       content=stow_body(samples[0]), headers=headers)
        if "Content-Length" in headers:
            request.headers["Content-Length"] = headers["Content-Length"]
        response = await client.send(request)
    assert response.status_code == status, response.text
    assert response.json()["00000902"]["Value"][0]
    assert pacs.operation_counts["C-STORE"] == 0


async def test_limits_and_xml(samples: list[Dataset], pacs: DemoPacs) -> None:
    big = max(samples, key=lambda ds: len(part10(ds)))
    small = min(samples, key=lambda ds: len(part10(ds)))
    limit = len(part10(small)) + 1000
    assert len(part10(big)) > limit
    body = stow_body(new_instance(big), new_instance(small))
    async with open_app(writable(pacs, stow_max_instance_bytes=limit)) as (client, _):
        response = await client.post("/dicomweb/studies", content=body,
                                      headers={"Content-Type": STOW_TYPE,
                                               "Accept": "application/dicom+xml"})
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    assert 'keyword="FailedSOPSequence"' in response.text
    assert "<Value number=\"1\">42752</Value>" in response.text  # A700
    assert "stow_max_instance_bytes" in response.headers["warning"]


def test_instances_reach_the_pacs_while_the_body_is_still_being_sent(
        samples: list[Dataset], pacs: DemoPacs) -> None:
    """The body is read as a stream: once the delimiter after the first part is sent, the
    client withholds the rest of its body until the first instance has arrived at the PACS,
    which cannot happen if the gateway waited for the whole body (the client then gives up
    waiting after 10 s and the test fails)."""
    instances = [new_instance(ds) for ds in ct_series(samples)] * 4
    for n, ds in enumerate(instances):
        instances[n] = new_instance(ds)
    first = str(instances[0].SOPInstanceUID)
    seen_before_end = threading.Event()

    def body() -> Iterator[bytes]:
        for n, ds in enumerate(instances):
            yield (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode()
            if n == 1:  # the delimiter just sent ended the first part: wait until it is stored
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if first in {str(d.SOPInstanceUID) for d in pacs.datasets()}:
                        seen_before_end.set()
                        break
                    time.sleep(0.02)
            yield part10(ds) + b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    with GatewayServer(writable(pacs)) as server:
        with httpx.Client(base_url=server.dicomweb, timeout=30) as client:
            response = client.post("/studies", content=body(),
                                   headers={"Content-Type": STOW_TYPE, **JSON})
    assert seen_before_end.is_set()
    assert response.status_code == 200, response.text
    assert len(value(response.json(), "00081199")) == len(instances)
