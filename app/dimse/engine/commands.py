"""DIMSE command sets (PS3.7 9.3, Implicit VR Little Endian): requests and responses encoded
with pynetdicom's message classes, and incoming command sets read by walking their elements
(never by searching for tag bytes, which a UID value can contain)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import encode

from app.dimse.engine.pdu import AbortReason, ProtocolViolation

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
MAX_COMMAND_SET = 64 * 1024  # real command sets are a few hundred bytes


class Command:
    """CommandField values (PS3.7 E.1)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    C_CANCEL_RQ = 0x0FFF


NO_DATA_SET = 0x0101

# Command set elements (group 0000) the engine reads.
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDED_TO = 0x0120
DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
REMAINING = 0x1020
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_ID = 0x1031


@dataclass(frozen=True, slots=True)
class CommandSet:
    """A decoded command set: element number (group 0000) -> raw value bytes."""

    values: dict[int, bytes]

    @classmethod
    def decode(cls, data: bytes) -> CommandSet:
        """Walk an Implicit VR Little Endian command set; ProtocolViolation if malformed."""
        if len(data) > MAX_COMMAND_SET:
            raise ProtocolViolation(f"command set of {len(data)} bytes is implausibly large")
        values: dict[int, bytes] = {}
        offset, end = 0, len(data)
        while offset < end:
            if end - offset < 8:
                raise ProtocolViolation("truncated command set element",
                                        AbortReason.INVALID_PDU_PARAMETER_VALUE)
            group, element, length = _ELEMENT.unpack_from(data, offset)
            offset += 8
            if group != 0x0000 or length > end - offset:
                raise ProtocolViolation(
                    f"invalid command set element ({group:04X},{element:04X}) length {length}")
            values[element] = data[offset:offset + length]
            offset += length
        if COMMAND_FIELD not in values:
            raise ProtocolViolation("command set without a CommandField")
        return cls(values)

    def us(self, element: int, default: int | None = None) -> int | None:
        """An US value (the first one), or ``default`` when absent or empty."""
        raw = self.values.get(element)
        if raw is None or len(raw) < 2:
            return default
        return int(_US.unpack_from(raw)[0])

    def text(self, element: int) -> str | None:
        """A UI/AE/LO value with its padding removed, or None when absent."""
        raw = self.values.get(element)
        if raw is None:
            return None
        return raw.decode("ascii", "replace").strip("\x00 ")

    @property
    def command_field(self) -> int:
        """The CommandField (0000,0100)."""
        return self.us(COMMAND_FIELD, 0) or 0

    @property
    def has_data_set(self) -> bool:
        """Whether a data set follows (CommandDataSetType other than 0x0101)."""
        return self.us(DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET

    @property
    def status(self) -> int | None:
        """Status (0000,0900) of a response."""
        return self.us(STATUS)


def _encode_message(message: dimse_messages.DIMSEMessage, primitive: Any) -> bytes:
    message.primitive_to_message(primitive)
    encoded = encode(message.command_set, True, True)
    if encoded is None:  # pragma: no cover - a command set always encodes
        raise ValueError("command set could not be encoded")
    return bytes(encoded)


def _with_identifier(primitive: Any, identifier: bytes | None) -> Any:
    if identifier is not None:
        primitive.Identifier = BytesIO(identifier)
    return primitive


def c_echo_rq(message_id: int, sop_class: str) -> bytes:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    return _encode_message(dimse_messages.C_ECHO_RQ(), primitive)


MEDIUM_PRIORITY = 0x0002


def _request(primitive: Any, message: dimse_messages.DIMSEMessage, message_id: int,
             sop_class: str, identifier: bytes) -> bytes:
    """A query/retrieve request with an identifier, medium priority."""
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.Priority = MEDIUM_PRIORITY
    return _encode_message(message, _with_identifier(primitive, identifier))


def c_find_rq(message_id: int, sop_class: str, identifier: bytes) -> bytes:
    """C-FIND-RQ (PS3.7 9.3.2.1)."""
    return _request(dimse_primitives.C_FIND(), dimse_messages.C_FIND_RQ(), message_id,
                    sop_class, identifier)


def c_get_rq(message_id: int, sop_class: str, identifier: bytes) -> bytes:
    """C-GET-RQ (PS3.7 9.3.3.1)."""
    return _request(dimse_primitives.C_GET(), dimse_messages.C_GET_RQ(), message_id,
                    sop_class, identifier)


def c_move_rq(message_id: int, sop_class: str, destination: str, identifier: bytes) -> bytes:
    """C-MOVE-RQ (PS3.7 9.3.4.1) to ``destination``."""
    primitive = dimse_primitives.C_MOVE()
    primitive.MoveDestination = destination
    return _request(primitive, dimse_messages.C_MOVE_RQ(), message_id, sop_class, identifier)


def c_cancel_rq(message_id: int) -> bytes:
    """C-CANCEL-RQ for the operation with ``message_id`` (PS3.7 9.3.2.3)."""
    primitive = dimse_primitives.C_CANCEL()
    primitive.MessageIDBeingRespondedTo = message_id
    message = dimse_messages.C_CANCEL_RQ()
    return _encode_message(message, primitive)


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_rsp(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """C-STORE-RSP (PS3.7 9.3.1.2) for a received sub-operation. Written element by element
    because it is sent once per instance: pynetdicom's message classes take ~0.5 ms for it."""
    body = b"".join(
        _ELEMENT.pack(0, element, len(value)) + value
        for element, value in (
            (AFFECTED_SOP_CLASS, _ui(sop_class)),
            (COMMAND_FIELD, _US.pack(Command.C_STORE_RSP)),
            (RESPONDED_TO, _US.pack(message_id)),
            (DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
            (STATUS, _US.pack(status)),
            (AFFECTED_SOP_INSTANCE, _ui(sop_instance)),
        )
    )
    return _ELEMENT.pack(0, 0x0000, 4) + _UL.pack(len(body)) + body


PRIORITY = 0x0700
DATA_SET_PRESENT = 0x0001


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """C-STORE-RQ (PS3.7 9.3.1.1), medium priority, a data set following. Written element by
    element, like c_store_rsp: sent once per stored instance."""
    body = b"".join(
        _ELEMENT.pack(0, element, len(value)) + value
        for element, value in (
            (AFFECTED_SOP_CLASS, _ui(sop_class)),
            (COMMAND_FIELD, _US.pack(Command.C_STORE_RQ)),
            (MESSAGE_ID, _US.pack(message_id)),
            (PRIORITY, _US.pack(MEDIUM_PRIORITY)),
            (DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
            (AFFECTED_SOP_INSTANCE, _ui(sop_instance)),
        )
    )
    return _ELEMENT.pack(0, 0x0000, 4) + _UL.pack(len(body)) + body


def c_echo_rsp(message_id: int, sop_class: str, status: int = 0x0000) -> bytes:
    """C-ECHO-RSP (PS3.7 9.3.5.2), for the storage SCP's Verification service."""
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.Status = status
    return _encode_message(dimse_messages.C_ECHO_RSP(), primitive)
