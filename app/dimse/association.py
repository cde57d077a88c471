"""Opening associations to a PACS peer, with failures translated into gateway errors.

Runs in worker threads only. Each operation gets its own association (pynetdicom allows one
outstanding DIMSE operation per association); concurrency is bounded by the caller.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from app.dimse.status import no_contexts, refused, unavailable
from app.dimse.tls import CLOSED_AFTER_HANDSHAKE, client_tls_cached
from app.dimse.tls import describe as describe_tls
from app.settings import PacsPeer

log = logging.getLogger(__name__)

_msg_ids = itertools.count(1)
_msg_lock = threading.Lock()


def next_message_id() -> int:
    """A process-wide message ID (1..65535), unique among concurrent operations (PS3.7 9.1.1)."""
    with _msg_lock:
        return (next(_msg_ids) - 1) % 65535 + 1


def _tcp_socket(assoc: Association) -> socket.socket | None:
    """The association's TCP socket, or None once its transport is gone."""
    transport = assoc.dul.socket
    return transport.socket if transport is not None else None


def set_nodelay(event: evt.Event) -> None:
    """Turn Nagle's algorithm off: DIMSE is request/response and small PDUs must not wait."""
    try:
        sock = _tcp_socket(event.assoc)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # pragma: no cover - socket already gone
        pass


def make_ae(local_ae_title: str, peer: PacsPeer) -> AE:
    """An AE configured with the peer's timeouts; created once per peer and never mutated."""
    ae = AE(ae_title=local_ae_title)
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.dimse_timeout
    ae.connection_timeout = peer.connect_timeout
    ae.maximum_pdu_size = 0
    return ae


def open_association(
    ae: AE,
    peer: PacsPeer,
    contexts: Sequence[PresentationContext],
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[tuple[Any, Any] | tuple[Any, Any, list[Any]]] = (),
) -> Association:
    """Associate with ``peer`` or raise UpstreamUnavailable/UpstreamError saying why not."""
    rejection: dict[str, int] = {}

    def on_acse_recv(event: evt.Event) -> None:
        # pynetdicom sets Event.primitive for ACSE events without declaring it on Event.
        primitive = getattr(event, "primitive", None)
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            rejection.update(result=primitive.result, source=primitive.result_source or 0,
                             reason=primitive.diagnostic or 0)

    connected: list[bool] = []

    def on_open(event: evt.Event) -> None:
        connected.append(True)
        set_nodelay(event)

    handlers: list[Any] = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse_recv)]
    handlers.extend(evt_handlers)
    tls = client_tls_cached(peer)
    tls_args = tls.for_pynetdicom() if tls is not None else None
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.ae_title,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=handlers,
        max_pdu=0,
        tls_args=tls_args,  # type: ignore[arg-type]
    )
    if assoc.is_established:
        return assoc
    where = f"PACS {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}"
    where += ", DICOM TLS)" if tls is not None else ")"
    tls_error = tls_args[0].tls_error if tls_args is not None else None
    if tls_error is not None:
        log.warning("%s: DICOM TLS: %s", where, describe_tls(tls_error))
        raise unavailable(peer.name, f"{where}: DICOM TLS: {describe_tls(tls_error)}")
    if assoc.is_rejected:
        detail = (
            f"result {rejection.get('result', 0)}, source {rejection.get('source', 0)}, "
            f"reason {rejection.get('reason', 0)}"
        )
        if rejection.get("result") == 0x01 and rejection.get("source") == 0x01:
            # Rejected permanently by the service user: e.g. our AE title is not known there.
            raise refused(peer.name, f"{where} rejected the association permanently ({detail})")
        raise unavailable(peer.name, f"{where} rejected the association ({detail})")
    if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
        raise no_contexts(peer.name,
                          f"{where} accepted none of the proposed presentation contexts")
    if tls is not None and connected and not rejection:
        log.warning("%s: %s", where, CLOSED_AFTER_HANDSHAKE)
        raise unavailable(peer.name, f"{where}: {CLOSED_AFTER_HANDSHAKE}")
    raise unavailable(peer.name,
                      f"{where} is unreachable or did not answer the association request")


ABORT_ARTIM_S = 1.0


def discard_late_data(assoc: Association) -> None:
    """Make this association's state machine drop a P-DATA request (Evt9) once aborted (Sta13).

    A C-STORE handler of a C-GET runs in the association's thread; when the gateway aborts
    meanwhile (client gone, timeout), pynetdicom still sends the handler's C-STORE-RSP after
    the A-ABORT. PS3.8 Table 9-10 defines no action for Evt9 in Sta13, so pynetdicom's DUL
    reactor raised InvalidEventError and its thread died with a traceback (about 2% of aborted
    C-GETs). The association is being torn down: the response can only be discarded."""
    # Once the reactor no longer dies on that response it waits in Sta13 for the transport to
    # close or for ARTIM (30 s by default) to expire: after an abort, a second is enough.
    timer = getattr(assoc.dul, "artim_timer", None)
    if timer is not None and (timer.timeout is None or timer.timeout > ABORT_ARTIM_S):
        timer.timeout = ABORT_ARTIM_S
    machine = assoc.dul.state_machine
    if getattr(machine, "_dwg_discards_late_data", False):
        return
    act = machine.do_action

    def do_action(event: str) -> None:
        if event == "Evt9" and machine.current_state == "Sta13":
            log.debug("discarding a P-DATA request after A-ABORT (Evt9 in Sta13)")
            return
        act(event)

    machine.do_action = do_action  # type: ignore[method-assign]
    machine._dwg_discards_late_data = True  # type: ignore[attr-defined]


def end_association(assoc: Association, finished: bool) -> None:
    """Release an association whose operation reached its final response; abort one that did
    not (its generator may still hold queued responses, so it cannot be reused or released)."""
    if not assoc.is_established:
        return
    if finished:
        assoc.release()
    else:
        discard_late_data(assoc)
        assoc.abort()


def abort_and_wake(assoc: Association) -> None:
    """Abort ``assoc``, wake a thread blocked on its next DIMSE message, and close its socket.

    pynetdicom's ``get_msg`` waits up to dimse_timeout on its queue and an abort does not wake
    it; an empty item makes the waiting ``send_c_*`` generator yield its "no response" status
    at once, so the worker thread and its association slot are freed promptly. While a
    C-STORE handler runs, pynetdicom only queues the A-ABORT (the association then dies in
    state Sta13 without closing its socket), so the socket is closed here once the DUL thread
    has had a moment to finish. A C-STORE-RSP still sent after the abort is discarded
    (discard_late_data)."""
    try:
        discard_late_data(assoc)
        assoc.abort()
    finally:
        try:
            assoc.dimse.msg_queue.put((None, None))
        except Exception:  # pragma: no cover - the provider is already gone
            pass
        try:
            assoc.dul.join(timeout=2.0)
            sock = _tcp_socket(assoc)
            if sock is not None:
                sock.close()
        except Exception:  # pragma: no cover - already closed
            pass
