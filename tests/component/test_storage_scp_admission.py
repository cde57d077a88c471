"""The Storage SCP under attack (issue #10, item 2): while a real C-MOVE from the demo PACS runs,
and after it, a pynetdicom SCU sends forged copies (zeroed pixels) of the instances being
retrieved, as an unknown AE ("EVIL"), under the PACS's own AE title from an allowed address,
and from an address the PACS does not use. Every forgery is refused (association rejected, or
C-STORE failure), each refusal is logged, and only the genuine instances are served and cached."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from app.dimse.move_admission import DUPLICATE, NOT_EXPECTED, MoveSink
from app.settings import Settings
from tests.component.conftest import GATEWAY_AE, free_port, gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(90)

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
PACS_AE = "MOVE_PACS"
REFUSALS = "app.dimse.move_admission"


@pytest.fixture(scope="module")
def pacs(samples: list[Dataset]) -> Iterator[DemoPacs]:
    server = DemoPacs(samples, ae_title=PACS_AE)
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def slow_pacs(pacs: DemoPacs) -> Iterator[DemoPacs]:
    """The PACS sending one sub-operation every 0.2 s: a C-MOVE of 10 instances runs ~2 s."""
    pacs.response_delay = 0.2
    yield pacs
    pacs.response_delay = 0.0


@pytest.fixture(scope="module")
def ct(samples: list[Dataset]) -> list[Dataset]:
    """The sample series with the most instances (the 10-slice CT)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(by_series.values(), key=len)


def series_path(series: list[Dataset]) -> str:
    return f"/dicomweb/studies/{series[0].StudyInstanceUID}/series/{series[0].SeriesInstanceUID}"


def settings_for(pacs: DemoPacs, **peer: Any) -> Settings:
    """A gateway retrieving by C-MOVE into its Storage SCP on every address of this host."""
    port = free_port()
    pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", port)
    config = peer_config(pacs.port, ae_title=PACS_AE, retrieve_method="move", dimse_timeout=10,
                         overall_timeout=30, **peer)
    settings = gateway_settings(config, cache_backend="memory", storage_scp_host="0.0.0.0",
                                storage_scp_port=port)
    return settings.model_copy(update={"storage_scp_enabled": True})


@dataclass
class Gateway:
    client: httpx.AsyncClient
    services: Any
    port: int

    def sinks(self) -> list[MoveSink]:
        return self.services._dimse.router.sinks()  # the C-MOVEs in progress


@asynccontextmanager
async def open_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with open_app(settings, timeout=60) as (client, services):
        yield Gateway(client, services, settings.storage_scp_port)


def forged(ds: Dataset) -> Dataset:
    """A copy with the same UIDs, zeroed pixels and another patient name."""
    fake = copy.deepcopy(ds)
    fake.PixelData = bytes(len(ds.PixelData))
    fake.PatientName = "FORGED^COPY"
    return fake


@dataclass
class Attempt:
    """What a forging SCU got: rejected association, or one C-STORE status per dataset."""

    rejected: bool
    statuses: list[int]


def send(address: str, port: int, calling_ae: str, datasets: list[Dataset],
         originator: tuple[str, int] | None = None) -> Attempt:
    """C-STORE ``datasets`` to the gateway's Storage SCP as ``calling_ae`` (blocking)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate(address, port, ae_title=GATEWAY_AE)
    if not assoc.is_established:
        # pynetdicom's requestor now and then ends without reading the A-ASSOCIATE-RJ it was
        # sent; the raw request below reads the SCP's answer itself, deterministically.
        return Attempt(assoc.is_rejected or raw_answer(address, port, calling_ae) == 0x03, [])
    statuses = []
    try:
        for ds in datasets:
            kwargs: dict[str, Any] = {}
            if originator is not None:
                kwargs = {"originator_aet": originator[0], "originator_id": originator[1]}
            status = assoc.send_c_store(ds, **kwargs)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return Attempt(False, statuses)


def raw_answer(address: str, port: int, calling_ae: str) -> int:
    """The PDU type the Storage SCP answers an A-ASSOCIATE-RQ from ``calling_ae`` with (0x02
    accepted, 0x03 rejected), over a plain socket."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = GATEWAY_AE
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall(A_ASSOCIATE_RQ(primitive).encode())
        header = sock.recv(1)
        if header and header[0] == 0x02:
            sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT
        return header[0] if header else 0


def instances(response: httpx.Response) -> dict[str, Dataset]:
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    found = [dcmread(BytesIO(p.body)) for p in parts]
    return {str(ds.SOPInstanceUID): ds for ds in found}


def assert_genuine(received: dict[str, Dataset], series: list[Dataset]) -> None:
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in series)
    for ds in series:
        got = received[str(ds.SOPInstanceUID)]
        assert got.PixelData == ds.PixelData
        assert str(got.PatientName) == str(ds.PatientName) != "FORGED^COPY"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == REFUSALS and r.levelno == logging.WARNING]


def non_loopback_address() -> str | None:
    """An address of this host other than loopback (the route to a TEST-NET address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_forged_instances_during_and_after_a_c_move_are_refused(
        slow_pacs: DemoPacs, ct: list[Dataset], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=REFUSALS)
    other_series = next(ds for ds in slow_pacs.datasets()
                        if ds.SeriesInstanceUID != ct[0].SeriesInstanceUID and "PixelData" in ds)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ct}
    async with open_gateway(settings_for(slow_pacs)) as gw:
        retrieval = asyncio.create_task(
            gw.client.get(series_path(ct), headers={"Accept": MULTIPART_DICOM}))
        for _ in range(500):
            sinks = gw.sinks()
            if sinks and len(sinks[0].seen) >= 3:
                break
            await asyncio.sleep(0.01)
        (sink,) = gw.sinks()
        delivered = [by_uid[uid] for uid in sorted(sink.seen)]
        assert len(delivered) < len(ct), "the C-MOVE must still be running"
        copies = [forged(ds) for ds in delivered]

        evil = await asyncio.to_thread(send, "127.0.0.1", gw.port, "EVIL", copies)
        assert evil.rejected and not evil.statuses
        assert await asyncio.to_thread(raw_answer, "127.0.0.1", gw.port, "EVIL") == 0x03
        assert await asyncio.to_thread(raw_answer, "127.0.0.1", gw.port, PACS_AE) == 0x02
        # the PACS's own AE title from its (loopback) address: admitted, each C-STORE refused
        bare = await asyncio.to_thread(send, "127.0.0.1", gw.port, PACS_AE, copies)
        assert bare.statuses == [DUPLICATE] * len(copies)
        routed = await asyncio.to_thread(send, "127.0.0.1", gw.port, PACS_AE, copies,
                                         (sink.originator_ae, sink.message_id))
        assert routed.statuses == [DUPLICATE] * len(copies)
        stranger = await asyncio.to_thread(send, "127.0.0.1", gw.port, PACS_AE,
                                           [forged(other_series)],
                                           (sink.originator_ae, sink.message_id))
        assert stranger.statuses == [NOT_EXPECTED]
        assert sink.message_id  # still the same C-MOVE: nothing above ended it

        assert_genuine(instances(await retrieval), ct)
        assert not gw.sinks()

        # after the C-MOVE: every copy, of every instance, is refused
        late = await asyncio.to_thread(send, "127.0.0.1", gw.port, PACS_AE,
                                       [forged(ds) for ds in ct],
                                       (sink.originator_ae, sink.message_id))
        assert late.statuses == [NOT_EXPECTED] * len(ct)
        counts = slow_pacs.operation_counts
        cached = await gw.client.get(series_path(ct), headers={"Accept": MULTIPART_DICOM})
        assert_genuine(instances(cached), ct)
        assert slow_pacs.operation_counts == counts  # served from the cache, not refetched
        metadata = await gw.client.get(series_path(ct) + "/metadata")
        assert "FORGED" not in metadata.text

    lines = refusals(caplog)
    assert any("'EVIL'" in line and "127.0.0.1" in line and "association rejected" in line
               and "not a PACS" in line for line in lines), lines
    for ds in delivered:
        uid = str(ds.SOPInstanceUID)
        mine = [line for line in lines if uid in line]
        assert sum("duplicate" in line for line in mine) == 2, mine
        assert all(f"'{PACS_AE}'" in line and "127.0.0.1" in line for line in mine)
    assert any(str(other_series.SOPInstanceUID) in line and "not one of the instances" in line
               for line in lines)
    assert sum("no C-MOVE of this PACS in progress" in line for line in lines) >= len(ct)


async def test_pacs_title_from_another_address_is_rejected(
        pacs: DemoPacs, ct: list[Dataset], caplog: pytest.LogCaptureFixture) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    caplog.set_level(logging.WARNING, logger=REFUSALS)
    async with open_gateway(settings_for(pacs)) as gw:  # the PACS's host is 127.0.0.1
        attempt = await asyncio.to_thread(send, address, gw.port, PACS_AE, [forged(ct[0])])
        assert attempt.rejected
    assert any(f"'{PACS_AE}' from {address}" in line and "move_source_hosts" in line
               for line in refusals(caplog))


async def test_move_source_hosts_replace_the_pacs_host(
        pacs: DemoPacs, ct: list[Dataset], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=REFUSALS)
    # the real PACS delivers from 127.0.0.1, which is no longer allowed: nothing is accepted
    async with open_gateway(settings_for(pacs, move_source_hosts=["192.0.2.10"])) as gw:
        response = await gw.client.get(series_path(ct), headers={"Accept": MULTIPART_DICOM})
        assert response.status_code == 502, response.text[:300]
    assert any(f"'{PACS_AE}' from 127.0.0.1" in line and "association rejected" in line
               for line in refusals(caplog))
    address = non_loopback_address()
    async with open_gateway(settings_for(pacs, move_source_hosts=["*"])) as gw:
        if address is not None:  # "*": any address, the AE title still checked
            fake = await asyncio.to_thread(send, address, gw.port, PACS_AE, [forged(ct[0])])
            assert fake.statuses == [NOT_EXPECTED]
            evil = await asyncio.to_thread(send, address, gw.port, "EVIL", [forged(ct[0])])
            assert evil.rejected
        assert_genuine(instances(await gw.client.get(
            series_path(ct), headers={"Accept": MULTIPART_DICOM})), ct)


@pytest.mark.parametrize("method", ["get", "auto"])
async def test_a_pacs_retrieving_with_c_get_may_not_deliver(
        sample_pacs: DemoPacs, pacs: DemoPacs, ct: list[Dataset], method: str) -> None:
    """A "get" PACS may not even associate; an "auto" one may (it falls back to C-MOVE when
    it refuses C-GET), but an instance no C-MOVE of the gateway asked for is still refused."""
    settings = settings_for(pacs)
    get_peer = peer_config(sample_pacs.port, ae_title="GET_PACS", name="getter",
                           retrieve_method=method)
    settings = settings.model_copy(update={"pacs": [*settings.pacs, type(settings.pacs[0])(
        **get_peer)]})
    async with open_gateway(settings) as gw:
        attempt = await asyncio.to_thread(send, "127.0.0.1", gw.port, "GET_PACS",
                                          [forged(ct[0])])
        if method == "get":
            assert attempt.rejected
        else:
            assert not attempt.rejected and attempt.statuses == [NOT_EXPECTED]
