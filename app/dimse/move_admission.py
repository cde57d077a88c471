"""Who may deliver C-MOVE sub-operations to the gateway's Storage SCP, and which deliveries are
accepted: the admission policy, free of any DIMSE engine so that every Storage SCP
implementation (pynetdicom's threads, an asyncio one) applies the same rules.

1. **Association**: the calling AE title must be that of a configured PACS that may send C-MOVE
   sub-operations (``may_use_move``), and the connection must come from one of that PACS's
   ``move_source_hosts`` (default: its ``host``; names are resolved, and any loopback address
   stands for any other). Anything else is rejected (A-ASSOCIATE-RJ, calling AE title not
   recognised) by the engine.
2. **C-STORE**: the instance must belong to a C-MOVE of *that* PACS running now: routed by Move
   Originator AE Title and Message ID (PS3.7 9.1.1.1) to a retrieval that PACS was asked for,
   or (when the PACS omits them) by SOP Instance UID among that PACS's retrievals only; it must
   be one of the instances the retrieval's inventory C-FIND listed; and it must not have been
   received already in that C-MOVE.

Refusals use the Storage Service's failure statuses (PS3.4 Annex B, B.2.3, Table B.2-1):
``A700`` (Refused: Out of Resources) only when the retrieval waiting for the instance has been
abandoned; ``C000``-range (Error: Cannot Understand) when the gateway cannot accept the instance
at all: ``C000`` not part of a C-MOVE of this PACS in progress, ``C001`` a duplicate of an
instance already received in that C-MOVE. Every refusal is logged at WARNING with the calling AE
title, its address, the SOP Instance UID and the reason.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from app.dimse.bridge import Cancelled, Emitter
from app.settings import PacsPeer

if TYPE_CHECKING:  # app.dimse.received reads pynetdicom events; this module needs no engine
    from app.dimse.received import ReceivedInstance

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 Table B.2-1 Refused: Out of Resources
NOT_EXPECTED = 0xC000  # PS3.4 Table B.2-1 Error: Cannot Understand (no such C-MOVE here)
DUPLICATE = 0xC001  # PS3.4 Table B.2-1 Error: Cannot Understand (already received)
ANY_ADDRESS = "*"
RESOLVE_TTL_S = 60.0


def may_use_move(peer: PacsPeer) -> bool:
    """Whether ``peer`` may deliver C-MOVE sub-operations (it retrieves with C-MOVE, or may fall
    back to it: ``move_fallback``, or ``retrieve_method = "auto"`` when it refuses C-GET)."""
    return peer.retrieve_method in ("move", "auto") or peer.move_fallback


@dataclass(frozen=True, slots=True)
class MoveSource:
    """A PACS allowed to deliver: its name, AE title, and the hosts it may connect from."""

    peer: str
    ae_title: str
    hosts: tuple[str, ...]

    @classmethod
    def of(cls, peer: PacsPeer) -> MoveSource:
        """The source a configured peer stands for (its own host unless listed otherwise)."""
        hosts = tuple(peer.move_source_hosts) or (peer.host,)
        return cls(peer.name, peer.ae_title.strip(), hosts)


def move_sources(peers: Iterable[PacsPeer]) -> list[MoveSource]:
    """The sources of every configured peer that may use C-MOVE."""
    return [MoveSource.of(p) for p in peers if may_use_move(p)]


def normalise_address(address: str) -> str:
    """An IP address in canonical form: zone index dropped, IPv4-mapped IPv6 as IPv4; a string
    that is no IP address (a host name) is returned lower-cased."""
    text = address.strip().strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback address."""
    try:
        return ipaddress.ip_address(normalise_address(address)).is_loopback
    except ValueError:
        return False


def _getaddrinfo(host: str) -> frozenset[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return frozenset(normalise_address(str(info[4][0])) for info in infos)


class AddressResolver:
    """Host names to addresses, remembered for ``ttl`` seconds (a PACS's address may change)."""

    def __init__(self, ttl: float = RESOLVE_TTL_S,
                 resolve: Callable[[str], frozenset[str]] = _getaddrinfo) -> None:
        self._ttl = ttl
        self._resolve = resolve
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, frozenset[str]]] = {}

    def addresses(self, host: str) -> frozenset[str]:
        """The addresses of ``host`` (itself when it is an address); empty if unresolvable."""
        literal = normalise_address(host)
        try:
            ipaddress.ip_address(literal)
            return frozenset({literal})
        except ValueError:
            pass
        now = time.monotonic()
        with self._lock:
            cached = self._known.get(literal)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            found = self._resolve(literal)
        except OSError as exc:
            log.warning("storage SCP: cannot resolve PACS host %r: %s", host, exc)
            found = frozenset()
        with self._lock:
            self._known[literal] = (now, found)
        return found


@dataclass(frozen=True, slots=True)
class Admission:
    """An association's verdict: the PACS names it is admitted as, or why it is refused."""

    peers: frozenset[str]
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return bool(self.peers)


class MoveAdmission:
    """The association-level policy: which (calling AE title, address) pairs are a PACS."""

    def __init__(self, sources: Sequence[MoveSource],
                 resolver: AddressResolver | None = None) -> None:
        self.sources = tuple(sources)
        self._resolver = resolver or AddressResolver()

    @property
    def ae_titles(self) -> list[str]:
        """Every calling AE title that may be admitted."""
        return sorted({s.ae_title for s in self.sources})

    def _from(self, source: MoveSource, address: str) -> bool:
        if ANY_ADDRESS in source.hosts:
            return True
        peer_address = normalise_address(address)
        for host in source.hosts:
            allowed = self._resolver.addresses(host)
            if peer_address in allowed:
                return True
            if is_loopback(peer_address) and any(is_loopback(a) for a in allowed):
                return True
        return False

    def admit_association(self, calling_ae: str, address: str) -> Admission:
        """Admit an association from ``calling_ae`` at ``address``, or say why not."""
        calling = calling_ae.strip()
        by_title = [s for s in self.sources if s.ae_title == calling]
        if not by_title:
            return Admission(frozenset(), "calling AE title is not a PACS that uses C-MOVE")
        peers = frozenset(s.peer for s in by_title if self._from(s, address))
        if not peers:
            return Admission(frozenset(), "address is not one of the PACS's move_source_hosts")
        return Admission(peers)


def log_refusal(calling_ae: str, address: str, sop_instance_uid: str, reason: str) -> None:
    """The one WARNING line every refusal gets."""
    log.warning("storage SCP refused: calling AE %r from %s, SOP Instance %s: %s",
                calling_ae.strip(), address or "?", sop_instance_uid or "-", reason)


# -- the C-MOVEs in progress --------------------------------------------------------------------


@dataclass(eq=False)
class MoveSink:
    """Where one C-MOVE's sub-operations go; counts deliveries and those still being handed on."""

    originator_ae: str
    message_id: int
    emitter: Emitter[ReceivedInstance]
    expected_uids: frozenset[str] = frozenset()
    peer: str = ""
    received: int = 0
    seen: set[str] = field(default_factory=set)  # admitted SOP Instance UIDs (guarded by router)
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
            return SUCCESS
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


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """A C-STORE's verdict: deliver to ``sink``; or refuse with ``status``; or neither (no C-MOVE
    of this process wants it: another worker's, perhaps). ``reason`` says why."""

    sink: MoveSink | None = None
    status: int | None = None
    reason: str = ""


class MoveRouter:
    """Registry of C-MOVEs in progress in this process, and the C-STORE admission policy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], MoveSink] = {}

    def register(self, originator_ae: str, message_id: int, emitter: Emitter[ReceivedInstance],
                 expected_uids: frozenset[str] = frozenset(), peer: str = "") -> MoveSink:
        """Start routing sub-operations of (originator_ae, message_id), sent by the PACS named
        ``peer``, to ``emitter``."""
        sink = MoveSink(originator_ae.strip(), message_id, emitter, expected_uids, peer)
        with self._lock:
            self._by_key[(sink.originator_ae, message_id)] = sink
        return sink

    def unregister(self, sink: MoveSink) -> None:
        """Stop routing to ``sink``."""
        with self._lock:
            if self._by_key.get((sink.originator_ae, sink.message_id)) is sink:
                del self._by_key[(sink.originator_ae, sink.message_id)]

    def sinks(self) -> list[MoveSink]:
        """The C-MOVEs in progress (a snapshot)."""
        with self._lock:
            return list(self._by_key.values())

    def admit_store(self, peers: frozenset[str], originator_ae: str | None,
                    message_id: int | None, sop_instance_uid: str) -> StoreDecision:
        """Decide on a C-STORE from an association admitted as ``peers``; an accepted instance
        is recorded at once, so a second copy (even concurrent) is a duplicate."""
        with self._lock:
            sink: MoveSink | None = None
            if originator_ae and message_id is not None:
                sink = self._by_key.get((originator_ae.strip(), int(message_id)))
                if sink is not None and sink.peer not in peers:
                    return StoreDecision(status=NOT_EXPECTED,
                                         reason="its C-MOVE was sent to another PACS")
            if sink is None:
                candidates = [s for s in self._by_key.values()
                              if s.peer in peers and sop_instance_uid in s.expected_uids]
                if not candidates:
                    return StoreDecision(reason="matches no C-MOVE of this PACS in progress here")
                fresh = [s for s in candidates if sop_instance_uid not in s.seen]
                sink = fresh[0] if fresh else candidates[0]
            if sink.expected_uids and sop_instance_uid not in sink.expected_uids:
                return StoreDecision(status=NOT_EXPECTED,
                                     reason="not one of the instances its C-MOVE retrieves")
            if sop_instance_uid in sink.seen:
                return StoreDecision(status=DUPLICATE,
                                     reason="duplicate of an instance already received in "
                                            "this C-MOVE")
            sink.seen.add(sop_instance_uid)
            return StoreDecision(sink=sink)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)


class Relayed(Enum):
    """What became of an admitted instance no C-MOVE of this process wants, once offered to
    the other workers (``Unrouted``)."""

    RELAYED = "relayed"  # published for the worker whose C-MOVE it is
    UNWANTED = "no other worker can want it"  # nothing to route it by, or no shared cache
    UNAVAILABLE = "the shared cache cannot take it now"  # a transient failure


#: Called on the event loop with an admitted instance no local C-MOVE wants: (instance, Move
#: Originator AE Title, Move Originator Message ID, admitted PACS names, calling AE title,
#: address) -> what became of it.
Unrouted = Callable[["ReceivedInstance", str | None, int | None, frozenset[str], str, str],
                    Coroutine[Any, Any, Relayed]]
RELAY_WAIT_S = 35.0  # a storage SCP thread's wait for a relay (the relay's own limit is 30 s)


def admit_store(router: MoveRouter, admission: Admission, calling: str, address: str, uid: str,
                originator: str | None, move_id: int | None) -> StoreDecision:
    """The verdict on one C-STORE sub-operation of an admitted association (quick, any
    thread); a refusal is logged."""
    decision = router.admit_store(admission.peers, originator, move_id, uid)
    if decision.status is not None:
        log_refusal(calling, address, uid, decision.reason)
    return decision


def deliver_admitted(sink: MoveSink, calling: str, address: str,
                     instance: ReceivedInstance) -> int:
    """Hand an admitted instance to its C-MOVE; the C-STORE status. Blocks while the
    retrieval's consumer is behind: call it from a Storage SCP thread, never the event loop."""
    status = sink.deliver(instance)
    if status != SUCCESS:
        log_refusal(calling, address, instance.sop_instance_uid,
                    "the retrieval waiting for it was abandoned")
    return status


def unrouted_status(outcome: Relayed | None, decision: StoreDecision, calling: str,
                    address: str, uid: str) -> int:
    """The C-STORE status of an instance no local C-MOVE wants, from what the relay did with
    it (None: there is no relay); a refusal is logged."""
    if outcome is Relayed.RELAYED:
        return SUCCESS
    if outcome is None:
        log_refusal(calling, address, uid, decision.reason)
        return NOT_EXPECTED
    log_refusal(calling, address, uid,
                f"{decision.reason}, and it cannot be relayed to another worker "
                f"({outcome.value})")
    return OUT_OF_RESOURCES if outcome is Relayed.UNAVAILABLE else NOT_EXPECTED
