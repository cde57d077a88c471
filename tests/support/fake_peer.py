"""A scripted fake PACS for hostile-peer tests: an asyncio server on 127.0.0.1 (port 0) whose
every accepted connection runs a test-supplied script (send raw bytes, read or expect PDUs,
sleep, close, abort). Scripts can get past negotiation with ``accept()``, which answers the
A-ASSOCIATE-RQ it received with a valid A-ASSOCIATE-AC built with pynetdicom's PDU classes,
and then misbehave.

The framing and command-set code here is written independently of the engine under test (so a
bug there is not mirrored here). After its script, a connection keeps reading and recording
PDUs until the client closes (bounded by ``drain_timeout``), so a test can see the A-ABORT or
A-RELEASE-RP that the engine sent in answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}

# Command fields and elements (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0002, 0x0100, 0x0110, 0x0120
DATA_SET_TYPE, STATUS, AFFECTED_SOP_INSTANCE = 0x0800, 0x0900, 0x1000
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
NO_DATA_SET, DATA_SET_PRESENT = 0x0101, 0x0000

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7433.99.1"  # a test-only implementation UID
_HEADER = struct.Struct(">BxI")
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")


# -- PDUs and command sets, built by hand ---------------------------------------------------------


def pdu(pdu_type: int, body: bytes, *, declared_length: int | None = None) -> bytes:
    """A PDU: the 6-byte header (with ``declared_length`` to lie about the length) and body."""
    length = len(body) if declared_length is None else declared_length
    return _HEADER.pack(pdu_type, length) + body


def pdv(context_id: int, fragment: bytes, *, command: bool, last: bool,
        declared_length: int | None = None) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1), optionally with a false length."""
    length = len(fragment) + 2 if declared_length is None else declared_length
    control = (0x01 if command else 0) | (0x02 if last else 0)
    return struct.pack(">IBB", length, context_id, control) + fragment


def p_data(*pdvs: bytes) -> bytes:
    """A P-DATA-TF PDU carrying the given PDV items."""
    return pdu(P_DATA_TF, b"".join(pdvs))


def release_rq() -> bytes:
    """A-RELEASE-RQ (PS3.8 9.3.6)."""
    return pdu(RELEASE_RQ, b"\x00" * 4)


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return pdu(RELEASE_RP, b"\x00" * 4)


def abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8)."""
    return pdu(ABORT, bytes((0, 0, source, reason)))


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def command_set(elements: dict[int, bytes]) -> bytes:
    """An Implicit VR Little Endian command set (group 0000) with its group length."""
    body = b"".join(_ELEMENT.pack(0, tag, len(value)) + value
                    for tag, value in sorted(elements.items()) if tag != 0)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def response(command_field: int, responded_to: int, status: int, *, sop_class: str,
             has_data: bool = False, counts: tuple[int, int, int, int] | None = None) -> bytes:
    """A C-xxx-RSP command set; ``counts`` = (remaining, completed, failed, warning)."""
    elements = {
        AFFECTED_SOP_CLASS: _ui(sop_class),
        COMMAND_FIELD: _US.pack(command_field),
        RESPONDED_TO: _US.pack(responded_to),
        DATA_SET_TYPE: _US.pack(DATA_SET_PRESENT if has_data else NO_DATA_SET),
        STATUS: _US.pack(status),
    }
    if counts is not None:
        for tag, value in zip((REMAINING, COMPLETED, FAILED, WARNING), counts, strict=True):
            elements[tag] = _US.pack(value)
    return command_set(elements)


def store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set (a C-GET sub-operation) announcing a data set."""
    return command_set({
        AFFECTED_SOP_CLASS: _ui(sop_class),
        COMMAND_FIELD: _US.pack(C_STORE_RQ),
        MESSAGE_ID: _US.pack(message_id),
        0x0700: _US.pack(0x0002),  # Priority: medium
        DATA_SET_TYPE: _US.pack(DATA_SET_PRESENT),
        AFFECTED_SOP_INSTANCE: _ui(sop_instance),
    })


def encode_dataset(ds: Dataset) -> bytes:
    """``ds`` in Implicit VR Little Endian (the transfer syntax ``accept`` picks first)."""
    raw = encode(ds, True, True)
    assert raw is not None
    return bytes(raw)


def parse_command(raw: bytes) -> dict[int, bytes]:
    """Element number -> value of a command set (strict: the engine only sends valid ones)."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        group, element, length = _ELEMENT.unpack_from(raw, offset)
        assert group == 0, f"command set element in group {group:04X}"
        values[element] = raw[offset + 8:offset + 8 + length]
        offset += 8 + length
    return values


@dataclass
class Message:
    """A DIMSE message the fake peer received."""

    context_id: int
    command: dict[int, bytes]
    data: bytes | None

    def us(self, element: int) -> int:
        """An US value of the command set."""
        return int(_US.unpack_from(self.command[element])[0])

    @property
    def command_field(self) -> int:
        """CommandField (0000,0100)."""
        return self.us(COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        """MessageID (0000,0110) of a request."""
        return self.us(MESSAGE_ID)

    @property
    def sop_class(self) -> str:
        """AffectedSOPClassUID (0000,0002)."""
        return self.command[AFFECTED_SOP_CLASS].decode("ascii").rstrip("\x00 ")

    def identifier(self) -> Dataset:
        """The data set, decoded as Implicit VR Little Endian."""
        assert self.data is not None
        return decode(BytesIO(self.data), True, True)


class PeerClosed(Exception):
    """The client closed the connection while the script expected more."""


# -- one connection -------------------------------------------------------------------------------


@dataclass
class Connection:
    """One accepted connection: the script's handle, and what was seen on it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[tuple[int, bytes]] = field(default_factory=list)
    contexts: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    eof: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    # what arrived ---------------------------------------------------------------------------
    @property
    def received_types(self) -> list[int]:
        """Types of every PDU received, in order."""
        return [t for t, _ in self.received]

    @property
    def aborts(self) -> list[tuple[int, int]]:
        """(source, reason) of each A-ABORT received."""
        return [(raw[8], raw[9]) for t, raw in self.received if t == ABORT]

    # primitives -----------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """Write raw bytes (ignoring a client that has gone)."""
        if self.writer.is_closing():
            return
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def read_pdu(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next whole PDU (type, raw bytes with header); PeerClosed at EOF."""
        try:
            async with asyncio.timeout(timeout):
                header = await self.reader.readexactly(6)
                pdu_type, length = _HEADER.unpack(header)
                body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof = True
            raise PeerClosed("the client closed the connection") from None
        raw = header + body
        self.received.append((pdu_type, raw))
        return pdu_type, raw

    async def expect(self, pdu_type: int, timeout: float = 5.0) -> bytes:
        """The next PDU, which must be of ``pdu_type``."""
        got, raw = await self.read_pdu(timeout)
        assert got == pdu_type, f"expected {PDU_NAMES[pdu_type]}, got {PDU_NAMES.get(got, got)}"
        return raw

    async def sleep(self, seconds: float, *, deaf: bool = False) -> None:
        """Send nothing for ``seconds`` (a silent peer), recording what arrives meanwhile and
        ending the script (PeerClosed) when the client closes; ``deaf`` does not even read."""
        if deaf:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    await self.read_pdu(seconds + 1)

    def close(self) -> None:
        """Close the TCP connection (FIN, no A-ABORT)."""
        self.writer.close()

    async def abort(self, source: int = 0, reason: int = 0) -> None:
        """Send A-ABORT, then close."""
        await self.send(abort(source, reason))
        self.close()

    # negotiation ----------------------------------------------------------------------------
    async def accept(self, *, max_pdu: int = 16384, refuse: Sequence[str] = ()) -> A_ASSOCIATE:
        """Read the A-ASSOCIATE-RQ and accept it: every context (but those whose abstract
        syntax is in ``refuse``) with its first transfer syntax, the requested roles agreed."""
        raw = await self.expect(ASSOCIATE_RQ)
        rq = A_ASSOCIATE_RQ()
        rq.decode(raw)
        request = rq.to_primitive()
        results = []
        for cx in request.presentation_context_definition_list:
            result = PresentationContext()
            result.context_id = cx.context_id
            result.abstract_syntax = cx.abstract_syntax
            refused = str(cx.abstract_syntax) in refuse
            result.result = 0x03 if refused else 0x00  # 3: abstract syntax not supported
            result.transfer_syntax = [cx.transfer_syntax[0]]
            results.append(result)
            if not refused:
                self.contexts[str(cx.abstract_syntax)] = int(cx.context_id or 0)
        length = MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = UID(IMPLEMENTATION_UID)
        user_info: list[Any] = [length, implementation]
        for item in request.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                role = SCP_SCU_RoleSelectionNegotiation()
                role.sop_class_uid = item.sop_class_uid
                role.scu_role, role.scp_role = item.scu_role, item.scp_role
                user_info.append(role)
        answer = A_ASSOCIATE()
        answer.application_context_name = request.application_context_name
        answer.calling_ae_title = request.calling_ae_title
        answer.called_ae_title = request.called_ae_title
        answer.result = 0x00
        answer.presentation_context_definition_results_list = results
        answer.user_information = user_info
        await self.send(A_ASSOCIATE_AC(answer).encode())
        return request

    async def reject(self, result: int, source: int, reason: int) -> None:
        """Read the A-ASSOCIATE-RQ and answer A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
        await self.expect(ASSOCIATE_RQ)
        answer = A_ASSOCIATE()
        answer.result, answer.result_source, answer.diagnostic = result, source, reason
        await self.send(A_ASSOCIATE_RJ(answer).encode())

    # DIMSE ------------------------------------------------------------------------------------
    async def read_message(self, timeout: float = 5.0) -> Message:
        """The next complete DIMSE message (command set, then its data set if announced)."""
        command_parts: list[bytes] = []
        data_parts: list[bytes] = []
        command: dict[int, bytes] | None = None
        context_id = 0
        while True:
            pdu_type, raw = await self.read_pdu(timeout)
            assert pdu_type == P_DATA_TF, f"expected P-DATA-TF, got {PDU_NAMES.get(pdu_type)}"
            offset = 6
            while offset < len(raw):
                length, context_id, control = struct.unpack_from(">IBB", raw, offset)
                fragment = raw[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x01:
                    command_parts.append(fragment)
                    if control & 0x02:
                        command = parse_command(b"".join(command_parts))
                        if _US.unpack(command[DATA_SET_TYPE])[0] == NO_DATA_SET:
                            return Message(context_id, command, None)
                else:
                    data_parts.append(fragment)
                    if control & 0x02:
                        assert command is not None
                        return Message(context_id, command, b"".join(data_parts))

    async def send_message(self, context_id: int, command: bytes, data: bytes | None = None,
                           *, max_pdu: int = 16384, data_pdus: int | None = None) -> None:
        """Send a command set (and data set), fragmented within ``max_pdu``; ``data_pdus``
        sends only that many of the data set's PDUs (a peer stopping mid data set)."""
        out = bytearray()
        for payload, is_command in ((command, True), (data, False)):
            if payload is None:
                continue
            step = max_pdu - 6
            for number, start in enumerate(range(0, max(len(payload), 1), step)):
                if not is_command and data_pdus is not None and number >= data_pdus:
                    break
                piece = payload[start:start + step]
                last = start + step >= len(payload)
                out += p_data(pdv(context_id, piece, command=is_command, last=last))
        await self.send(bytes(out))

    async def respond(self, request: Message, command_field: int, status: int,
                      data: bytes | None = None,
                      counts: tuple[int, int, int, int] | None = None) -> None:
        """Answer ``request`` on its context with a response of ``command_field``."""
        await self.send_message(request.context_id, response(
            command_field, request.message_id, status, sop_class=request.sop_class,
            has_data=data is not None, counts=counts), data)

    async def drain(self, timeout: float) -> None:
        """Record PDUs until the client closes or ``timeout`` passes; an A-RELEASE-RQ is
        answered (a well-behaved peer once its script is over), so releases end at once."""
        with contextlib.suppress(PeerClosed, TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    pdu_type, _ = await self.read_pdu(timeout)
                    if pdu_type == RELEASE_RQ:
                        await self.send(release_rp())


Script = Callable[[Connection], Awaitable[None]]


class FakePeer:
    """``async with FakePeer(script_1, script_2, ...) as peer``: connection n runs script n
    (the last script for every later connection); ``peer.connections`` records each."""

    def __init__(self, *scripts: Script, drain_timeout: float = 15.0) -> None:
        assert scripts, "at least one script"
        self._scripts = scripts
        self._drain_timeout = drain_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: list[Connection] = []
        self._arrived = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> FakePeer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self._server.wait_closed()

    @property
    def active(self) -> int:
        """Connections whose handler has not finished."""
        return sum(1 for conn in self.connections if not conn.done.is_set())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(reader, writer)
        script = self._scripts[min(len(self.connections), len(self._scripts) - 1)]
        self.connections.append(conn)
        self._arrived.set()
        try:
            try:
                await script(conn)
            except PeerClosed:
                pass
            except Exception as exc:  # recorded for the test to assert on
                log.warning("fake peer script failed: %r", exc)
                conn.error = exc
            if not writer.is_closing():
                await conn.drain(self._drain_timeout)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            conn.done.set()
            self._tasks.discard(task)

    async def connection(self, index: int, timeout: float = 5.0) -> Connection:
        """The ``index``-th connection once its handler has finished (bounded wait)."""
        async with asyncio.timeout(timeout):
            while len(self.connections) <= index:
                self._arrived.clear()
                await self._arrived.wait()
            await self.connections[index].done.wait()
        return self.connections[index]
