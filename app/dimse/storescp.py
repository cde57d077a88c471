"""The gateway's own Storage SCP, where a PACS sends C-MOVE sub-operations, on pynetdicom.

Who is admitted and which instances are accepted is decided by ``app.dimse.move_admission``
(shared with any other Storage SCP engine): associations from anything but a configured C-MOVE
PACS at one of its addresses are rejected in EVT_REQUESTED with an A-ASSOCIATE-RJ (rejected
permanent, service user, calling AE title not recognised: PS3.8 9.3.4), before any negotiation;
pynetdicom's own ``require_calling_aet`` holds the same AE titles as a second line. Each C-STORE
is then routed to the retrieval that caused it (``MoveRouter.admit_store``) or refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import weakref

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from app.dicomweb.sop_classes import Verification
from app.dicomweb.transfer_syntax import ALL_KNOWN, storage_scp_preference
from app.dimse.association import set_nodelay
from app.dimse.bridge import run_on_loop
from app.dimse.move_admission import (
    NOT_EXPECTED,
    RELAY_WAIT_S,
    Admission,
    MoveAdmission,
    MoveRouter,
    MoveSink,
    Relayed,
    Unrouted,
    admit_store,
    deliver_admitted,
    log_refusal,
    unrouted_status,
)
from app.dimse.received import instance_from_event, store_request
from app.dimse.tls import DeferredHandshake

log = logging.getLogger(__name__)
REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03

__all__ = ["MoveRouter", "MoveSink", "ReusePortServer", "StorageSCP", "Unrouted"]


class ReusePortServer(ThreadedAssociationServer):
    """An association server whose port several worker processes can share (SO_REUSEPORT):
    the kernel spreads incoming associations over them."""

    def server_bind(self) -> None:
        import socket

        if hasattr(socket, "SO_REUSEPORT") and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()



class StorageSCP:
    """A listening Storage SCP (and Verification SCP) that feeds a MoveRouter; admitted
    instances no local retrieval is waiting for go to ``on_unrouted`` (e.g. relayed to another
    worker)."""

    def __init__(self, ae_title: str, router: MoveRouter, host: str, port: int,
                 *, admission: MoveAdmission, reuse_port: bool = True,
                 on_unrouted: Unrouted | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """``on_unrouted`` runs on ``loop`` (the app's event loop), which this SCP's threads
        wait for."""
        self.router = router
        self._ssl_context = ssl_context
        self._loop = loop
        self.admission = admission
        self._reuse_port = reuse_port
        self.on_unrouted = on_unrouted
        self._host = host
        self._port = port
        self._ae = AE(ae_title=ae_title)
        self._ae.maximum_pdu_size = 0
        self._ae.maximum_associations = 64
        if admission.ae_titles:  # never empty: an empty list would mean "any calling AE"
            self._ae.require_calling_aet = admission.ae_titles
        syntaxes = storage_scp_preference(list(ALL_TRANSFER_SYNTAXES) + sorted(ALL_KNOWN))
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:  # always set in pynetdicom's table
                self._ae.add_supported_context(cx.abstract_syntax, syntaxes)
        self._ae.add_supported_context(Verification)
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._admitted: weakref.WeakKeyDictionary[Association, Admission] = (
            weakref.WeakKeyDictionary())

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen in background threads."""
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested)]
        server_class = ReusePortServer if self._reuse_port else ThreadedAssociationServer
        tls = DeferredHandshake(self._ssl_context) if self._ssl_context is not None else None
        server = self._ae.make_server((self._host, self._port), evt_handlers=handlers,
                                      server_class=server_class,
                                      ssl_context=tls)  # type: ignore[arg-type]
        thread = threading.Thread(target=server.serve_forever, daemon=True,
                                  name=f"storage-scp-{self._port}")
        thread.start()
        self._ae._servers.append(server)  # as AE.start_server does, so shutdown() finds it
        self._server = server
        log.info("storage SCP %s listening on %s:%d%s; accepting %s", self._ae.ae_title,
                 self._host, self.port, " (DICOM TLS)" if tls is not None else "",
                 ", ".join(f"{s.ae_title} from {'/'.join(s.hosts)}"
                           for s in self.admission.sources) or "no PACS (none uses C-MOVE)")

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED (before negotiation): reject an association from anything but a
        configured C-MOVE PACS at one of its addresses."""
        assoc = event.assoc
        request = assoc.requestor.primitive  # set before EVT_REQUESTED fires
        calling = str(request.calling_ae_title or "") if request is not None else ""
        address = assoc.requestor.address
        admission = self.admission.admit_association(calling, address)
        if admission.admitted:
            with self._lock:
                self._admitted[assoc] = admission
            return
        log_refusal(calling, address, "", f"association rejected: {admission.reason}")
        # As pynetdicom rejects by require_calling_aet: A-ASSOCIATE-RJ, then end the reactor.
        assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        assoc.kill()

    def _on_store(self, event: evt.Event) -> int:
        request = store_request(event)
        originator = request.MoveOriginatorApplicationEntityTitle
        message_id = request.MoveOriginatorMessageID
        uid = str(request.AffectedSOPInstanceUID)
        calling, address = str(event.assoc.requestor.ae_title), event.assoc.requestor.address
        with self._lock:
            admission = self._admitted.get(event.assoc)
        if admission is None:  # cannot happen: EVT_REQUESTED admits or rejects every association
            log_refusal(calling, address, uid, "association was not admitted")
            return NOT_EXPECTED
        decision = admit_store(self.router, admission, calling, address, uid, originator,
                               message_id)
        if decision.status is not None:
            return decision.status
        if decision.sink is not None:
            return deliver_admitted(decision.sink, calling, address, instance_from_event(event))
        outcome: Relayed | None = None
        if self.on_unrouted is not None and self._loop is not None:
            relay = self.on_unrouted(instance_from_event(event), originator, message_id,
                                     admission.peers, calling, address)
            try:  # this thread waits: the relay runs on the event loop
                outcome = run_on_loop(self._loop, relay, RELAY_WAIT_S)
            except Exception:
                log.exception("could not relay %s to the requesting worker", uid)
                outcome = Relayed.UNAVAILABLE
        return unrouted_status(outcome, decision, calling, address, uid)
