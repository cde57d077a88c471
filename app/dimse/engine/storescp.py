"""The gateway's Storage SCP on the asyncio engine, where a PACS delivers C-MOVE sub-operations.

Same policy as the pynetdicom Storage SCP (``app.dimse.move_admission``): an association from
anything but a configured C-MOVE PACS at one of its addresses gets A-ASSOCIATE-RJ (rejected
permanent, service user, calling AE title not recognised: PS3.8 9.3.4); each C-STORE is routed
to the C-MOVE of that PACS it belongs to, or refused with its status logged. Handing an instance
to its retrieval may block (the consumer is slow), so that one step runs in a worker thread while
the association's reads are paused; an instance for another worker's C-MOVE is relayed on the
event loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from app.dicomweb.transfer_syntax import ALL_KNOWN, storage_scp_preference
from app.dimse.engine import commands
from app.dimse.engine.association import (
    APPLICATION_CONTEXT,
    Association,
    AssociationError,
    AssociationReleased,
    user_information,
)
from app.dimse.engine.commands import Command
from app.dimse.engine.operations import as_part10
from app.dimse.engine.pdu_reader import Message
from app.dimse.move_admission import (
    Admission,
    MoveAdmission,
    MoveRouter,
    Unrouted,
    admit_store,
    deliver_admitted,
    log_refusal,
    unrouted_status,
)
from app.dimse.received import ReceivedInstance

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, LOCAL_LIMIT_EXCEEDED = 0x03, 0x02
MAX_ASSOCIATIONS = 64
UNRECOGNISED_OPERATION = 0x0211  # PS3.7 C.4.4 (a command the SCP does not support)
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def _supported_contexts() -> list[PresentationContext]:
    """Every storage SOP class pynetdicom knows, in our transfer syntax preference, and
    Verification; context IDs are filled in per request."""
    syntaxes = storage_scp_preference(list(UNCOMPRESSED) + sorted(ALL_KNOWN))
    supported = []
    for cx in StoragePresentationContexts:
        context = PresentationContext()
        context.abstract_syntax = cx.abstract_syntax
        context.transfer_syntax = list(syntaxes)
        supported.append(context)
    verification = PresentationContext()
    verification.abstract_syntax = VERIFICATION
    verification.transfer_syntax = list(UNCOMPRESSED)
    supported.append(verification)
    return supported


class AsyncStorageSCP:
    """A listening Storage SCP (and Verification SCP) feeding a MoveRouter, on the event loop."""

    def __init__(self, ae_title: str, router: MoveRouter, host: str, port: int, *,
                 admission: MoveAdmission, reuse_port: bool = True,
                 on_unrouted: Unrouted | None = None, acse_timeout: float = 10.0,
                 idle_timeout: float = 60.0, max_receive: int = 4 * 1024 * 1024,
                 use_quickack: bool = True, ssl_context: ssl.SSLContext | None = None) -> None:
        self.router = router
        self._ssl_context = ssl_context
        self.admission = admission
        self.on_unrouted = on_unrouted
        self._ae_title = ae_title
        self._host, self._port = host, port
        self._reuse_port = reuse_port
        self._acse_timeout = acse_timeout
        self._idle_timeout = idle_timeout
        self._max_receive = max_receive
        self._use_quickack = use_quickack
        self._supported = _supported_contexts()
        self._server: asyncio.Server | None = None
        self._associations: set[Association] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_associations(self) -> int:
        """Associations open now."""
        return len(self._associations)

    async def start(self) -> None:
        """Listen on the event loop."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self._host, self._port, reuse_port=self._reuse_port or None,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._acse_timeout if self._ssl_context else None)
        log.info("storage SCP %s listening on %s:%d (asyncio engine%s); accepting %s",
                 self._ae_title, self._host, self.port,
                 ", DICOM TLS" if self._ssl_context else "",
                 ", ".join(f"{s.ae_title} from {'/'.join(s.hosts)}"
                           for s in self.admission.sources) or "no PACS (none uses C-MOVE)")

    async def stop(self) -> None:
        """Stop listening and abort open associations."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for assoc in list(self._associations):
            assoc.abort("the gateway is stopping")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def _accept(self) -> Any:
        assoc = Association("storage SCP association", acse_timeout=self._acse_timeout,
                            max_receive=self._max_receive, use_quickack=self._use_quickack,
                            evaluator=self._evaluate)
        return assoc.reader

    def _evaluate(self, request: A_ASSOCIATE, assoc: Association
                  ) -> A_ASSOCIATE | tuple[int, int, int]:
        """AE-6: admit a configured C-MOVE PACS at one of its addresses, and negotiate."""
        calling = str(request.calling_ae_title or "").strip()
        address = assoc.peer_address[0] if assoc.peer_address else ""
        assoc.label = f"storage SCP association from {calling or '?'}@{address}"
        admission = self.admission.admit_association(calling, address)
        if not admission.admitted:
            log_refusal(calling, address, "", f"association rejected: {admission.reason}")
            return (REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        if len(self._associations) >= MAX_ASSOCIATIONS:
            log.warning("storage SCP: %d associations open, rejecting %s for now",
                        len(self._associations), calling)
            return (REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        results, _ = negotiate_as_acceptor(
            request.presentation_context_definition_list, self._supported, None)
        reply = A_ASSOCIATE()
        reply.application_context_name = APPLICATION_CONTEXT
        reply.calling_ae_title = request.calling_ae_title
        reply.called_ae_title = request.called_ae_title
        reply.result = 0x00
        reply.presentation_context_definition_results_list = results
        reply.user_information = user_information(self._max_receive)
        self._associations.add(assoc)
        task = asyncio.get_running_loop().create_task(self._serve(assoc, admission, calling,
                                                                  address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return reply

    async def _serve(self, assoc: Association, admission: Admission, calling: str,
                     address: str) -> None:
        """Answer C-STORE and C-ECHO requests until the PACS releases or aborts."""
        try:
            while True:
                message = await assoc.receive(self._idle_timeout)
                command = message.command
                message_id = command.us(commands.MESSAGE_ID, 0) or 0
                if command.command_field == Command.C_STORE_RQ:
                    sop_class = command.text(commands.AFFECTED_SOP_CLASS) or ""
                    uid = command.text(commands.AFFECTED_SOP_INSTANCE) or ""
                    status = await self._store(assoc, message, admission, calling, address)
                    await assoc.send(message.context_id,
                                     commands.c_store_rsp(message_id, sop_class, uid, status))
                elif command.command_field == Command.C_ECHO_RQ:
                    await assoc.send(message.context_id,
                                     commands.c_echo_rsp(message_id, VERIFICATION))
                else:
                    log.warning("%s: unsupported DIMSE command 0x%04X, aborting", assoc.label,
                                command.command_field)
                    assoc.abort("unsupported command")
                    return
        except AssociationReleased:
            pass
        except AssociationError as exc:
            log.info("%s ended: %s", assoc.label, exc)
            assoc.abort()
        finally:
            self._associations.discard(assoc)

    async def _store(self, assoc: Association, message: Message, admission: Admission,
                     calling: str, address: str) -> int:
        """The C-STORE status for one sub-operation, after handing it on if it is admitted."""
        command = message.command
        uid = command.text(commands.AFFECTED_SOP_INSTANCE) or ""
        cx = assoc.contexts[message.context_id]
        sop_class = command.text(commands.AFFECTED_SOP_CLASS) or cx.abstract_syntax
        if message.data is None or not uid:
            log_refusal(calling, address, uid, "a C-STORE without a data set or instance UID")
            return 0xC000
        originator = command.text(commands.MOVE_ORIGINATOR_AE) or None
        move_id = command.us(commands.MOVE_ORIGINATOR_ID)
        decision = admit_store(self.router, admission, calling, address, uid, originator,
                               move_id)
        if decision.status is not None:
            return decision.status
        instance = ReceivedInstance(as_part10(message, sop_class, uid, cx.transfer_syntax,
                                              calling), sop_class, uid, cx.transfer_syntax)
        if decision.sink is not None:  # may block while the retrieval's consumer is behind
            return await asyncio.to_thread(deliver_admitted, decision.sink, calling, address,
                                           instance)
        outcome = None
        if self.on_unrouted is not None:  # relayed on the loop: no thread is held
            outcome = await self.on_unrouted(instance, originator, move_id, admission.peers,
                                             calling, address)
        return unrouted_status(outcome, decision, calling, address, uid)
