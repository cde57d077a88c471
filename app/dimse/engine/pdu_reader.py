"""Length-checked PDU framing and PDV reassembly on an asyncio BufferedProtocol.

Bytes are received straight into one growing buffer; each P-DATA-TF's PDVs are cut out (one copy
per fragment) and joined once per command set or data set. Buffers a data set's fragments still
view are replaced, not overwritten, and reused once that data set is joined. No length is
trusted: a PDU larger than the limit for its type, an unknown PDU type or a malformed PDV list is
a ProtocolViolation, which the owner answers with an A-ABORT.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from app.dimse.engine.commands import MAX_COMMAND_SET, CommandSet
from app.dimse.engine.pdu import (
    HEADER,
    HEADER_LENGTH,
    KNOWN_TYPES,
    MCH_COMMAND,
    MCH_LAST,
    PDV_HEADER,
    AbortReason,
    PduType,
    ProtocolViolation,
)
from app.dimse.engine.transport import quickack

MAX_CONTROL_PDU = 1 << 20  # A-ASSOCIATE-RQ/AC/RJ: even 128 contexts stay far below this
MAX_DATA_SET = 2 << 30  # one data set may be a large multi-frame object, but not unbounded
_INITIAL_BUFFER = 256 * 1024
_FIXED_LENGTH = frozenset((PduType.RELEASE_RQ, PduType.RELEASE_RP, PduType.ABORT))
_FIXED_LENGTH_BODY = 4
_MIN_FREE = 64 * 1024
_MAX_SPARE = 4 * 1024 * 1024  # replaced buffers kept for reuse, per association


@dataclass(slots=True)
class Message:
    """One complete DIMSE message: its presentation context, command set and data set bytes."""

    context_id: int
    command: CommandSet
    data: bytes | None
    data_offset: int = 0  # bytes before the data set in ``data`` (a Part-10 header), if any


class PduOwner(Protocol):
    """What the reader reports to (the association's state machine)."""

    def pdu_received(self, pdu_type: PduType, pdu: bytes) -> None:
        """A control PDU (anything but P-DATA-TF), header included."""

    def message_received(self, message: Message) -> None:
        """A complete DIMSE message from P-DATA-TF PDUs."""

    def pdata_action(self) -> str:
        """What P-DATA-TF means in the current state: "deliver", "ignore" or "violate"."""

    def pause_writing(self) -> None:
        """The transport's write buffer is full."""

    def resume_writing(self) -> None:
        """The transport's write buffer has drained."""

    def violation(self, error: ProtocolViolation) -> None:
        """The byte stream is invalid: abort."""

    def data_prefix(self, command: CommandSet, context_id: int) -> bytes | None:
        """Bytes to put before the data set that follows ``command`` (a C-STORE's Part-10
        header), so that the one join per data set yields the instance as it will be sent."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        """The TCP connection is up."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone."""


class PduReader(asyncio.BufferedProtocol):
    """Frames PDUs from the socket and reassembles DIMSE messages for a PduOwner."""

    def __init__(self, owner: PduOwner, *, max_pdata_length: int, use_quickack: bool) -> None:
        self._owner = owner
        self._max_pdata = max_pdata_length if max_pdata_length > 0 else MAX_DATA_SET
        self._use_quickack = use_quickack
        self._sock: Any = None  # asyncio's TransportSocket or uvloop's, not a socket.socket
        self._buf = bytearray(_INITIAL_BUFFER)
        self._start = 0
        self._end = 0
        self._need = 0
        self._failed = False
        self.last_read = 0.0  # time.monotonic() of the last read: silence is measured from it
        # Reassembly of the message in progress.
        self._context_id: int | None = None
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._command: CommandSet | None = None
        self._data_parts: list[bytes | memoryview] = []
        self._data_size = 0
        self._prefix_size = 0
        self._views = False  # data set fragments are views into the buffer: do not reuse it
        self._pinned: list[bytearray] = []  # replaced buffers the data set in progress views
        self._spare: list[bytearray] = []  # buffers free again, for the next replacement

    # asyncio protocol interface -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the socket for QUICKACK and hand the transport to the owner."""
        sock = transport.get_extra_info("socket")
        self._sock = sock if hasattr(sock, "setsockopt") else None
        self._owner.connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        """Report the end of the connection."""
        self._owner.connection_lost(exc)

    def arm_quickack(self) -> None:
        """Ask Linux to ACK the next incoming segment at once. Linux enters delayed-ACK
        ("pingpong") mode when we send soon after receiving, and leaves QUICKACK after use, so
        this is called after every write and every read; too late once the segment is there."""
        if self._use_quickack and self._sock is not None:
            quickack(self._sock)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Free space at the end of the buffer."""
        free = len(self._buf) - self._end
        pending = self._end - self._start
        # Room for the rest of the PDU, but never trust its declared length for an allocation:
        # at most as much again as has actually arrived (geometric growth, amortised copies),
        # or a peer could make us allocate up to the PDU limit with a 6-byte header.
        wanted = max(_MIN_FREE, min(self._need - pending, max(pending, _INITIAL_BUFFER)))
        if free < wanted:
            size = len(self._buf)
            if not self._views and size - pending >= wanted:
                # Nothing views the buffer: move the partial PDU to its start, in place.
                self._buf[:pending] = self._buf[self._start:self._end]
                self._start, self._end = 0, pending
                return memoryview(self._buf)[pending:]
            while size - pending < wanted:
                size *= 2
            if self._views:
                self._pinned.append(self._buf)
            fresh = self._spare_buffer(size)
            fresh[:pending] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = fresh, 0, pending
        return memoryview(self._buf)[self._end:]

    def _spare_buffer(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes: a spare one if any, else a new (zeroed) one."""
        for i, spare in enumerate(self._spare):
            if len(spare) >= size:
                return self._spare.pop(i)
        return bytearray(size)

    def _recycle(self) -> None:
        """The data set that pinned the replaced buffers is joined: keep them (up to
        _MAX_SPARE bytes) for the next one, so a retrieval of many data sets larger than the
        buffer stops allocating and zeroing a buffer per data set."""
        kept, total = [], 0
        for buffer in reversed(self._spare + self._pinned):
            if total + len(buffer) > _MAX_SPARE:
                break
            kept.append(buffer)
            total += len(buffer)
        self._spare, self._pinned = kept, []

    def buffer_updated(self, nbytes: int) -> None:
        """Parse every complete PDU now in the buffer."""
        self.last_read = time.monotonic()
        self.arm_quickack()
        self._end += nbytes
        if self._failed:
            self._start = self._end = 0
            return
        try:
            self._parse()
        except ProtocolViolation as exc:
            self._failed = True
            self._owner.violation(exc)
        if self._start == self._end and not self._views:
            self._start = self._end = 0  # reuse the buffer: no data set fragment points into it

    def stop(self) -> None:
        """Parse nothing more: the owner has ended the association (a violation it found, an
        abort, a close), so PDUs still in the buffer must not be reported (or logged) again."""
        self._failed = True

    def pause_writing(self) -> None:
        """Pass write flow control on to the owner."""
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        """Pass write flow control on to the owner."""
        self._owner.resume_writing()

    def eof_received(self) -> bool | None:
        """The peer closed its side: let the transport close."""
        return None

    # framing ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        while self._end - self._start >= HEADER_LENGTH:
            pdu_type, length = HEADER.unpack_from(buf, self._start)
            if pdu_type not in KNOWN_TYPES:
                raise ProtocolViolation(f"unrecognised PDU type 0x{pdu_type:02X}",
                                        AbortReason.UNRECOGNIZED_PDU)
            limit = self._limit(pdu_type)
            if length > limit:
                raise ProtocolViolation(
                    f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of {limit}",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE)
            if pdu_type in _FIXED_LENGTH and length != _FIXED_LENGTH_BODY:
                # A-RELEASE-RQ/-RP and A-ABORT have exactly 4 bytes after the header (PS3.8
                # 9.3.6-9.3.8); a shorter one must not be read as a release or an abort.
                raise ProtocolViolation(
                    f"PDU type 0x{pdu_type:02X} of {length} bytes, where the length is fixed at "
                    f"{_FIXED_LENGTH_BODY}", AbortReason.INVALID_PDU_PARAMETER_VALUE)
            total = HEADER_LENGTH + length
            if self._end - self._start < total:
                self._need = total
                return
            self._need = 0
            start = self._start
            self._start += total
            if pdu_type == PduType.P_DATA_TF:
                action = self._owner.pdata_action()
                if action == "violate":
                    raise ProtocolViolation("P-DATA-TF outside an established association",
                                            AbortReason.UNEXPECTED_PDU)
                if action == "deliver":
                    self._pdvs(start + HEADER_LENGTH, start + total)
            else:
                self._owner.pdu_received(PduType(pdu_type), bytes(buf[start:start + total]))
            if self._failed:
                return

    def _limit(self, pdu_type: int) -> int:
        if pdu_type == PduType.P_DATA_TF:
            return self._max_pdata
        if pdu_type in _FIXED_LENGTH:
            return _FIXED_LENGTH_BODY
        return MAX_CONTROL_PDU

    def _pdvs(self, offset: int, end: int) -> None:
        buf = self._buf
        view = memoryview(buf)
        if end - offset < PDV_HEADER.size:
            raise ProtocolViolation("P-DATA-TF without a presentation data value")
        while offset < end:
            if end - offset < PDV_HEADER.size:
                raise ProtocolViolation("truncated PDV item header")
            item_length, context_id, mch = PDV_HEADER.unpack_from(buf, offset)
            if item_length < 2 or item_length > end - offset - 4:
                raise ProtocolViolation(f"PDV item length {item_length} does not fit its PDU")
            fragment = view[offset + 6:offset + 4 + item_length]
            offset += 4 + item_length
            self._fragment(context_id, mch, fragment)

    def _fragment(self, context_id: int, mch: int, fragment: memoryview) -> None:
        """One PDV's bytes, a view into the receive buffer. Data set fragments are kept as
        views until their one join (the buffer is then not reused, only replaced), so each
        data set is copied once on its way from the socket to the message."""
        if self._context_id is None:
            self._context_id = context_id
        elif context_id != self._context_id:
            raise ProtocolViolation("PDVs of one message on different presentation contexts")
        if mch & MCH_COMMAND:
            if self._command is not None:
                raise ProtocolViolation("a command fragment where a data set was expected",
                                        AbortReason.UNEXPECTED_PDU_PARAMETER)
            # Bounded as the fragments arrive: a peer that never sets the last bit must not
            # make us hold its command fragments until the DIMSE timeout.
            self._command_size += len(fragment)
            if self._command_size > MAX_COMMAND_SET:
                raise ProtocolViolation(
                    f"command set fragments exceed {MAX_COMMAND_SET} bytes")
            self._command_parts.append(bytes(fragment))
            if mch & MCH_LAST:
                raw = b"".join(self._command_parts)
                self._command_parts = []
                self._command_size = 0
                command = CommandSet.decode(raw)
                if command.has_data_set:
                    self._command = command
                    assert self._context_id is not None
                    prefix = self._owner.data_prefix(command, self._context_id)
                    if prefix:
                        self._data_parts.append(prefix)
                        self._prefix_size = len(prefix)
                else:
                    self._deliver(command, None)
            return
        if self._command is None:
            raise ProtocolViolation("a data set fragment before its command set",
                                    AbortReason.UNEXPECTED_PDU_PARAMETER)
        self._data_size += len(fragment)
        if self._data_size > MAX_DATA_SET:
            raise ProtocolViolation(f"a data set larger than {MAX_DATA_SET} bytes")
        self._data_parts.append(fragment)
        self._views = True
        if mch & MCH_LAST:
            data = b"".join(self._data_parts)
            command, self._command = self._command, None
            offset, self._prefix_size = self._prefix_size, 0
            self._data_parts = []
            self._views = False
            if self._pinned:
                self._recycle()
            self._data_size = 0
            self._deliver(command, data, offset)

    def _deliver(self, command: CommandSet, data: bytes | None, offset: int = 0) -> None:
        context_id = self._context_id
        self._context_id = None
        assert context_id is not None
        self._owner.message_received(Message(context_id, command, data, offset))
