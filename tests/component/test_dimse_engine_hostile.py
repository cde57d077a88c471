"""The asyncio DIMSE engine against hostile peers (issue #8, item 6), driven through
AsyncPeerClient with a scripted fake PACS on a loopback port: malformed, oversized and truncated
PDUs, peers that stop, close, abort, release or reject, association reuse after all that, and no
leaked tasks, sockets or memory after 1,000 aborted retrievals.

Each case asserts the gateway error raised, what the peer saw (the engine's A-ABORT where one is
due, with its reason) and that nothing waits past the configured timeouts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from app.demo.pacs import DemoPacs
from app.dimse.engine import stream as engine_stream
from app.dimse.engine.client import FIND_MODEL, MOVE_MODEL, AsyncPeerClient
from app.dimse.received import ReceivedInstance
from app.dimse.storescp import MoveRouter
from app.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from app.settings import PacsPeer
from tests.support import fake_peer as fp
from tests.support.fake_peer import Connection, FakePeer

pytestmark = pytest.mark.timeout(60)

GATEWAY_AE = "HOSTILE_GW"
CONNECT_S, ACSE_S, DIMSE_S, OVERALL_S = 2.0, 2.0, 2.0, 10.0
MAX_RECEIVE = 16384  # the engine's maximum P-DATA-TF length for these tests
PROMPT_S = 1.5  # an immediate reaction: well inside every configured timeout
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STORAGE = [(CT_IMAGE, (str(ImplicitVRLittleEndian),))]
STUDY_UID = "1.2.826.0.1.3680043.9.7433.1.1"
ENGINE_LOGGER = "app.dimse.engine"
PROVIDER = 2  # A-ABORT source: service provider (PS3.8 Table 9-26)
UNRECOGNIZED_PDU, UNEXPECTED_PDU, UNEXPECTED_PARAMETER, INVALID_VALUE = 1, 2, 5, 6


# -- helpers --------------------------------------------------------------------------------------


def make_client(port: int, **peer: object) -> AsyncPeerClient:
    """An AsyncPeerClient for the fake peer with short timeouts and a small max PDU."""
    settings = PacsPeer(name="fake", ae_title="FAKE_PACS", host="127.0.0.1", port=port,
                        connect_timeout=CONNECT_S, acse_timeout=ACSE_S, dimse_timeout=DIMSE_S,
                        overall_timeout=OVERALL_S, **peer)  # type: ignore[arg-type]
    return AsyncPeerClient(GATEWAY_AE, settings, router=MoveRouter(), max_receive=MAX_RECEIVE,
                           use_quickack=True)


@asynccontextmanager
async def fake_pacs(*scripts: fp.Script, **peer: object
                    ) -> AsyncIterator[tuple[FakePeer, AsyncPeerClient]]:
    """A running FakePeer and a client for it; the client is closed afterwards, and every
    script must have run without an error of its own (a broken script proves nothing)."""
    async with FakePeer(*scripts) as fake:
        client = make_client(fake.port, **peer)
        try:
            yield fake, client
        finally:
            await asyncio.wait_for(client.close(), ACSE_S + 5)
        errors = [conn.error for conn in fake.connections if conn.error is not None]
        assert not errors, errors


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """Elapsed seconds since entering."""
    start = time.monotonic()
    yield lambda: time.monotonic() - start


def study_query() -> Dataset:
    """A STUDY-level C-FIND identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    return ds


def retrieve_query() -> Dataset:
    """A STUDY-level C-GET/C-MOVE identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = STUDY_UID
    return ds


def match(number: int) -> bytes:
    """A C-FIND match (Implicit VR Little Endian)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"{STUDY_UID}.{number}"
    ds.PatientName = f"Hostile^{number}"
    return fp.encode_dataset(ds)


def instance(number: int, padding: int = 64) -> tuple[str, bytes]:
    """(SOP Instance UID, data set bytes) of a small CT instance."""
    uid = f"{STUDY_UID}.1.{number}"
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = STUDY_UID
    ds.add_new(0x7FE00010, "OB", b"\x00" * padding)  # Pixel Data, to give it some size
    return uid, fp.encode_dataset(ds)


async def find_all(client: AsyncPeerClient) -> list[Dataset]:
    """Every match of a C-FIND (bounded)."""
    async def run() -> list[Dataset]:
        async with client.find(study_query()) as stream:
            return [ds async for ds in stream]
    return await asyncio.wait_for(run(), OVERALL_S + 5)


async def get_all(client: AsyncPeerClient, received: list[ReceivedInstance] | None = None
                  ) -> list[ReceivedInstance]:
    """Every instance of a C-GET (bounded); ``received`` collects them as they come."""
    items = received if received is not None else []

    async def run() -> list[ReceivedInstance]:
        async with client.get(retrieve_query(), STORAGE) as stream:
            async for item in stream:
                items.append(item)
        return items
    return await asyncio.wait_for(run(), OVERALL_S + 5)


async def move(client: AsyncPeerClient) -> None:
    """A C-MOVE to the gateway (bounded)."""
    async def run() -> None:
        async with client.move(retrieve_query()) as stream:
            async for _ in stream:
                pass
    await asyncio.wait_for(run(), OVERALL_S + 5)


async def expect_request(conn: Connection, command_field: int) -> fp.Message:
    """Accept the association and read the first request, which must be ``command_field``."""
    await conn.accept()
    request = await conn.read_message()
    assert request.command_field == command_field
    return request


def violation_logged(caplog: pytest.LogCaptureFixture, fragment: str) -> bool:
    """Whether the engine logged exactly one protocol-violation WARNING, containing
    ``fragment`` (what follows a violation in the same read is not reported again)."""
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and r.name.startswith(ENGINE_LOGGER)
             and "protocol violation" in r.getMessage()]
    return len(lines) == 1 and "A-ABORT" in lines[0] and fragment in lines[0]


@pytest.fixture(autouse=True)
def _engine_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)


# -- malformed PDUs after negotiation -------------------------------------------------------------

FIND_RSP_PENDING = fp.response(fp.C_FIND_RSP, 1, 0xFF00, sop_class=FIND_MODEL, has_data=True)


def _bad_command_length() -> bytes:
    """A command set whose CommandField claims more bytes than the command set holds."""
    return struct.pack("<HHI", 0, 0x0100, 0x4000) + struct.pack("<H", fp.C_FIND_RSP)


MALFORMED: dict[str, tuple[Callable[[int], bytes], str, int]] = {
    # name: (bytes sent after the C-FIND-RQ given the accepted context id, log text, reason)
    "unknown PDU type": (
        lambda cx: fp.pdu(0x09, b"\x00" * 4), "unrecognised PDU type 0x09", UNRECOGNIZED_PDU),
    "PDV item longer than its PDU": (
        lambda cx: fp.p_data(fp.pdv(cx, b"\x00" * 10, command=True, last=True,
                                    declared_length=100)),
        "PDV item length 100 does not fit", INVALID_VALUE),
    "zero-length PDV": (
        lambda cx: fp.p_data(fp.pdv(cx, b"", command=True, last=True, declared_length=0)),
        "PDV item length 0 does not fit", INVALID_VALUE),
    "P-DATA-TF without any PDV": (
        lambda cx: fp.pdu(fp.P_DATA_TF, b""), "without a presentation data value",
        INVALID_VALUE),
    "command element length beyond the command set": (
        lambda cx: fp.p_data(fp.pdv(cx, _bad_command_length(), command=True, last=True)),
        "invalid command set element (0000,0100) length 16384", INVALID_VALUE),
    "data set fragment before any command": (
        lambda cx: fp.p_data(fp.pdv(cx, match(1), command=False, last=True)),
        "a data set fragment before its command set", UNEXPECTED_PARAMETER),
    "fragments of one message on different contexts": (
        lambda cx: fp.p_data(fp.pdv(cx, FIND_RSP_PENDING[:20], command=True, last=False),
                             fp.pdv(cx + 2, FIND_RSP_PENDING[20:], command=True, last=True)),
        "different presentation contexts", INVALID_VALUE),
    "message on a context never proposed": (  # then a valid one: only the first counts
        lambda cx: fp.p_data(fp.pdv(cx + 2, FIND_RSP_PENDING, command=True, last=True),
                             fp.pdv(cx + 2, match(1), command=False, last=True))
        + fp.p_data(fp.pdv(cx, FIND_RSP_PENDING, command=True, last=True),
                    fp.pdv(cx, match(2), command=False, last=True)),
        "which was not accepted", INVALID_VALUE),
    "P-DATA-TF longer than negotiated": (
        lambda cx: fp.pdu(fp.P_DATA_TF, b"\x00" * 64, declared_length=MAX_RECEIVE + 1),
        f"of {MAX_RECEIVE + 1} bytes exceeds the limit of {MAX_RECEIVE}", INVALID_VALUE),
    "A-RELEASE-RQ longer than 4 bytes": (
        lambda cx: fp.pdu(fp.RELEASE_RQ, b"\x00" * 8), "0x05 of 8 bytes", INVALID_VALUE),
    "A-RELEASE-RQ shorter than 4 bytes": (
        lambda cx: fp.pdu(fp.RELEASE_RQ, b"\x00" * 2), "0x05 of 2 bytes", INVALID_VALUE),
    "A-ABORT longer than 4 bytes": (
        lambda cx: fp.pdu(fp.ABORT, b"\x00" * 8), "0x07 of 8 bytes", INVALID_VALUE),
    "A-ABORT of 0 bytes": (
        lambda cx: fp.pdu(fp.ABORT, b""), "0x07 of 0 bytes", INVALID_VALUE),
    "A-RELEASE-RP in an established association": (
        lambda cx: fp.release_rp(), "unexpected RELEASE_RP PDU in state STA6", UNEXPECTED_PDU),
    "endless command fragments": (
        lambda cx: b"".join(fp.p_data(fp.pdv(cx, b"\x00" * 16000, command=True, last=False))
                            for _ in range(8)),
        "command set fragments exceed 65536 bytes", INVALID_VALUE),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_pdu_during_find_aborts_with_a_warning(
        case: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each malformed PDU ends the C-FIND at once with UpstreamError, an A-ABORT from the
    service provider with the matching reason, and one WARNING naming the violation."""
    payload, logged, reason = MALFORMED[case]

    async def script(conn: Connection) -> None:
        await expect_request(conn, fp.C_FIND_RQ)
        await conn.send(payload(conn.contexts[FIND_MODEL]))

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError) as raised:
            await find_all(client)
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert type(raised.value) is UpstreamError
    assert "aborted" in str(raised.value)
    assert conn.aborts == [(PROVIDER, reason)]
    assert violation_logged(caplog, logged), [r.getMessage() for r in caplog.records]
    assert client.pool.leased_count == 0 and client.pool.idle_count == 0


async def test_message_on_a_refused_context_during_get_aborts(
        caplog: pytest.LogCaptureFixture) -> None:
    """A C-STORE-RQ on the storage context the peer itself refused is a violation."""
    async def script(conn: Connection) -> None:
        request = await conn.accept(refuse=[CT_IMAGE])
        proposed = request.presentation_context_definition_list
        refused = next(int(cx.context_id or 0) for cx in proposed
                       if str(cx.abstract_syntax) == CT_IMAGE)
        await conn.read_message()
        uid, data = instance(1)
        await conn.send_message(refused, fp.store_rq(7, CT_IMAGE, uid), data)

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError):
            await get_all(client)
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert conn.aborts == [(PROVIDER, INVALID_VALUE)]
    assert violation_logged(caplog, "which was not accepted")


async def test_pdu_of_exactly_the_negotiated_length_is_accepted() -> None:
    """The boundary: P-DATA-TF PDUs of exactly max_receive bytes are fine (PS3.8 D.1)."""
    big = Dataset()
    big.QueryRetrieveLevel = "STUDY"
    big.StudyInstanceUID = STUDY_UID
    big.TextValue = "d" * 40_000  # UT: a data set spread over three full PDUs
    data = fp.encode_dataset(big)

    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_FIND_RQ)
        await conn.respond(request, fp.C_FIND_RSP, 0xFF00, data)
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)

    async with fake_pacs(script) as (fake, client):
        found = await find_all(client)
    assert [ds.TextValue for ds in found] == ["d" * 40_000]
    assert fake.connections[0].aborts == []


async def test_unlimited_receive_does_not_allocate_a_declared_length() -> None:
    """With max_receive 0 (unlimited) a P-DATA-TF header declaring 1 GiB must not make the
    reader allocate 1 GiB: memory follows the bytes that actually arrive."""
    import tracemalloc

    async def script(conn: Connection) -> None:
        await expect_request(conn, fp.C_FIND_RQ)
        await conn.send(fp.pdu(fp.P_DATA_TF, b"\x00" * 1024, declared_length=1 << 30))
        await asyncio.sleep(0.2)  # a second read, which asks the reader for a buffer
        await conn.send(b"\x00" * 1024)

    async with FakePeer(script) as fake:
        client = make_client(fake.port)
        client._max_receive = 0  # as with dimse_max_pdu_receive = 0
        tracemalloc.start()
        try:
            with pytest.raises(UpstreamTimeout):
                await find_all(client)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await client.close()
        conn = await fake.connection(0)
    assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    assert conn.aborts, "the engine gives up with an A-ABORT"


# -- negotiation ----------------------------------------------------------------------------------


async def test_oversized_associate_ac_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """An A-ASSOCIATE-AC declaring more than 1 MiB is aborted on its header."""
    async def script(conn: Connection) -> None:
        await conn.expect(fp.ASSOCIATE_RQ)
        await conn.send(fp.pdu(fp.ASSOCIATE_AC, b"\x00" * 64, declared_length=(1 << 20) + 1))

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamUnavailable):
            await client.echo()
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert conn.aborts == [(PROVIDER, INVALID_VALUE)]
    assert violation_logged(caplog, f"0x02 of {(1 << 20) + 1} bytes exceeds the limit")


@pytest.mark.parametrize(("answer", "logged"), [
    (fp.p_data(fp.pdv(1, FIND_RSP_PENDING, command=True, last=True)),
     "P-DATA-TF outside an established association"),
    (fp.release_rq(), "unexpected RELEASE_RQ PDU in state STA5"),
    (fp.pdu(fp.ASSOCIATE_RQ, b"\x00" * 68), "unexpected ASSOCIATE_RQ PDU in state STA5"),
])
async def test_wrong_pdu_instead_of_the_associate_answer(
        answer: bytes, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    """Anything but A-ASSOCIATE-AC/-RJ/A-ABORT in Sta5 is AA-8: A-ABORT, UpstreamUnavailable."""
    async def script(conn: Connection) -> None:
        await conn.expect(fp.ASSOCIATE_RQ)
        await conn.send(answer)

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamUnavailable):
            await client.echo()
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert conn.aborts == [(PROVIDER, UNEXPECTED_PDU)]
    assert violation_logged(caplog, logged)


async def test_undecodable_associate_ac_is_aborted(caplog: pytest.LogCaptureFixture) -> None:
    """An A-ASSOCIATE-AC of a plausible length but garbage content."""
    async def script(conn: Connection) -> None:
        await conn.expect(fp.ASSOCIATE_RQ)
        await conn.send(fp.pdu(fp.ASSOCIATE_AC, b"\xff" * 80))

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamUnavailable):
            await client.echo()
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert len(conn.aborts) == 1
    assert violation_logged(caplog, "A-ASSOCIATE-AC")


@pytest.mark.parametrize("behaviour", ["reads the request", "reads nothing"])
async def test_peer_that_never_answers_the_association_request(behaviour: str) -> None:
    """No A-ASSOCIATE-AC within the ACSE timeout: UpstreamUnavailable, an A-ABORT, no hang."""
    async def script(conn: Connection) -> None:
        if behaviour == "reads the request":
            await conn.expect(fp.ASSOCIATE_RQ)
            await conn.sleep(ACSE_S + 3)
        else:
            await conn.sleep(ACSE_S + 0.5, deaf=True)

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamUnavailable):
            await client.echo()
        assert ACSE_S - 0.1 <= elapsed() < ACSE_S + 1
        await asyncio.sleep(0)  # let the abort reach the socket before the script's drain
        conn = await fake.connection(0, timeout=ACSE_S + 6)
    if behaviour == "reads the request":
        assert conn.received_types[-1] == fp.ABORT
    else:  # the script never read: the A-RQ and the A-ABORT were still sent, then closed
        assert conn.received_types[:1] == [fp.ASSOCIATE_RQ]
        assert conn.aborts


async def test_peer_that_sends_half_an_associate_ac_then_closes() -> None:
    """A truncated A-ASSOCIATE-AC then a close: UpstreamUnavailable at once."""
    async def script(conn: Connection) -> None:
        await conn.expect(fp.ASSOCIATE_RQ)
        await conn.send(fp.pdu(fp.ASSOCIATE_AC, b"\x00" * 200)[:100])
        conn.close()

    async with fake_pacs(script) as (_, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamUnavailable):
            await client.echo()
        assert elapsed() < PROMPT_S


@pytest.mark.parametrize(("result", "error"), [(0x01, UpstreamError),
                                               (0x02, UpstreamUnavailable)])
async def test_association_rejected(result: int, error: type[GatewayError]) -> None:
    """A-ASSOCIATE-RJ: rejected-permanent is UpstreamError, rejected-transient is
    UpstreamUnavailable (PS3.8 9.3.4), both at once."""
    async def script(conn: Connection) -> None:
        await conn.reject(result, 0x01, 0x03)  # source: service user; calling AE not known

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(error) as raised:
            await client.echo()
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert type(raised.value) is error
    assert "rejected" in str(raised.value)
    assert conn.aborts == []  # nothing to abort: the engine just closes


async def test_no_accepted_context_is_an_upstream_error() -> None:
    """An A-ASSOCIATE-AC refusing every proposed context."""
    async def script(conn: Connection) -> None:
        await conn.accept(refuse=[FIND_MODEL])

    async with fake_pacs(script) as (fake, client):
        with pytest.raises(UpstreamError, match="none of the proposed"):
            await find_all(client)
        conn = await fake.connection(0)
    assert conn.aborts


# -- truncated messages, silence, aborts -----------------------------------------------------------


async def test_half_a_pdu_then_close_during_find() -> None:
    """The peer sends half of a C-FIND-RSP PDU and closes: UpstreamError at once."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_FIND_RQ)
        rsp = fp.p_data(fp.pdv(request.context_id, FIND_RSP_PENDING, command=True, last=True))
        await conn.send(rsp[:len(rsp) // 2])
        conn.close()

    async with fake_pacs(script) as (_, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError) as raised:
            await find_all(client)
        assert elapsed() < PROMPT_S
    assert type(raised.value) is UpstreamError


async def _store_then(conn: Connection, rest: Callable[[Connection, fp.Message],
                                                       Awaitable[None]]) -> None:
    """Accept, read the C-GET-RQ, deliver one instance, send half of a second, then ``rest``."""
    request = await expect_request(conn, fp.C_GET_RQ)
    cx = conn.contexts[CT_IMAGE]
    uid, data = instance(1)
    await conn.send_message(cx, fp.store_rq(1, CT_IMAGE, uid), data)
    stored = await conn.read_message()
    assert stored.command_field == fp.C_STORE_RSP and stored.us(fp.STATUS) == 0
    uid, data = instance(2, padding=30_000)
    await conn.send_message(cx, fp.store_rq(2, CT_IMAGE, uid), data, data_pdus=1)  # 1 of 2
    await rest(conn, request)


async def test_peer_goes_silent_mid_dataset_during_get() -> None:
    """Mid data set the peer stops sending: UpstreamTimeout after the DIMSE timeout (not
    before, not much later), the first instance delivered, an A-ABORT to the peer."""
    async def script(conn: Connection) -> None:
        await _store_then(conn, lambda c, _: c.sleep(DIMSE_S + 5))

    received: list[ReceivedInstance] = []
    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamTimeout):
            await get_all(client, received)
        assert DIMSE_S - 0.1 <= elapsed() < DIMSE_S + 1
        conn = await fake.connection(0, timeout=DIMSE_S + 8)
    assert [i.sop_instance_uid for i in received] == [f"{STUDY_UID}.1.1"]
    assert conn.received_types[-1] == fp.ABORT


async def test_network_idle_timeout_ends_a_stalled_get_sooner() -> None:
    """Once instances flow, ``network_idle_timeout`` of silence (shorter than the DIMSE
    timeout) ends the C-GET: a stopped PACS is noticed quickly (issue #10, item 6)."""
    idle = 0.5

    async def script(conn: Connection) -> None:
        await _store_then(conn, lambda c, _: c.sleep(DIMSE_S + 5))

    received: list[ReceivedInstance] = []
    async with fake_pacs(script, network_idle_timeout=idle) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamTimeout):
            await get_all(client, received)
        assert idle - 0.1 <= elapsed() < idle + 1
        conn = await fake.connection(0, timeout=DIMSE_S + 8)
    assert len(received) == 1
    assert conn.received_types[-1] == fp.ABORT


async def test_the_first_response_may_take_the_whole_dimse_timeout() -> None:
    """Before the first response only the DIMSE timeout applies: a PACS that takes longer
    than the idle timeout to start (e.g. fetching from an archive) is still served."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_GET_RQ)
        await conn.sleep(1.0)
        cx = conn.contexts[CT_IMAGE]
        uid, data = instance(1)
        await conn.send_message(cx, fp.store_rq(1, CT_IMAGE, uid), data)
        stored = await conn.read_message()
        assert stored.us(fp.STATUS) == 0
        await conn.respond(request, fp.C_GET_RSP, 0x0000)

    received: list[ReceivedInstance] = []
    async with fake_pacs(script, network_idle_timeout=0.3) as (_, client):
        await get_all(client, received)
    assert len(received) == 1


async def test_a_slow_but_steady_data_set_does_not_time_out() -> None:
    """Silence, not the time a message takes, is what times out: a data set whose PDUs
    arrive over longer than the DIMSE timeout, but never with a long gap, is received."""
    pdus = 6
    gap = DIMSE_S / 3  # total > DIMSE_S, every gap well below it

    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_GET_RQ)
        cx = conn.contexts[CT_IMAGE]
        uid, data = instance(1, padding=6 * 1000)
        await conn.send_message(cx, fp.store_rq(1, CT_IMAGE, uid), b"", data_pdus=0)
        piece = -(-len(data) // pdus)
        for n in range(pdus):
            chunk = data[n * piece:(n + 1) * piece]
            await conn.send(fp.p_data(fp.pdv(cx, chunk, command=False, last=n == pdus - 1)))
            if n < pdus - 1:
                await conn.sleep(gap)
        stored = await conn.read_message()
        assert stored.us(fp.STATUS) == 0
        await conn.respond(request, fp.C_GET_RSP, 0x0000)

    received: list[ReceivedInstance] = []
    async with fake_pacs(script, network_idle_timeout=DIMSE_S) as (_, client):
        with stopwatch() as elapsed:
            await get_all(client, received)
        assert elapsed() > DIMSE_S
    assert len(received) == 1


async def test_peer_closes_mid_dataset_during_get() -> None:
    """Mid data set the peer closes the connection: UpstreamError at once."""
    async def script(conn: Connection) -> None:
        async def close(c: Connection, _: fp.Message) -> None:
            c.close()
        await _store_then(conn, close)

    received: list[ReceivedInstance] = []
    async with fake_pacs(script) as (_, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError) as raised:
            await get_all(client, received)
        assert elapsed() < PROMPT_S
    assert type(raised.value) is UpstreamError
    assert len(received) == 1


async def test_peer_aborts_mid_get() -> None:
    """A-ABORT mid data set: UpstreamError at once; no A-ABORT is sent back (AA-3)."""
    async def script(conn: Connection) -> None:
        async def abort(c: Connection, _: fp.Message) -> None:
            await c.abort(source=2, reason=0)
        await _store_then(conn, abort)

    received: list[ReceivedInstance] = []
    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError, match="aborted"):
            await get_all(client, received)
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert len(received) == 1
    assert conn.aborts == []


async def test_peer_aborts_mid_find() -> None:
    """A-ABORT after one match: the match is delivered, then UpstreamError."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_FIND_RQ)
        await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
        await conn.abort()

    found: list[Dataset] = []
    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError, match="aborted"):
            async with client.find(study_query()) as stream:
                async for ds in stream:
                    found.append(ds)
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert [ds.PatientName for ds in found] == ["Hostile^1"]
    assert conn.aborts == []


@pytest.mark.parametrize("operation", ["echo", "find", "get", "move"])
async def test_silent_peer_after_the_request(operation: str) -> None:
    """The peer accepts, reads the request and answers nothing: UpstreamTimeout after the
    DIMSE timeout, and the engine aborts the association."""
    commands = {"echo": fp.C_ECHO_RQ, "find": fp.C_FIND_RQ, "get": fp.C_GET_RQ,
                "move": fp.C_MOVE_RQ}

    async def script(conn: Connection) -> None:
        await expect_request(conn, commands[operation])
        await conn.sleep(DIMSE_S + 5)

    calls: dict[str, Callable[[AsyncPeerClient], Awaitable[object]]] = {
        "echo": lambda c: c.echo(), "find": find_all, "get": get_all, "move": move}
    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamTimeout):
            await calls[operation](client)
        assert DIMSE_S - 0.1 <= elapsed() < DIMSE_S + 1
        conn = await fake.connection(0, timeout=DIMSE_S + 8)
    assert conn.received_types[-1] == fp.ABORT
    assert client.pool.leased_count == 0 and client.pool.idle_count == 0


async def test_unexpected_response_during_move_aborts() -> None:
    """A C-MOVE-RSP to another message ID: UpstreamError and an A-ABORT."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_MOVE_RQ)
        await conn.send_message(request.context_id, fp.response(
            fp.C_MOVE_RSP, request.message_id + 1, 0x0000, sop_class=MOVE_MODEL))

    async with fake_pacs(script) as (fake, client):
        with pytest.raises(UpstreamError, match="unexpected DIMSE message"):
            await move(client)
        conn = await fake.connection(0)
    assert conn.received_types[-1] == fp.ABORT


# -- release ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["find", "get"])
async def test_peer_releases_in_the_middle_of_an_operation(operation: str) -> None:
    """A-RELEASE-RQ mid operation: the engine answers A-RELEASE-RP, the operation fails with
    UpstreamError at once, and the association is not kept."""
    async def script(conn: Connection) -> None:
        if operation == "find":
            request = await expect_request(conn, fp.C_FIND_RQ)
            await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
        else:
            await expect_request(conn, fp.C_GET_RQ)
            uid, data = instance(1)
            await conn.send_message(conn.contexts[CT_IMAGE], fp.store_rq(1, CT_IMAGE, uid), data)
            await conn.read_message()
        await conn.send(fp.release_rq())
        await conn.expect(fp.RELEASE_RP)
        conn.close()  # the acceptor closes after A-RELEASE-RP (PS3.8 AR-4)

    async with fake_pacs(script) as (fake, client):
        with stopwatch() as elapsed, pytest.raises(UpstreamError, match="released"):
            await (find_all(client) if operation == "find" else get_all(client))
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert conn.received_types[-1] == fp.RELEASE_RP
    assert conn.aborts == []
    assert client.pool.idle_count == 0


async def test_release_collision_ends_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    """The peer sends A-RELEASE-RQ right after ours: both sides answer A-RELEASE-RP and the
    association closes without an abort or a warning (PS3.8 9.2.6)."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_ECHO_RQ)
        await conn.respond(request, fp.C_ECHO_RSP, 0x0000)
        await conn.expect(fp.RELEASE_RQ, timeout=10)
        await conn.send(fp.release_rq())
        await conn.expect(fp.RELEASE_RP)
        await conn.send(fp.release_rp())

    async with fake_pacs(script) as (fake, client):
        await client.echo()
        assert client.pool.idle_count == 1
        with stopwatch() as elapsed:
            await asyncio.wait_for(client.close(), ACSE_S + 3)
        assert elapsed() < PROMPT_S
        conn = await fake.connection(0)
    assert conn.error is None
    assert conn.received_types[-2:] == [fp.RELEASE_RQ, fp.RELEASE_RP]
    assert conn.aborts == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_peer_that_never_answers_our_release_is_aborted() -> None:
    """No A-RELEASE-RP within the ACSE timeout: the engine aborts; close() does not hang."""
    async def script(conn: Connection) -> None:
        request = await expect_request(conn, fp.C_ECHO_RQ)
        await conn.respond(request, fp.C_ECHO_RSP, 0x0000)
        await conn.expect(fp.RELEASE_RQ, timeout=10)
        await conn.sleep(ACSE_S + 5)

    async with fake_pacs(script) as (fake, client):
        await client.echo()
        with stopwatch() as elapsed:
            await asyncio.wait_for(client.close(), ACSE_S + 5)
        assert elapsed() < ACSE_S + 1
        conn = await fake.connection(0, timeout=ACSE_S + 8)
    assert conn.received_types[-2:] == [fp.RELEASE_RQ, fp.ABORT]


# -- association reuse -----------------------------------------------------------------------------


async def _answer_finds(conn: Connection, matches: int, *, finds: int | None = None) -> None:
    """Accept, then answer C-FIND-RQs with ``matches`` matches each (``finds`` of them, or until
    the client releases)."""
    await conn.accept()
    answered = 0
    while finds is None or answered < finds:
        request = await conn.read_message(timeout=15)
        assert request.command_field == fp.C_FIND_RQ
        for number in range(matches):
            await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(answered * 10 + number))
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)
        answered += 1
    if finds is None:
        return
    await conn.expect(fp.RELEASE_RQ, timeout=15)
    await conn.send(fp.release_rp())


async def test_pool_reuses_a_clean_association() -> None:
    """Positive control: two C-FINDs on one association."""
    async def script(conn: Connection) -> None:
        await _answer_finds(conn, 2, finds=2)

    async with fake_pacs(script) as (fake, client):
        first = await find_all(client)
        second = await find_all(client)
        assert (client.pool.opened, client.pool.reused) == (1, 1)
    assert [str(ds.PatientName) for ds in first + second] == [
        "Hostile^0", "Hostile^1", "Hostile^10", "Hostile^11"]
    assert len(fake.connections) == 1


async def test_pool_discards_an_association_closed_while_idle() -> None:
    """The peer closes an idle association: the next operation opens a fresh one."""
    async def closing_first(conn: Connection) -> None:
        await conn.accept()
        request = await conn.read_message()
        await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)
        conn.close()

    async def second(conn: Connection) -> None:
        await _answer_finds(conn, 1, finds=1)

    async with fake_pacs(closing_first, second) as (fake, client):
        assert len(await find_all(client)) == 1
        await fake.connection(0)
        idle = [a for entries in client.pool._idle.values() for a, _ in entries]
        await asyncio.wait_for(asyncio.gather(*(a.closed for a in idle)), 5)  # seen closed
        found = await find_all(client)
        assert (client.pool.opened, client.pool.reused) == (2, 0)
    assert [str(ds.PatientName) for ds in found] == ["Hostile^0"]


async def test_pool_retries_once_when_a_reused_association_is_dead() -> None:
    """The peer dropped an idle association without the engine noticing in time (it closes
    when the next request arrives): the operation is retried once on a fresh association and
    its result is correct."""
    async def dies_on_reuse(conn: Connection) -> None:
        await conn.accept()
        request = await conn.read_message()
        await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)
        await conn.read_message(timeout=15)  # the second C-FIND-RQ: no answer, just close
        conn.writer.transport.abort()  # RST: as a PACS that forgot the association

    async def fresh(conn: Connection) -> None:
        await _answer_finds(conn, 3, finds=1)

    async with fake_pacs(dies_on_reuse, fresh) as (fake, client):
        assert len(await find_all(client)) == 1
        found = await find_all(client)
        assert (client.pool.opened, client.pool.reused) == (2, 1)
        assert client.pool.leased_count == 0
    assert [str(ds.PatientName) for ds in found] == ["Hostile^0", "Hostile^1", "Hostile^2"]
    assert len(fake.connections) == 2


async def test_pool_does_not_retry_after_a_response() -> None:
    """A reused association that fails after the peer answered is not retried (the operation
    may have had effects): UpstreamError, no third association."""
    async def script(conn: Connection) -> None:
        await conn.accept()
        request = await conn.read_message()
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)
        request = await conn.read_message(timeout=15)
        await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
        await conn.abort()

    async with fake_pacs(script) as (fake, client):
        assert await find_all(client) == []
        with pytest.raises(UpstreamError, match="aborted"):
            await find_all(client)
        assert (client.pool.opened, client.pool.reused) == (1, 1)
    assert len(fake.connections) == 1


Failure = Callable[[Connection], Awaitable[None]]


async def _timeout_failure(conn: Connection) -> None:
    await expect_request(conn, fp.C_FIND_RQ)
    await conn.sleep(DIMSE_S + 5)


async def _violation_failure(conn: Connection) -> None:
    await expect_request(conn, fp.C_FIND_RQ)
    await conn.send(fp.pdu(0x0A, b"\x00" * 4))


@pytest.mark.parametrize("failure", ["DIMSE timeout", "protocol violation", "peer abort",
                                     "consumer abort of a C-GET"])
async def test_pool_never_reuses_after_an_error_or_abort(failure: str) -> None:
    """After an association-level failure the next operation gets a fresh association."""
    async def first(conn: Connection) -> None:
        if failure == "DIMSE timeout":
            await _timeout_failure(conn)
        elif failure == "protocol violation":
            await _violation_failure(conn)
        elif failure == "peer abort":
            request = await expect_request(conn, fp.C_FIND_RQ)
            await conn.respond(request, fp.C_FIND_RSP, 0xFF00, match(1))
            await conn.abort()
        else:
            await expect_request(conn, fp.C_GET_RQ)
            for number in (1, 2):
                uid, data = instance(number)
                await conn.send_message(conn.contexts[CT_IMAGE],
                                        fp.store_rq(number, CT_IMAGE, uid), data)
            await conn.sleep(DIMSE_S + 5)

    async def second(conn: Connection) -> None:
        await _answer_finds(conn, 1, finds=1)

    async with fake_pacs(first, second) as (fake, client):
        if failure == "consumer abort of a C-GET":
            async with client.get(retrieve_query(), STORAGE) as stream:
                async for _ in stream:
                    break
            await stream.wait_closed(5)
        else:
            with pytest.raises(GatewayError):
                await find_all(client)
        found = await find_all(client)
        assert (client.pool.opened, client.pool.reused) == (2, 0)
        first_conn = await fake.connection(0, timeout=DIMSE_S + 8)
    assert [str(ds.PatientName) for ds in found] == ["Hostile^0"]
    if failure != "peer abort":
        assert first_conn.received_types[-1] == fp.ABORT


async def test_failure_status_keeps_the_association() -> None:
    """A DIMSE failure status is an answer, not a broken association: it is reused."""
    async def script(conn: Connection) -> None:
        await conn.accept()
        request = await conn.read_message()
        await conn.respond(request, fp.C_FIND_RSP, 0xC000)
        request = await conn.read_message(timeout=15)
        await conn.respond(request, fp.C_FIND_RSP, 0x0000)

    async with fake_pacs(script) as (_, client):
        with pytest.raises(GatewayError):
            await find_all(client)
        assert await find_all(client) == []
        assert (client.pool.opened, client.pool.reused) == (1, 1)


# -- leaks -----------------------------------------------------------------------------------------


def _open_sockets() -> int:
    """Sockets among this process's open file descriptors."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed while listing
            pass
    return count


def _rss() -> int:
    """Resident set size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


ABORTED_RETRIEVALS = 1000


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_no_leaks_after_1000_aborted_retrievals() -> None:
    """1,000 C-GETs abandoned by the consumer after the first instance leave no task, socket,
    leased association or unbounded memory behind."""
    _, data = instance(1, padding=4096)

    async def script(conn: Connection) -> None:
        await expect_request(conn, fp.C_GET_RQ)
        cx = conn.contexts[CT_IMAGE]
        for number in (1, 2):
            await conn.send_message(cx, fp.store_rq(number, CT_IMAGE, f"{STUDY_UID}.{number}"),
                                    data)

    async def aborted_retrieval(client: AsyncPeerClient) -> None:
        async with client.get(retrieve_query(), STORAGE) as stream:
            async for item in stream:
                assert item.sop_instance_uid == f"{STUDY_UID}.1"
                break
        await stream.wait_closed(5)

    async with FakePeer(script, drain_timeout=5) as fake:
        client = make_client(fake.port)
        for _ in range(20):  # warm-up: caches, lazily created objects
            await aborted_retrieval(client)
        await _settle(fake)
        tasks, sockets, rss = len(asyncio.all_tasks()), _open_sockets(), _rss()

        for _ in range(ABORTED_RETRIEVALS):
            await aborted_retrieval(client)
        await _settle(fake)

        assert client.pool.opened == ABORTED_RETRIEVALS + 20
        assert client.pool.reused == 0
        assert client.pool.leased_count == 0 and client.pool.idle_count == 0
        assert not engine_stream._RUNNING
        assert len(asyncio.all_tasks()) == tasks
        assert _open_sockets() <= sockets + 2
        assert _rss() - rss < 20 * 1024 * 1024, f"RSS grew {(_rss() - rss) / 2**20:.1f} MiB"
        assert all(not c.error for c in fake.connections)
        assert all(c.aborts for c in fake.connections), "each abandoned C-GET was aborted"
        await client.close()


DEMO_RETRIEVALS = 20  # a real SCP costs ~0.1 s per association: the 1,000 run above uses the fake


async def test_aborted_retrievals_against_the_demo_pacs_leave_nothing_behind(
        sample_pacs: DemoPacs, samples: list[Dataset]) -> None:
    """The same abandoned C-GET against a real SCP (pynetdicom's, in process): it sees every
    association end, and the gateway side keeps no task, socket or lease."""
    first = samples[0]
    series = [ds for ds in samples if ds.SeriesInstanceUID == first.SeriesInstanceUID]
    assert len(series) > 1, "the retrieval must be abandoned before its end"
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = first.StudyInstanceUID
    query.SeriesInstanceUID = first.SeriesInstanceUID
    storage = [(str(first.SOPClassUID), (str(ImplicitVRLittleEndian), "1.2.840.10008.1.2.1"))]
    server = sample_pacs._server  # the pynetdicom server, to see its associations end
    assert server is not None
    client = make_client(sample_pacs.port)
    client.peer = client.peer.model_copy(update={"ae_title": sample_pacs.ae_title})

    async def aborted_retrieval() -> None:
        async with client.get(query, storage) as stream:
            async for item in stream:
                assert item.sop_instance_uid in {ds.SOPInstanceUID for ds in series}
                break
        await stream.wait_closed(5)

    async def quiet() -> None:
        async with asyncio.timeout(10):
            while server.active_associations or engine_stream._RUNNING:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        gc.collect()

    await aborted_retrieval()
    await quiet()
    tasks, sockets = len(asyncio.all_tasks()), _open_sockets()
    for _ in range(DEMO_RETRIEVALS):
        await aborted_retrieval()
    await quiet()
    assert client.pool.opened == DEMO_RETRIEVALS + 1 and client.pool.reused == 0
    assert client.pool.leased_count == 0 and client.pool.idle_count == 0
    assert len(asyncio.all_tasks()) == tasks
    assert _open_sockets() <= sockets + 2
    await client.close()


async def _settle(fake: FakePeer) -> None:
    """Wait until the fake peer's connections are all closed and the loop is quiet."""
    async with asyncio.timeout(10):
        while fake.active or engine_stream._RUNNING:  # noqa: ASYNC110 - counters, bounded
            await asyncio.sleep(0.01)
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


# -- socket policy ---------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
@pytest.mark.parametrize("enabled", [True, False])
async def test_quickack_is_armed_after_every_write_and_read(
    enabled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """QUICKACK must be set on the real socket after each write (Linux enters delayed-ACK mode
    when we send) and each read; before this was checked, asyncio's TransportSocket wrapper
    was mistaken for "no socket" and it was never set (45 ms per exchange with a Nagle PACS).
    The setting turns it off. NODELAY is set on the connection either way."""
    from app.dimse.engine import pdu_reader

    armed: list[object] = []
    real = pdu_reader.quickack

    def counting(sock: object) -> None:
        armed.append(sock)
        real(sock)

    monkeypatch.setattr(pdu_reader, "quickack", counting)

    async def script(conn: Connection) -> None:
        await _answer_finds(conn, 2, finds=1)

    async with FakePeer(script) as fake:
        peer = PacsPeer(name="fake", ae_title="FAKE_PACS", host="127.0.0.1", port=fake.port,
                        connect_timeout=CONNECT_S, acse_timeout=ACSE_S, dimse_timeout=DIMSE_S,
                        overall_timeout=OVERALL_S)
        client = AsyncPeerClient(GATEWAY_AE, peer, router=MoveRouter(),
                                 max_receive=MAX_RECEIVE, use_quickack=enabled)
        try:
            assert len(await find_all(client)) == 2
            idle = [a for entries in client.pool._idle.values() for a, _ in entries]
            sock = idle[0].reader._sock
            assert sock is not None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            await client.close()
    if not enabled:
        assert armed == []
        return
    # A-ASSOCIATE-RQ and C-FIND-RQ written; A-ASSOCIATE-AC and three responses read.
    assert len(armed) >= 2 + 2
    assert all(s is sock for s in armed)
