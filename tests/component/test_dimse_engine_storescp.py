"""The asyncio Storage SCP against misbehaving requestors on a real socket: silence after
connecting (ARTIM), garbage instead of an A-ASSOCIATE-RQ, a malformed PDU after association,
and a C-ECHO; each ends promptly and leaves no association behind."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from app.dimse.engine.commands import CommandSet, c_echo_rq
from app.dimse.engine.pdu import PduType, p_data_pdus
from app.dimse.engine.storescp import AsyncStorageSCP
from app.dimse.move_admission import MoveAdmission, MoveRouter, MoveSource

pytestmark = pytest.mark.timeout(30)
PACS_AE = "MOVE_PACS"
ARTIM_S = 0.5
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
async def scp() -> AsyncIterator[AsyncStorageSCP]:
    """An asyncio Storage SCP admitting PACS_AE from loopback, with a short ARTIM."""
    admission = MoveAdmission([MoveSource("pacs", PACS_AE, ("127.0.0.1",))])
    server = AsyncStorageSCP("SCP_GW", MoveRouter(), "127.0.0.1", 0, admission=admission,
                             reuse_port=False, acse_timeout=ARTIM_S, idle_timeout=2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await asyncio.wait_for(reader.readexactly(6), 5)
    pdu_type, length = struct.unpack(">BxI", header)
    return pdu_type, header + await reader.readexactly(length)


def associate_rq(calling: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "SCP_GW"
    cx = build_context(VERIFICATION)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    return A_ASSOCIATE_RQ(primitive).encode()


async def test_silence_after_connecting_is_closed_by_artim(scp: AsyncStorageSCP) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        data = await asyncio.wait_for(reader.read(), ARTIM_S + 3)
    except ConnectionResetError:  # ARTIM aborts the transport: a reset is a close too
        data = b""
    assert data == b""  # closed, nothing sent
    assert ARTIM_S - 0.1 <= loop.time() - start < ARTIM_S + 2
    writer.close()


async def test_garbage_instead_of_an_associate_request_is_aborted(
        scp: AsyncStorageSCP, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.dimse.engine")
    reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    writer.write(b"\x09\x00\x00\x00\x00\x02xx")  # PDU type 9 does not exist
    pdu_type, _ = await read_pdu(reader)
    assert pdu_type == PduType.ABORT
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert any("unrecognised PDU type" in r.getMessage() for r in caplog.records)
    writer.close()


async def test_echo_then_a_malformed_pdu_is_aborted_and_forgotten(scp: AsyncStorageSCP) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    writer.write(associate_rq(PACS_AE))
    pdu_type, raw = await read_pdu(reader)
    assert pdu_type == PduType.ASSOCIATE_AC
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    assert ac.to_primitive().presentation_context_definition_results_list[0].result == 0
    for pdu in p_data_pdus(1, c_echo_rq(7, VERIFICATION), command=True, max_pdu_length=16384):
        writer.write(pdu)
    pdu_type, raw = await read_pdu(reader)
    assert pdu_type == PduType.P_DATA_TF
    response = CommandSet.decode(raw[12:])
    assert response.status == 0 and response.us(0x0120) == 7
    assert scp.active_associations == 1
    writer.write(b"\x04\x00\x00\x00\x00\x10" + b"\x00\x00\x00\xff" + b"\x01\x03" + b"\x00" * 10)
    pdu_type, _ = await read_pdu(reader)
    assert pdu_type == PduType.ABORT
    for _ in range(50):
        if scp.active_associations == 0:
            break
        await asyncio.sleep(0.05)
    assert scp.active_associations == 0
    writer.close()


async def test_an_unknown_calling_ae_is_rejected(scp: AsyncStorageSCP) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    writer.write(associate_rq("EVIL"))
    pdu_type, raw = await read_pdu(reader)
    assert pdu_type == PduType.ASSOCIATE_RJ
    assert raw[7:10] == b"\x01\x01\x03"  # rejected permanent, service user, AE not recognised
    assert scp.active_associations == 0
    writer.close()
