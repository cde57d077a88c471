"""The DIMSE-C operations the gateway uses (PS3.4 A.4, B.2, C.4.1-C.4.3), each on one
established association: C-ECHO, C-STORE, C-FIND (with C-CANCEL), C-GET (C-STORE
sub-operations answered on the same association) and C-MOVE. Association errors propagate; the
caller maps them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode

from app.dimse.bridge import Cancelled
from app.dimse.engine import commands
from app.dimse.engine.association import AcceptedContext, Association
from app.dimse.engine.commands import Command, CommandSet
from app.dimse.engine.part10 import part10
from app.dimse.engine.pdu_reader import Message
from app.dimse.engine.stream import Sink
from app.dimse.find import FindOutcome
from app.dimse.outgoing import OutgoingInstance, StoreStatus, refused_context_status
from app.dimse.received import ReceivedInstance, RetrieveOutcome, failed_uid_list
from app.dimse.retrieve_responses import FinalResponse
from app.dimse.status import Category, category, find_failure
from app.errors import UpstreamError, UpstreamNotSupported

log = logging.getLogger(__name__)
OUT_OF_RESOURCES = 0xA700
PENDING_MATCH = (0xFF00, 0xFF01)


@dataclass
class Progress:
    """How far an operation got: a response arrived (a reused association was alive), and the
    final response arrived (the association is clean and may be reused)."""

    responded: bool = False
    finished: bool = False


def encode_identifier(identifier: Dataset, cx: AcceptedContext) -> bytes:
    """An identifier in the accepted context's transfer syntax."""
    syntax = UID(cx.transfer_syntax)
    encoded = encode(identifier, syntax.is_implicit_VR, syntax.is_little_endian)
    if encoded is None:
        raise UpstreamError("the query identifier could not be encoded")
    return bytes(encoded)


def decode_identifier(data: bytes, cx: AcceptedContext) -> Dataset:
    """A received identifier in the accepted context's transfer syntax."""
    syntax = UID(cx.transfer_syntax)
    return decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)


def as_part10(message: Message, sop_class: str, sop_uid: str, transfer_syntax: str,
              source_ae: str) -> bytes:
    """A C-STORE's instance as Part-10 bytes: as received when the reader framed it already
    (the usual case), else framed now."""
    assert message.data is not None
    if message.data_offset:
        return message.data
    return part10(message.data, sop_class, sop_uid, transfer_syntax, source_ae)


def require_context(assoc: Association, model: str, peer_name: str, what: str) -> AcceptedContext:
    """The accepted context for ``model`` or UpstreamNotSupported naming the service."""
    cx = assoc.context_for(model)
    if cx is None:
        raise UpstreamNotSupported(f"PACS {peer_name} does not support {what}")
    return cx


def _response_to(message: Message, message_id: int, expected: int, assoc: Association,
                 operation: str) -> CommandSet:
    command = message.command
    if command.command_field != expected or command.us(commands.RESPONDED_TO) != message_id:
        assoc.abort("unexpected DIMSE message")
        raise UpstreamError(
            f"{assoc.label}: unexpected DIMSE message 0x{command.command_field:04X} during "
            f"{operation}")
    if command.status is None:
        assoc.abort("response without a status")
        raise UpstreamError(f"{assoc.label}: {operation} response without a Status")
    return command


async def c_echo(assoc: Association, progress: Progress, *, model: str, message_id: int,
                 timeout: float) -> int:
    """Send C-ECHO-RQ; the response status."""
    cx = require_context(assoc, model, assoc.label, "Verification")
    await assoc.send(cx.context_id, commands.c_echo_rq(message_id, model))
    message = await assoc.receive(timeout)
    progress.responded = True
    command = _response_to(message, message_id, Command.C_ECHO_RSP, assoc, "C-ECHO")
    progress.finished = True
    return int(command.status or 0)


async def c_find(assoc: Association, progress: Progress, sink: Sink[Dataset], identifier: Dataset,
                 *, model: str, message_id: int, timeout: float, peer_name: str,
                 relational: bool) -> FindOutcome:
    """One C-FIND; each match is emitted; a consumer that stops causes a C-CANCEL, after which
    the responses are drained to the final one (so the association stays reusable)."""
    cx = require_context(assoc, model, peer_name, "Study Root Query/Retrieve FIND")
    ident = encode_identifier(identifier, cx)
    await assoc.send(cx.context_id, commands.c_find_rq(message_id, model, ident), ident)
    cancel_sent = unsupported_keys = False
    matches = 0
    while True:
        message = await assoc.receive(timeout)
        progress.responded = True
        command = _response_to(message, message_id, Command.C_FIND_RSP, assoc, "C-FIND")
        code = int(command.status or 0)
        if code in PENDING_MATCH:
            unsupported_keys = unsupported_keys or code == 0xFF01
            if cancel_sent or message.data is None:
                continue
            try:
                await sink.emit(decode_identifier(message.data, cx))
                matches += 1
            except Cancelled:
                await assoc.send(cx.context_id, commands.c_cancel_rq(message_id))
                cancel_sent = True
            continue
        progress.finished = True
        cat = category(code)
        capped = cat is Category.CANCEL and not cancel_sent
        if cat not in (Category.SUCCESS, Category.WARNING, Category.CANCEL):
            raise find_failure(code, comment=command.text(commands.ERROR_COMMENT) or None)
        if capped:
            log.warning("PACS %s ended a C-FIND with Cancel after %d matches (a result cap)",
                        peer_name, matches)
        return FindOutcome(code, cancel_sent, matches, unsupported_keys, relational, capped)


@dataclass
class SubOperations:
    """A retrieval's sub-operation counters, as the latest response that carried them says
    (PS3.4 C.4.2.1.6-9, C.4.3.1.3)."""

    completed: int = 0
    failed: int = 0
    warning: int = 0

    def update(self, command: CommandSet) -> int:
        """Take the counters of a C-GET/C-MOVE response; its status."""
        self.completed = command.us(commands.COMPLETED, 0) or self.completed
        self.failed = command.us(commands.FAILED, 0) or self.failed
        self.warning = command.us(commands.WARNING, 0) or self.warning
        return int(command.status or 0)

    def final(self, command: CommandSet, message: Message, cx: AcceptedContext
              ) -> FinalResponse:
        """The final response, counters falling back to the last ones seen."""
        final = _final(command, message, cx)
        return FinalResponse(final.status, final.completed or self.completed,
                             final.failed or self.failed, final.warning or self.warning,
                             final.failed_uids)


def _final(command: CommandSet, message: Message, cx: AcceptedContext) -> FinalResponse:
    failed_uids: tuple[str, ...] = ()
    if message.data:
        try:
            failed_uids = failed_uid_list(decode_identifier(message.data, cx))
        except Exception:  # a malformed optional identifier does not change the outcome
            log.debug("undecodable final response identifier", exc_info=True)
    return FinalResponse(int(command.status or 0), command.us(commands.COMPLETED, 0) or 0,
                         command.us(commands.FAILED, 0) or 0,
                         command.us(commands.WARNING, 0) or 0, failed_uids)


async def c_get(assoc: Association, progress: Progress, sink: Sink[ReceivedInstance],
                identifier: Dataset, *, model: str, message_id: int, timeout: float,
                peer_name: str, idle_timeout: float | None = None) -> RetrieveOutcome:
    """One C-GET: each C-STORE sub-operation is emitted as it completes and answered once the
    consumer's queue has room (so a slow consumer slows the PACS). The first response may take
    ``timeout``; once data flows, ``idle_timeout`` of silence (if shorter) ends it: a PACS that
    stopped mid-retrieval is noticed quickly while a slow start is still allowed."""
    cx = require_context(assoc, model, peer_name, "Study Root Query/Retrieve GET")
    ident = encode_identifier(identifier, cx)
    await assoc.send(cx.context_id, commands.c_get_rq(message_id, model, ident), ident)
    received = 0
    counters = SubOperations()
    source_ae = assoc.called_ae
    flowing = timeout if idle_timeout is None else min(timeout, idle_timeout)
    while True:
        message = await assoc.receive(flowing if progress.responded else timeout)
        progress.responded = True
        command = message.command
        if command.command_field == Command.C_STORE_RQ:
            store_cx = assoc.contexts[message.context_id]
            sop_class = command.text(commands.AFFECTED_SOP_CLASS) or store_cx.abstract_syntax
            sop_uid = command.text(commands.AFFECTED_SOP_INSTANCE) or ""
            status = 0x0000
            if message.data is None or not sop_uid:
                status = 0xC000  # cannot understand: no data set or no instance UID
            else:
                instance = ReceivedInstance(
                    as_part10(message, sop_class, sop_uid, store_cx.transfer_syntax,
                              source_ae), sop_class, sop_uid, store_cx.transfer_syntax)
                try:
                    await sink.emit(instance)
                    received += 1
                except Cancelled:
                    status = OUT_OF_RESOURCES
            await assoc.send(message.context_id, commands.c_store_rsp(
                command.us(commands.MESSAGE_ID, 0) or 0, sop_class, sop_uid, status))
            continue
        command = _response_to(message, message_id, Command.C_GET_RSP, assoc, "C-GET")
        if category(counters.update(command)) is Category.PENDING:
            continue
        progress.finished = True
        final = counters.final(command, message, cx)
        return RetrieveOutcome(final.status, final.completed, final.failed, final.warning,
                               received, final.failed_uids)


async def c_move(assoc: Association, progress: Progress, identifier: Dataset, destination: str,
                 *, model: str, message_id: int, timeout: float, peer_name: str
                 ) -> FinalResponse:
    """One C-MOVE to ``destination``; the instances arrive at the storage SCP, not here."""
    cx = require_context(assoc, model, peer_name, "Study Root Query/Retrieve MOVE")
    ident = encode_identifier(identifier, cx)
    await assoc.send(cx.context_id,
                     commands.c_move_rq(message_id, model, destination, ident), ident)
    counters = SubOperations()
    while True:
        message = await assoc.receive(timeout)
        progress.responded = True
        command = _response_to(message, message_id, Command.C_MOVE_RSP, assoc, "C-MOVE")
        if category(counters.update(command)) is Category.PENDING:
            continue
        progress.finished = True
        return counters.final(command, message, cx)


async def c_store(assoc: Association, progress: Progress, instance: OutgoingInstance, *,
                  message_id: int, timeout: float) -> StoreStatus:
    """One C-STORE of ``instance``: its data set goes out as the client sent it (no decoding,
    no re-encoding), in P-DATA-TF PDUs within the PACS's maximum length, on the context
    accepted for its SOP class in its own transfer syntax. Without one, nothing is sent and
    the status says why (0x0122 SOP class, 0xC122 transfer syntax not supported)."""
    cx = assoc.context_in(instance.sop_class, instance.transfer_syntax)
    if cx is None:
        progress.finished = True  # nothing was sent: the association stays clean
        accepted = assoc.context_for(instance.sop_class) is not None
        return StoreStatus(refused_context_status(accepted, assoc.refused.get(instance.sop_class)),
                           f"{assoc.label} accepted no context for SOP class "
                           f"{instance.sop_class} in {instance.transfer_syntax}")
    await assoc.send(cx.context_id,
                     commands.c_store_rq(message_id, instance.sop_class, instance.sop_instance),
                     instance.dataset)
    message = await assoc.receive(timeout)
    progress.responded = True
    command = _response_to(message, message_id, Command.C_STORE_RSP, assoc, "C-STORE")
    progress.finished = True
    return StoreStatus(int(command.status or 0), command.text(commands.ERROR_COMMENT) or None)
