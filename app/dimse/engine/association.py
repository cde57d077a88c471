"""One DICOM association over asyncio: the PS3.8 upper-layer state machine for both roles,
negotiation with pynetdicom's PDU codecs, message send/receive, release (with collision) and
abort, and the ARTIM timer.

States (PS3.8 Table 9-10) are the ones this engine can be in; every PDU received in every state
maps to an action in ``_ACTIONS``, and anything not listed there is AA-8 (A-ABORT, close).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from app.dimse.engine.commands import AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, Command
from app.dimse.engine.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from app.dimse.engine.part10 import part10_header
from app.dimse.engine.pdu import (
    RELEASE_RP_PDU,
    RELEASE_RQ_PDU,
    AbortReason,
    AbortSource,
    PduType,
    ProtocolViolation,
    abort_pdu,
    p_data_pdus,
)
from app.dimse.engine.pdu_reader import CommandSet, Message, PduReader
from app.dimse.engine.transport import apply_policy
from app.dimse.tls import ClientTls

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")
_WRITE_HIGH_WATER = 1 << 20
_INBOX_HIGH_WATER = 4


class State(Enum):
    """Upper-layer states (PS3.8 9.2) this engine uses."""

    STA1 = "idle"
    STA2 = "transport open, awaiting A-ASSOCIATE-RQ"
    STA5 = "awaiting A-ASSOCIATE-AC or -RJ"
    STA6 = "established"
    STA7 = "awaiting A-RELEASE-RP"
    STA11 = "release collision (requestor), awaiting A-RELEASE-RP"
    STA13 = "awaiting transport close"


class AssociationError(Exception):
    """The association could not be used (see subclasses)."""


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"rejected: result {result}, source {source}, reason {reason}")
        self.result, self.source, self.reason = result, source, reason


class AssociationAborted(AssociationError):
    """The association ended abnormally: A-ABORT, connection loss or a protocol violation."""


class ConnectionClosed(AssociationAborted):
    """The peer closed the connection without an A-ABORT or A-RELEASE (AA-4)."""


class AssociationReleased(AssociationError):
    """The association was released while an operation still expected messages."""


class DimseTimeout(AssociationError):
    """No message arrived within the DIMSE (or network-idle) timeout."""


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context the peer accepted, with the roles agreed for it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool
    as_scp: bool


@dataclass(frozen=True)
class ContextProposal:
    """One proposed presentation context: an abstract syntax and its transfer syntaxes."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociationRequest:
    """What a requestor proposes: AE titles, contexts, SCP roles, SOP class extended items."""

    calling_ae: str
    called_ae: str
    contexts: tuple[ContextProposal, ...]
    scp_roles: tuple[str, ...] = ()
    extended: tuple[tuple[str, bytes], ...] = ()
    max_receive: int = 0

    def covers(self, other: AssociationRequest) -> bool:
        """Whether an association negotiated for this request can carry ``other``'s operations:
        the same AE titles and PDU size, and every context, SCP role and extended item that
        ``other`` proposes proposed here too (whether the PACS accepted them is checked on the
        association). A request with SCP roles (a C-GET's storage contexts) needs exactly its
        own negotiation: the order of the proposals decides which context some PACS send
        each instance on (dcmqrscp takes the first accepted one of its class)."""
        if other.scp_roles:
            return self == other
        return (self.calling_ae == other.calling_ae and self.called_ae == other.called_ae
                and self.max_receive == other.max_receive
                and set(other.contexts) <= set(self.contexts)
                and set(other.scp_roles) <= set(self.scp_roles)
                and set(other.extended) <= set(self.extended))

    def primitive(self) -> A_ASSOCIATE:
        """The A-ASSOCIATE request primitive for pynetdicom's PDU encoder."""
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = self.calling_ae
        primitive.called_ae_title = self.called_ae
        contexts = []
        for index, proposal in enumerate(self.contexts):
            cx = PresentationContext()
            cx.context_id = 2 * index + 1
            cx.abstract_syntax = proposal.abstract_syntax
            cx.transfer_syntax = list(proposal.transfer_syntaxes)
            contexts.append(cx)
        primitive.presentation_context_definition_list = contexts
        primitive.user_information = user_information(
            self.max_receive,
            roles=[(uid, False, True) for uid in self.scp_roles],
            extended=self.extended,
        )
        return primitive


def user_information(max_receive: int, *, roles: Sequence[tuple[str, bool, bool]] = (),
                     extended: Sequence[tuple[str, bytes]] = ()) -> list[Any]:
    """User Information items (PS3.7 D.3.3): maximum length, implementation, roles, extended."""
    length = MaximumLengthNotification()
    length.maximum_length_received = max_receive
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    items: list[Any] = [length, implementation, version]
    for uid, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = uid
        role.scu_role = scu
        role.scp_role = scp
        items.append(role)
    for uid, info in extended:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = uid
        item.service_class_application_information = info
        items.append(item)
    return items


@dataclass
class AssociationStats:
    """Counters of one association (for pool decisions and tests)."""

    operations: int = 0
    messages_received: int = 0
    bytes_received: int = field(default=0)


Evaluator = Callable[[A_ASSOCIATE, "Association"], "A_ASSOCIATE | tuple[int, int, int]"]
"""Acceptor callback: an A-ASSOCIATE response primitive to accept, or (result, source,
reason) to reject."""


class Association:
    """An association in either role; create with ``Association.request`` or as an acceptor
    through ``serve`` (the storage SCP)."""

    def __init__(self, label: str, *, acse_timeout: float, max_receive: int,
                 use_quickack: bool, evaluator: Evaluator | None = None) -> None:
        self.label = label
        self.acse_timeout = acse_timeout
        self.max_receive = max_receive
        self.state = State.STA1
        self.contexts: dict[int, AcceptedContext] = {}
        self.refused: dict[str, int] = {}  # abstract syntax -> result of a refused context
        self.peer_max_pdu = 0
        self.peer_extended: dict[str, bytes] = {}
        self.calling_ae = ""
        self.called_ae = ""
        self.peer_address: tuple[str, int] | None = None
        self.stats = AssociationStats()
        self.reader = PduReader(self, max_pdata_length=max_receive, use_quickack=use_quickack)
        self._evaluator = evaluator
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._inbox: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._failure: AssociationError | None = None
        self._response: asyncio.Future[bytes] = self._loop.create_future()
        self._released: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._artim: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self._requested: AssociationRequest | None = None

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    async def request(cls, host: str, port: int, request: AssociationRequest, *,
                      connect_timeout: float, acse_timeout: float, use_quickack: bool,
                      label: str, tls: ClientTls | None = None) -> Association:
        """Connect (over TLS with ``tls``: handshake and pinned-certificate check before the
        first PDU) and negotiate; raises OSError/TimeoutError (unreachable; ``ssl.SSLError``
        for a failed handshake), AssociationRejected or AssociationAborted. Cancelled at any
        point, it leaves no connection behind (also when the cancellation lands just after
        the TCP connection was made)."""
        assoc = cls(label, acse_timeout=acse_timeout, max_receive=request.max_receive,
                    use_quickack=use_quickack)
        assoc.calling_ae, assoc.called_ae = request.calling_ae, request.called_ae
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                if tls is None:
                    await loop.create_connection(lambda: assoc.reader, host, port)
                else:
                    transport, _ = await loop.create_connection(
                        lambda: assoc.reader, host, port, ssl=tls.context,
                        server_hostname=tls.server_hostname)
                    try:
                        tls.check(transport.get_extra_info("ssl_object"))
                    except ssl.SSLError:
                        # No TLS close_notify exchange with a PACS we do not trust: a PACS
                        # waiting for our A-ASSOCIATE-RQ (DCMTK's accepting thread) would
                        # otherwise wait for its own timeout, unable to accept anyone else.
                        transport.abort()
                        raise
            await assoc._negotiate(request)
        except BaseException:
            assoc.abort()
            raise
        return assoc

    async def _negotiate(self, request: AssociationRequest) -> None:
        self._requested = request
        primitive = request.primitive()
        self.state = State.STA5
        self._write(A_ASSOCIATE_RQ(primitive).encode())
        try:
            async with asyncio.timeout(self.acse_timeout):
                raw = await self._response
        except TimeoutError:
            raise AssociationAborted(
                f"{self.label}: no answer to A-ASSOCIATE-RQ within {self.acse_timeout:g} s"
            ) from None
        if raw[0] == PduType.ASSOCIATE_RJ:
            rj = A_ASSOCIATE_RJ()
            rj.decode(raw)
            self._close_transport()
            raise AssociationRejected(int(rj.result or 0), int(rj.source or 0),
                                      int(rj.reason_diagnostic or 0))
        ac = A_ASSOCIATE_AC()
        try:
            ac.decode(raw)
            answer = ac.to_primitive()
        except Exception as exc:
            self._violation(ProtocolViolation(f"undecodable A-ASSOCIATE-AC: {exc}"))
            raise self._failure or AssociationAborted(str(exc)) from None
        self._accept_answer(primitive, answer)

    def _accept_answer(self, request: A_ASSOCIATE, answer: A_ASSOCIATE) -> None:
        roles: dict[Any, tuple[bool | None, bool | None]] = {}
        for item in answer.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
            elif isinstance(item, SOPClassExtendedNegotiation):
                self.peer_extended[str(item.sop_class_uid)] = bytes(
                    item.service_class_application_information or b"")
        requested = request.presentation_context_definition_list
        assert self._requested is not None
        for cx in requested:
            if cx.abstract_syntax in self._requested.scp_roles:
                cx.scu_role, cx.scp_role = False, True
        results = negotiate_as_requestor(
            requested, answer.presentation_context_definition_results_list, roles)
        for cx in results:
            if cx.result == 0x00 and cx.context_id is not None:
                self.contexts[int(cx.context_id)] = AcceptedContext(
                    int(cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0]),
                    bool(cx.as_scu), bool(cx.as_scp))
            elif cx.abstract_syntax is not None:
                self.refused[str(cx.abstract_syntax)] = int(cx.result or 0)
        self.state = State.STA6

    # -- PduOwner ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        """Apply the socket policy; as an acceptor, start ARTIM for the A-ASSOCIATE-RQ."""
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            apply_policy(sock)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = (str(peer[0]), int(peer[1]))
        if self._evaluator is not None:
            self.state = State.STA2
            self._start_artim()

    def connection_lost(self, exc: Exception | None) -> None:
        """AA-4/AA-5/AR-3: the transport is gone; wake everything that waits."""
        self._stop_artim()
        previous, self.state = self.state, State.STA1
        self._transport = None
        if self._failure is None and previous not in (State.STA13, State.STA1):
            if previous in (State.STA7, State.STA11):
                self._failure = AssociationReleased(f"{self.label}: released")
            else:
                self._failure = ConnectionClosed(
                    f"{self.label}: connection closed by the peer"
                    + (f" ({exc})" if exc else ""))
                if isinstance(exc, ssl.SSLError):  # e.g. the PACS refused our certificate
                    self._failure.__cause__ = exc
        self._settle(self._response, self._failure)
        if previous in (State.STA7, State.STA11) and not self._released.done():
            self._released.set_result(None)
        self._settle(self._released, self._failure)
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake()
        self._drained.set()

    def pdata_action(self) -> str:
        """DT-2 while established or while our release request is pending (AR-6); AA-6 (ignore)
        while awaiting close; AA-8 (abort) anywhere else."""
        if self.state in (State.STA6, State.STA7):
            return "deliver"
        if self.state in (State.STA13, State.STA11):
            return "ignore"
        return "violate"

    def message_received(self, message: Message) -> None:
        """DT-2: queue a complete message for the operation reading this association."""
        if message.context_id not in self.contexts:
            self._violation(ProtocolViolation(
                f"message on presentation context {message.context_id}, which was not accepted",
                AbortReason.INVALID_PDU_PARAMETER_VALUE))
            return
        self.stats.messages_received += 1
        if message.data is not None:
            self.stats.bytes_received += len(message.data)
        self._inbox.append(message)
        if len(self._inbox) >= _INBOX_HIGH_WATER and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def pdu_received(self, pdu_type: PduType, pdu: bytes) -> None:
        """Dispatch a control PDU through the state table."""
        action = _ACTIONS.get((self.state, pdu_type))
        if action is None:
            self._violation(ProtocolViolation(
                f"unexpected {pdu_type.name} PDU in state {self.state.name}",
                AbortReason.UNEXPECTED_PDU))
            return
        action(self, pdu)

    def violation(self, error: ProtocolViolation) -> None:
        """AA-8 for a malformed byte stream."""
        self._violation(error)

    def data_prefix(self, command: CommandSet, context_id: int) -> bytes | None:
        """A C-STORE's data set is received straight into its Part-10 form: the header is
        known from the command set and the presentation context before the data arrives."""
        if command.command_field != Command.C_STORE_RQ:
            return None
        cx = self.contexts.get(context_id)
        uid = command.text(AFFECTED_SOP_INSTANCE)
        if cx is None or not uid:
            return None  # refused when the message is complete
        sop_class = command.text(AFFECTED_SOP_CLASS) or cx.abstract_syntax
        source = self.calling_ae if self._evaluator is not None else self.called_ae
        return part10_header(sop_class, uid, cx.transfer_syntax, source)

    # -- actions (PS3.8 Table 9-7..9-9) ---------------------------------------------------------
    def _ae3_ae4_response(self, pdu: bytes) -> None:
        """AE-3/AE-4: the answer to our A-ASSOCIATE-RQ."""
        if not self._response.done():
            self._response.set_result(pdu)

    def _ae6_request(self, pdu: bytes) -> None:
        """AE-6: an A-ASSOCIATE-RQ arrived; the evaluator accepts (AE-7) or rejects (AE-8)."""
        self._stop_artim()
        assert self._evaluator is not None
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(pdu)
            primitive = rq.to_primitive()
        except Exception as exc:
            self._violation(ProtocolViolation(f"undecodable A-ASSOCIATE-RQ: {exc}"))
            return
        self.calling_ae = str(primitive.calling_ae_title).strip()
        self.called_ae = str(primitive.called_ae_title).strip()
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        outcome = self._evaluator(primitive, self)
        if isinstance(outcome, tuple):
            result, source, reason = outcome
            reply = A_ASSOCIATE()
            reply.result, reply.result_source, reply.diagnostic = result, source, reason
            self._write(A_ASSOCIATE_RJ(reply).encode())
            self.state = State.STA13
            self._start_artim()
            return
        self._write(A_ASSOCIATE_AC(outcome).encode())
        for cx in outcome.presentation_context_definition_results_list:
            if cx.result == 0x00 and cx.context_id is not None:
                self.contexts[int(cx.context_id)] = AcceptedContext(
                    int(cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0]),
                    True, False)
        self.state = State.STA6

    def _ar2_release_requested(self, pdu: bytes) -> None:
        """AR-2 then AR-4: the peer asks to release; we answer at once and wait for close."""
        self._failure = self._failure or AssociationReleased(f"{self.label}: released by peer")
        self._write(RELEASE_RP_PDU)
        self.state = State.STA13
        self._start_artim()
        self._wake()

    def _ar3_released(self, pdu: bytes) -> None:
        """AR-3: our release was confirmed; close the transport."""
        self.state = State.STA1
        if not self._released.done():
            self._released.set_result(None)
        self._close_transport()

    def _ar8_collision(self, pdu: bytes) -> None:
        """AR-8 (as requestor: AR-9): release collision; answer with A-RELEASE-RP and wait for
        the peer's."""
        self._write(RELEASE_RP_PDU)
        self.state = State.STA11

    def _aa3_aborted(self, pdu: bytes) -> None:
        """AA-3: the peer aborted (A-ABORT or, in Sta5, A-P-ABORT)."""
        source, reason = (pdu[8], pdu[9]) if len(pdu) >= 10 else (0, 0)
        self._failure = self._failure or AssociationAborted(
            f"{self.label}: aborted by the peer (source {source}, reason {reason})")
        log.info("%s", self._failure)
        self.state = State.STA1
        self._close_transport()

    def _aa6_ignore(self, pdu: bytes) -> None:
        """AA-6/AA-7: awaiting close, anything but A-ABORT is ignored."""

    # -- operations' interface ------------------------------------------------------------------
    @property
    def requested(self) -> AssociationRequest | None:
        """What this side proposed when it requested the association (None as acceptor)."""
        return self._requested

    @property
    def is_established(self) -> bool:
        """Whether new operations may use this association."""
        return self.state is State.STA6 and self._transport is not None and not self._inbox

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the transport has closed."""
        return self._closed

    def context_for(self, abstract_syntax: str) -> AcceptedContext | None:
        """The first accepted context of ``abstract_syntax`` used as SCU, if any."""
        for cx in self.contexts.values():
            if cx.abstract_syntax == abstract_syntax:
                return cx
        return None

    def context_in(self, abstract_syntax: str, transfer_syntax: str) -> AcceptedContext | None:
        """The accepted context of ``abstract_syntax`` in ``transfer_syntax``, if any."""
        for cx in self.contexts.values():
            if cx.abstract_syntax == abstract_syntax and cx.transfer_syntax == transfer_syntax:
                return cx
        return None

    async def send(self, context_id: int, command: bytes,
                   data: bytes | memoryview | None = None) -> None:
        """Send one DIMSE message (DT-1), within the peer's maximum PDU length."""
        if self.state is not State.STA6 or self._transport is None:
            raise self._failure or AssociationAborted(f"{self.label}: not established")
        for pdu in p_data_pdus(context_id, command, command=True,
                               max_pdu_length=self.peer_max_pdu):
            self._write(pdu)
        if data is not None:
            for pdu in p_data_pdus(context_id, data, command=False,
                                   max_pdu_length=self.peer_max_pdu):
                self._write(pdu)
        if not self._drained.is_set():
            await self._drained.wait()

    async def receive(self, timeout: float | None) -> Message:
        """The next message; DimseTimeout once nothing at all has arrived for ``timeout``
        seconds (a large data set arriving slowly but steadily does not time out), or the
        error that ended the association."""
        started = time.monotonic()
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            if self._transport is None:
                raise AssociationAborted(f"{self.label}: closed")
            wait = None
            if timeout is not None:
                silent_since = max(started, self.reader.last_read)
                wait = silent_since + timeout - time.monotonic()
                if wait <= 0:
                    raise DimseTimeout(f"{self.label}: nothing received for {timeout:g} s")
            self._waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(wait):
                    await self._waiter
            except TimeoutError:
                continue  # bytes may have arrived meanwhile: the loop measures again
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if self._paused and len(self._inbox) < _INBOX_HIGH_WATER // 2:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        return message

    async def release(self) -> None:
        """Release gracefully (A-RELEASE-RQ, wait for -RP within the ACSE timeout); aborts if
        the peer does not answer."""
        if self.state is not State.STA6:
            self.abort()
            return
        self.state = State.STA7
        self._write(RELEASE_RQ_PDU)
        try:
            async with asyncio.timeout(self.acse_timeout):
                await asyncio.shield(self._released)
        except (TimeoutError, AssociationError):
            self.abort()
        await self._wait_closed()

    def abort(self, reason: str = "aborted locally") -> None:
        """A-ABORT (AA-1) and close at once; safe to call in any state, repeatedly."""
        if self._failure is None:
            self._failure = AssociationAborted(f"{self.label}: {reason}")
        if self._transport is not None and self.state not in (State.STA1, State.STA13):
            self._write(abort_pdu())
        self.state = State.STA1
        self._close_transport()
        self._wake()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the transport has closed."""
        await self._wait_closed(timeout)

    # -- internals -----------------------------------------------------------------------------
    async def _wait_closed(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.acse_timeout):
                await asyncio.shield(self._closed)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    def _violation(self, error: ProtocolViolation) -> None:
        log.warning("%s: protocol violation, sending A-ABORT: %s", self.label, error)
        self._failure = self._failure or AssociationAborted(
            f"{self.label}: protocol violation: {error}")
        if self._transport is not None and self.state is not State.STA1:
            self._write(abort_pdu(AbortSource.SERVICE_PROVIDER, error.reason))
        self.state = State.STA1
        self._close_transport()
        self._settle(self._response, self._failure)
        self._wake()

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(data)
        self.reader.arm_quickack()
        if self._transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            self._drained.clear()

    def pause_writing(self) -> None:
        """Transport flow control: stop until drained."""
        self._drained.clear()

    def resume_writing(self) -> None:
        """Transport flow control: writing may continue."""
        self._drained.set()

    def _close_transport(self) -> None:
        self._stop_artim()
        # Closing is final: the rest of the current read (e.g. P-DATA after a violation found
        # in message_received) would otherwise be parsed in Sta1 and reported as a second one.
        self.reader.stop()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _start_artim(self) -> None:
        self._stop_artim()
        self._artim = self._loop.call_later(self.acse_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        """AA-2: ARTIM expired (no A-ASSOCIATE-RQ, or no close after release/reject)."""
        self._artim = None
        if self.state is State.STA2:
            log.warning("%s: no A-ASSOCIATE-RQ within %g s, closing", self.label,
                        self.acse_timeout)
        self._failure = self._failure or AssociationAborted(f"{self.label}: ARTIM expired")
        if self._transport is not None:
            self._transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @staticmethod
    def _settle(future: asyncio.Future[Any], error: BaseException | None) -> None:
        if not future.done() and error is not None:
            future.set_exception(error)
            future.exception()  # mark retrieved: nobody may be waiting any more


_Action = Callable[[Association, bytes], None]
_ACTIONS: dict[tuple[State, PduType], _Action] = {
    (State.STA2, PduType.ASSOCIATE_RQ): Association._ae6_request,
    (State.STA2, PduType.ABORT): Association._aa3_aborted,
    (State.STA5, PduType.ASSOCIATE_AC): Association._ae3_ae4_response,
    (State.STA5, PduType.ASSOCIATE_RJ): Association._ae3_ae4_response,
    (State.STA5, PduType.ABORT): Association._aa3_aborted,
    (State.STA6, PduType.RELEASE_RQ): Association._ar2_release_requested,
    (State.STA6, PduType.ABORT): Association._aa3_aborted,
    (State.STA7, PduType.RELEASE_RP): Association._ar3_released,
    (State.STA7, PduType.RELEASE_RQ): Association._ar8_collision,
    (State.STA7, PduType.ABORT): Association._aa3_aborted,
    (State.STA11, PduType.RELEASE_RP): Association._ar3_released,
    (State.STA11, PduType.ABORT): Association._aa3_aborted,
    **{(State.STA13, t): Association._aa6_ignore for t in PduType if t is not PduType.ABORT},
    (State.STA13, PduType.ABORT): Association._aa3_aborted,
}
"""Received PDU per state -> action; every other pair is AA-8 (PS3.8 Table 9-10)."""
