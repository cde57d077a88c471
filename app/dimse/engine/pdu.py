"""PDU framing (PS3.8 9.3): the fixed 6-byte header, P-DATA-TF fragmentation and the short PDUs,
encoded without intermediate objects because they sit on the data path."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum

HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
HEADER_LENGTH = 6
PDV_OVERHEAD = 6  # item length (4), context ID (1), message control header (1)
DEFAULT_SEND_CHUNK = 1 << 20  # when the peer's maximum is 0 (unlimited), still send in 1 MiB PDUs

# Message control header bits (PS3.8 E.2)
MCH_COMMAND = 0x01
MCH_LAST = 0x02


class PduType(IntEnum):
    """PDU types (PS3.8 Table 9-1...9-26)."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


KNOWN_TYPES = frozenset(int(t) for t in PduType)

RELEASE_RQ_PDU = HEADER.pack(PduType.RELEASE_RQ, 4) + b"\x00\x00\x00\x00"
RELEASE_RP_PDU = HEADER.pack(PduType.RELEASE_RP, 4) + b"\x00\x00\x00\x00"


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason when the source is the service provider (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


def abort_pdu(source: AbortSource = AbortSource.SERVICE_USER,
              reason: AbortReason = AbortReason.NOT_SPECIFIED) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8)."""
    return HEADER.pack(PduType.ABORT, 4) + bytes((0, 0, int(source), int(reason)))


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid PDU stream; the association must be aborted."""

    def __init__(self, message: str, reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER_VALUE
                 ) -> None:
        super().__init__(message)
        self.reason = reason


def p_data_pdus(context_id: int, payload: bytes | memoryview, *, command: bool,
                max_pdu_length: int) -> Iterator[bytes]:
    """The P-DATA-TF PDUs carrying one command set or data set, one PDV each, each PDU within
    the peer's maximum length (0: unlimited, sent in DEFAULT_SEND_CHUNK pieces)."""
    limit = max_pdu_length if max_pdu_length > 0 else DEFAULT_SEND_CHUNK
    chunk = max(1, limit - PDV_OVERHEAD)
    view = memoryview(payload)
    total = len(view)
    offset = 0
    base = MCH_COMMAND if command else 0
    while True:
        piece = view[offset:offset + chunk]
        offset += len(piece)
        last = offset >= total
        mch = base | (MCH_LAST if last else 0)
        pdv_length = len(piece) + 2
        yield (HEADER.pack(PduType.P_DATA_TF, pdv_length + 4)
               + PDV_HEADER.pack(pdv_length, context_id, mch) + piece)
        if last:
            return
