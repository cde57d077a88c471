"""Unit tests of what both engines share for C-STORE: the C-STORE-RQ command set, the contexts
a request proposes, and the status for an instance no context can carry."""

from __future__ import annotations

from io import BytesIO

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import decode

from app.dimse.engine import commands
from app.dimse.engine.commands import CommandSet
from app.dimse.engine.pdu import HEADER_LENGTH, PDV_OVERHEAD, p_data_pdus
from app.dimse.outgoing import (
    MAX_CONTEXTS,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    OutgoingInstance,
    StoreContexts,
    refused_context_status,
)

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT, JPEG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"


def _instance(sop_class: str = CT, syntax: str = EXPLICIT) -> OutgoingInstance:
    return OutgoingInstance(b"\x00" * 10 + b"DATASET", 10, sop_class, "1.2.3.4.5", syntax)


def test_c_store_rq_is_a_valid_command_set() -> None:
    raw = commands.c_store_rq(77, CT, "1.2.3.4.5")
    ours = CommandSet.decode(raw[12:])  # after the group length element
    assert ours.command_field == commands.Command.C_STORE_RQ
    assert ours.us(commands.MESSAGE_ID) == 77 and ours.has_data_set
    assert ours.text(commands.AFFECTED_SOP_CLASS) == CT
    assert ours.text(commands.AFFECTED_SOP_INSTANCE) == "1.2.3.4.5"
    # what pynetdicom (a PACS's view) makes of it
    decoded = decode(BytesIO(raw), True, True)
    assert decoded.CommandGroupLength == len(raw) - 12
    message = C_STORE_RQ()
    message.command_set = decoded
    primitive = message.message_to_primitive()
    assert (primitive.MessageID, primitive.AffectedSOPClassUID,
            primitive.AffectedSOPInstanceUID, primitive.Priority) == (77, CT, "1.2.3.4.5", 2)


def test_the_data_set_is_sent_as_received_within_the_peer_maximum() -> None:
    instance = OutgoingInstance(b"P" * 132 + bytes(range(256)) * 40, 132, CT, "1.2.3", EXPLICIT)
    pdus = list(p_data_pdus(1, instance.dataset, command=False, max_pdu_length=1000))
    assert all(len(pdu) - HEADER_LENGTH <= 1000 for pdu in pdus)
    sent = b"".join(pdu[HEADER_LENGTH + PDV_OVERHEAD:] for pdu in pdus)
    assert sent == instance.data[132:]


def test_contexts_grow_with_the_request_and_stay_within_128() -> None:
    contexts = StoreContexts()
    assert contexts.need(_instance())
    assert not contexts.need(_instance())
    assert contexts.need(_instance(MR)) and contexts.need(_instance(CT, JPEG))
    assert contexts.pairs() == [(CT, EXPLICIT), (MR, EXPLICIT), (CT, JPEG)]
    assert contexts.proposed() == contexts.pairs()
    contexts.need(_instance(MR, JPEG))
    assert contexts.proposed() == [(CT, EXPLICIT), (MR, EXPLICIT), (CT, JPEG), (MR, JPEG)]
    fresh = StoreContexts()
    fresh.need(_instance(CT, JPEG))
    assert fresh.proposed() == [(CT, JPEG), (CT, EXPLICIT)]  # tells C122 from 0122
    for index in range(200):
        contexts.need(_instance(f"1.2.3.{index}", JPEG))
        assert len(contexts.proposed()) + 1 <= MAX_CONTEXTS  # Verification rides along


def test_refused_context_status() -> None:
    assert refused_context_status(False, 3) == SOP_CLASS_NOT_SUPPORTED
    assert refused_context_status(False, None) == SOP_CLASS_NOT_SUPPORTED
    assert refused_context_status(False, 4) == TRANSFER_SYNTAX_NOT_SUPPORTED
    assert refused_context_status(True, None) == TRANSFER_SYNTAX_NOT_SUPPORTED
