"""The gateway's own Storage SCP, where a PACS sends C-MOVE sub-operations, and the router that
hands each incoming instance to the retrieval that caused it.

Routing is by Move Originator AE Title and Message ID (PS3.7 9.1.1.1, both optional) and, for a
PACS that omits them, by the SOP Instance UIDs the retrieval expects (from its preceding C-FIND).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from app.dicomweb.transfer_syntax import ALL_KNOWN, storage_scp_preference
from app.dimse.association import set_nodelay
from app.dimse.bridge import Cancelled, Emitter
from app.dimse.received import ReceivedInstance, instance_from_event

log = logging.getLogger(__name__)
OUT_OF_RESOURCES = 0xA700
NO_SUCH_RETRIEVAL = 0xC000  # "cannot understand": no retrieval asked for this instance


@dataclass(eq=False)
class MoveSink:
    """Where one C-MOVE's sub-operations go; counts deliveries and those still being handed on."""

    originator_ae: str
    message_id: int
    emitter: Emitter[ReceivedInstance]
    expected_uids: frozenset[str] = frozenset()
    received: int = 0
    _in_flight: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def deliver(self, instance: ReceivedInstance) -> int:
        """Hand an instance on (blocking while the consumer is behind); the C-STORE status."""
        with self._cond:
            self._in_flight += 1
        try:
            self.emitter.emit(instance)
            with self._cond:
                self.received += 1
            return 0x0000
        except Cancelled:
            return OUT_OF_RESOURCES
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def wait_settled(self, expected: int, timeout: float) -> int:
        """Wait until ``expected`` instances were handed on and none is in flight, or timeout.

        The PACS answers the C-MOVE only after its sub-operations are acknowledged, but our store
        handlers may still be handing the last ones to a slow consumer; returns the count."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight or self.received < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.emitter.cancelled:
                    break
                self._cond.wait(min(remaining, 0.1))
            return self.received


class MoveRouter:
    """Registry of C-MOVEs in progress in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], MoveSink] = {}

    def sink(self, originator_ae: str, message_id: int) -> MoveSink | None:
        """The sink of a C-MOVE in progress here, if any (for instances relayed from peers)."""
        with self._lock:
            return self._by_key.get((originator_ae.strip(), message_id))

    def register(self, originator_ae: str, message_id: int, emitter: Emitter[ReceivedInstance],
                 expected_uids: frozenset[str] = frozenset()) -> MoveSink:
        """Start routing sub-operations of (originator_ae, message_id) to ``emitter``."""
        sink = MoveSink(originator_ae.strip(), message_id, emitter, expected_uids)
        with self._lock:
            self._by_key[(sink.originator_ae, message_id)] = sink
        return sink

    def unregister(self, sink: MoveSink) -> None:
        """Stop routing to ``sink``."""
        with self._lock:
            if self._by_key.get((sink.originator_ae, sink.message_id)) is sink:
                del self._by_key[(sink.originator_ae, sink.message_id)]

    def route(self, originator_ae: str | None, message_id: int | None,
              sop_instance_uid: str) -> MoveSink | None:
        """The sink an incoming instance belongs to, or None."""
        with self._lock:
            if originator_ae and message_id is not None:
                sink = self._by_key.get((originator_ae.strip(), int(message_id)))
                if sink is not None:
                    return sink
            for sink in self._by_key.values():
                if sop_instance_uid in sink.expected_uids:
                    return sink
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)


class ReusePortServer(ThreadedAssociationServer):
    """An association server whose port several worker processes can share (SO_REUSEPORT):
    the kernel spreads incoming associations over them."""

    def server_bind(self) -> None:
        import socket

        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Unrouted = Callable[[ReceivedInstance, str | None, int | None], int]


class StorageSCP:
    """A listening Storage SCP (and Verification SCP) that feeds a MoveRouter; instances no
    local retrieval is waiting for go to ``on_unrouted`` (e.g. relayed to another worker)."""

    def __init__(self, ae_title: str, router: MoveRouter, host: str, port: int,
                 *, reuse_port: bool = True, on_unrouted: Unrouted | None = None) -> None:
        self.router = router
        self._reuse_port = reuse_port
        self.on_unrouted = on_unrouted
        self._host = host
        self._port = port
        self._ae = AE(ae_title=ae_title)
        self._ae.maximum_pdu_size = 0
        self._ae.maximum_associations = 64
        syntaxes = storage_scp_preference(list(ALL_TRANSFER_SYNTAXES) + sorted(ALL_KNOWN))
        for cx in StoragePresentationContexts:
            self._ae.add_supported_context(cx.abstract_syntax, syntaxes)
        self._ae.add_supported_context(Verification)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen in background threads."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, set_nodelay)]
        server_class = ReusePortServer if self._reuse_port else ThreadedAssociationServer
        server = self._ae.make_server((self._host, self._port), evt_handlers=handlers,
                                      server_class=server_class)
        thread = threading.Thread(target=server.serve_forever, daemon=True,
                                  name=f"storage-scp-{self._port}")
        thread.start()
        self._ae._servers.append(server)  # as AE.start_server does, so shutdown() finds it
        self._server = server  # type: ignore[assignment]
        log.info("storage SCP %s listening on %s:%d", self._ae.ae_title, self._host, self.port)

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        originator = getattr(request, "MoveOriginatorApplicationEntityTitle", None)
        message_id = getattr(request, "MoveOriginatorMessageID", None)
        uid = str(request.AffectedSOPInstanceUID)
        sink = self.router.route(originator, message_id, uid)
        if sink is None and self.on_unrouted is not None:
            return self.on_unrouted(instance_from_event(event), originator, message_id)
        if sink is None:
            log.warning("C-STORE of %s from %s matches no C-MOVE in progress (originator %r/%r)",
                        uid, event.assoc.requestor.ae_title, originator, message_id)
            return NO_SUCH_RETRIEVAL
        return sink.deliver(instance_from_event(event))
