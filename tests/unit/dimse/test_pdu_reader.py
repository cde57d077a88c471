"""The PDU reader without a socket: bytes are fed through the BufferedProtocol interface in
arbitrary pieces, and a recording owner shows what it made of them. Framing must not depend on
how the bytes were split, and no declared length is trusted (PS3.8 9.3)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from app.dimse.engine.commands import MAX_COMMAND_SET
from app.dimse.engine.pdu import PduType, ProtocolViolation
from app.dimse.engine.pdu_reader import Message, PduReader
from tests.support import fake_peer as fp

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"


class Owner:
    """Records what the reader reports; P-DATA-TF is delivered (an established association)."""

    def __init__(self) -> None:
        self.pdus: list[tuple[PduType, bytes]] = []
        self.messages: list[Message] = []
        self.violations: list[ProtocolViolation] = []
        self.prefix: bytes | None = None

    def pdu_received(self, pdu_type: PduType, pdu: bytes) -> None:
        """Record a control PDU."""
        self.pdus.append((pdu_type, pdu))

    def message_received(self, message: Message) -> None:
        """Record a DIMSE message."""
        self.messages.append(message)

    def pdata_action(self) -> str:
        """Always deliver."""
        return "deliver"

    def pause_writing(self) -> None:
        """Unused."""

    def resume_writing(self) -> None:
        """Unused."""

    def violation(self, error: ProtocolViolation) -> None:
        """Record a violation."""
        self.violations.append(error)

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Unused."""

    def data_prefix(self, command: object, context_id: int) -> bytes | None:
        """A fixed prefix before every data set, to check the reader puts it in front."""
        return self.prefix

    def connection_lost(self, exc: Exception | None) -> None:
        """Unused."""


def reader(max_pdata: int = 16384) -> tuple[PduReader, Owner]:
    """A reader (no QUICKACK: there is no socket) and its owner."""
    owner = Owner()
    return PduReader(owner, max_pdata_length=max_pdata, use_quickack=False), owner


def feed(target: PduReader, data: bytes, piece: int | None = None) -> None:
    """Deliver ``data`` as the event loop would, ``piece`` bytes per read at most."""
    view = memoryview(data)
    while view:
        buffer = target.get_buffer(-1)
        count = min(len(buffer), len(view), piece or len(view))
        buffer[:count] = view[:count]
        target.buffer_updated(count)
        view = view[count:]


def find_response(context_id: int, status: int, data: bytes | None) -> bytes:
    """A C-FIND-RSP message as P-DATA-TF PDUs."""
    command = fp.response(fp.C_FIND_RSP, 1, status, sop_class=FIND_MODEL,
                          has_data=data is not None)
    out = fp.p_data(fp.pdv(context_id, command, command=True, last=True))
    if data is not None:
        out += fp.p_data(fp.pdv(context_id, data[:10], command=False, last=False),
                         fp.pdv(context_id, data[10:], command=False, last=True))
    return out


@pytest.mark.parametrize("piece", [None, 1, 7, 4096])
def test_messages_do_not_depend_on_how_the_bytes_were_split(piece: int | None) -> None:
    """Two messages (one with a data set in two PDVs) and a release, fed in any pieces."""
    data = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 3
    stream = (find_response(1, 0xFF00, data) + find_response(1, 0x0000, None)
              + fp.release_rq())
    target, owner = reader()
    feed(target, stream, piece)
    assert not owner.violations
    assert [m.command.status for m in owner.messages] == [0xFF00, 0x0000]
    assert owner.messages[0].data == data and owner.messages[1].data is None
    assert [t for t, _ in owner.pdus] == [PduType.RELEASE_RQ]


@pytest.mark.parametrize("piece", [None, 1, 7])
def test_the_owners_prefix_is_joined_in_front_of_the_data_set(piece: int | None) -> None:
    """A C-STORE's Part-10 header goes in front of its data set in the one join, and the
    message says where the data set starts."""
    data = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 3
    target, owner = reader()
    owner.prefix = b"PREAMBLE+META"
    feed(target, find_response(1, 0xFF00, data) + find_response(1, 0x0000, None), piece)
    first, second = owner.messages
    assert first.data == b"PREAMBLE+META" + data and first.data_offset == len(owner.prefix)
    assert second.data is None and second.data_offset == 0


@pytest.mark.parametrize("pdu_type", [fp.RELEASE_RQ, fp.RELEASE_RP, fp.ABORT])
@pytest.mark.parametrize("length", [0, 2, 3, 5, 8])
def test_fixed_length_pdus_of_another_length_are_violations(pdu_type: int, length: int) -> None:
    """A-RELEASE-RQ/-RP and A-ABORT carry exactly 4 bytes (PS3.8 9.3.6-9.3.8)."""
    target, owner = reader()
    feed(target, fp.pdu(pdu_type, b"\x00" * length))
    assert not owner.pdus
    assert len(owner.violations) == 1
    feed(target, fp.release_rq())  # nothing more is parsed after a violation
    assert not owner.pdus


def test_a_declared_length_is_not_an_allocation() -> None:
    """With no P-DATA limit, a header declaring 1 GiB grows the buffer with what arrives."""
    target, owner = reader(max_pdata=0)
    feed(target, fp.pdu(fp.P_DATA_TF, b"\x00" * 1000, declared_length=1 << 30))
    for _ in range(4):
        assert len(target.get_buffer(-1)) < 4 * 1024 * 1024
        feed(target, b"\x00" * 100_000)
    assert len(target.get_buffer(-1)) < 4 * 1024 * 1024
    assert not owner.violations and not owner.messages


def test_large_pdu_still_arrives_whole() -> None:
    """Geometric growth: a PDU of several MiB fed in 64 KiB reads is reassembled exactly."""
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
    command = fp.response(fp.C_FIND_RSP, 1, 0xFF00, sop_class=FIND_MODEL, has_data=True)
    stream = (fp.p_data(fp.pdv(1, command, command=True, last=True))
              + fp.p_data(fp.pdv(1, payload, command=False, last=True)))
    target, owner = reader(max_pdata=0)
    feed(target, stream, 65536)
    assert not owner.violations
    assert [m.data for m in owner.messages] == [payload]


def test_command_fragments_are_capped_as_they_arrive() -> None:
    """A command set that never ends is a violation once past MAX_COMMAND_SET bytes."""
    target, owner = reader()
    fragment = fp.p_data(fp.pdv(1, b"\x00" * 16000, command=True, last=False))
    sent = 0
    while not owner.violations:
        feed(target, fragment)
        sent += 16000
        assert sent <= MAX_COMMAND_SET + 16000
    assert "command set fragments exceed" in str(owner.violations[0])


def test_pdata_larger_than_negotiated_is_refused_on_its_header() -> None:
    """Only the 6-byte header is needed to refuse a PDU over the negotiated maximum."""
    target, owner = reader(max_pdata=16384)
    feed(target, struct.pack(">BxI", fp.P_DATA_TF, 16385))
    assert len(owner.violations) == 1


def test_stop_ends_parsing_of_the_current_read() -> None:
    """After ``stop`` (the owner closed the association) nothing more is reported."""
    target, owner = reader()
    target.stop()
    feed(target, find_response(1, 0x0000, None) + fp.release_rq())
    assert not owner.messages and not owner.pdus and not owner.violations


def test_buffers_pinned_by_a_data_set_are_reused_for_the_next() -> None:
    """A data set larger than the buffer pins the buffers its fragments view; once it is
    joined they serve the next data sets, so a long retrieval stops allocating buffers, and
    every data set still arrives exactly."""
    command = fp.response(fp.C_FIND_RSP, 1, 0xFF00, sop_class=FIND_MODEL, has_data=True)
    payloads = [bytes([n]) * 600_000 for n in range(24)]
    stream = b"".join(
        fp.p_data(fp.pdv(1, command, command=True, last=True))
        + b"".join(fp.p_data(fp.pdv(1, p[i:i + 131_000], command=False,
                                    last=i + 131_000 >= len(p)))
                   for i in range(0, len(p), 131_000))
        for p in payloads)
    target, owner = reader(max_pdata=0)
    seen: set[int] = set()
    view = memoryview(stream)
    while view:
        buffer = target.get_buffer(-1)
        seen.add(id(buffer.obj))
        count = min(len(buffer), len(view), 200_000)
        buffer[:count] = view[:count]
        del buffer
        target.buffer_updated(count)
        view = view[count:]
    assert not owner.violations
    assert [m.data for m in owner.messages] == payloads
    assert len(seen) <= 6, f"{len(seen)} buffers for {len(payloads)} data sets"
