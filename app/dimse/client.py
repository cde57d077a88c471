"""The async face of the DIMSE layer: one PeerClient per configured PACS, sharing a bounded pool
of worker threads; each operation takes one of the peer's association slots while it runs."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE

from app.dimse.association import make_ae
from app.dimse.bridge import Emitter, ThreadStream
from app.dimse.budget import AssociationBudget, DimseMetrics, SlotGate
from app.dimse.echo import c_echo
from app.dimse.engine.client import AsyncPeerClient
from app.dimse.engine.storescp import AsyncStorageSCP
from app.dimse.engine.stream import OperationStream, settle_operations
from app.dimse.find import FindOutcome, c_find_producer, peer_accepts_relational
from app.dimse.get import c_get_producer
from app.dimse.move import c_move_producer
from app.dimse.move_admission import MoveAdmission, MoveRouter, move_sources
from app.dimse.observe import observed
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.store import ThreadStoreSession
from app.dimse.storescp import StorageSCP, Unrouted
from app.dimse.tls import client_tls_cached, storage_scp_context
from app.errors import GatewayError, UpstreamTimeout
from app.settings import PacsPeer, Settings

R = TypeVar("R")
T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - a producer's outcome
SETTLE_AT_SHUTDOWN_S = 5.0  # how long shutdown waits for cancelled operations to let go


class PeerClient:
    """DIMSE operations against one PACS, at most ``max_associations`` at a time."""

    def __init__(self, local_ae_title: str, peer: PacsPeer, executor: ThreadPoolExecutor,
                 router: MoveRouter | None = None, *, budget: AssociationBudget | None = None,
                 metrics: DimseMetrics | None = None) -> None:
        self.peer = peer
        self._metrics = metrics
        self._router = router
        self._local_ae_title = local_ae_title
        self._ae = make_ae(local_ae_title, peer)
        self._executor = executor
        self._limiter = SlotGate(peer.name, peer.max_associations,
                                 peer.association_wait_timeout, budget, metrics)
        self._relational: bool | None = None
        self._relational_until = 0.0  # monotonic time after which it is asked again

    @property
    def associations(self) -> tuple[int, int, int]:
        """Associations open (one per running operation), in use, and operations waiting."""
        return self._limiter.in_use, self._limiter.in_use, self._limiter.waiting

    def _timed(self, operation: str, producer: Callable[[Emitter[T]], O]
               ) -> Callable[[Emitter[T]], O]:
        """``producer`` observed as one ``operation`` (in its worker thread)."""
        def run(emitter: Emitter[T]) -> O:
            with observed(self._metrics, self.peer.name, operation) as seen:
                seen.result = producer(emitter)
                return seen.result  # type: ignore[no-any-return]
        return run

    async def _call(self, fn: Callable[[AE, PacsPeer], R], ae: AE, peer: PacsPeer) -> R:
        """Run a short blocking DIMSE call in the pool, holding an association slot."""
        try:
            async with asyncio.timeout(self.peer.overall_timeout):
                await self._limiter.acquire()
                try:
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(self._executor, fn, ae, peer)
                finally:
                    self._limiter.release()
        except TimeoutError:
            raise UpstreamTimeout(f"PACS {self.peer.name} did not answer in time") from None

    async def echo(self) -> float:
        """C-ECHO the peer; the round-trip time in seconds."""
        def timed_echo(ae: AE, peer: PacsPeer) -> float:
            with observed(self._metrics, peer.name, "C-ECHO") as seen:
                rtt = c_echo(ae, peer)
                seen.result = 0x0000  # c_echo raises for any other status
                return rtt
        return float(await self._call(timed_echo, self._ae, self.peer))

    async def supports_relational(self) -> bool:
        """Whether the PACS accepts relational queries (asked once, then remembered for the
        peer's ``capability_ttl``)."""
        if self.peer.relational_queries == "never":
            return False
        if self._relational is None or time.monotonic() >= self._relational_until:
            try:
                self._relational = bool(
                    await self._call(peer_accepts_relational, self._ae, self.peer)
                )
            except GatewayError:
                return False
            self._relational_until = time.monotonic() + self.peer.capability_ttl
        return self._relational

    def find(
        self, identifier: Dataset, *, relational: bool = False, maxsize: int = 64
    ) -> ThreadStream[Dataset, FindOutcome]:
        """A stream of C-FIND matches; leave it early to C-CANCEL the query."""
        return ThreadStream(
            self._timed("C-FIND", c_find_producer(self._ae, self.peer, identifier,
                                                  relational=relational)),
            executor=self._executor,
            maxsize=maxsize,
            limiter=self._limiter,
            deadline=self.peer.overall_timeout,
            what=f"C-FIND on PACS {self.peer.name}",
        )

    def get(
        self, identifier: Dataset, storage: Sequence[tuple[str, Sequence[str]]], *, maxsize: int = 8
    ) -> ThreadStream[ReceivedInstance, RetrieveOutcome]:
        """A stream of instances retrieved by C-GET; leaving it early aborts the association."""
        return self._retrieval("C-GET", c_get_producer(self._ae, self.peer, identifier, storage),
                               maxsize)

    def move(
        self, identifier: Dataset, expected_uids: frozenset[str] = frozenset(), *,
        maxsize: int = 8, message_id: int | None = None,
    ) -> ThreadStream[ReceivedInstance, RetrieveOutcome]:
        """A stream of instances retrieved by C-MOVE to the gateway's own Storage SCP."""
        if self._router is None:
            raise RuntimeError("C-MOVE needs the storage SCP (storage_scp_enabled)")
        return self._retrieval("C-MOVE", c_move_producer(
            self._ae, self.peer, identifier, self._local_ae_title, self._router, expected_uids,
            message_id), maxsize)

    def _retrieval(self, operation: str,
                   producer: Callable[[Emitter[ReceivedInstance]], RetrieveOutcome], maxsize: int
                   ) -> ThreadStream[ReceivedInstance, RetrieveOutcome]:
        """A retrieval's stream of instances; leaving it early aborts the association."""
        return ThreadStream(
            self._timed(operation, producer),
            executor=self._executor,
            maxsize=maxsize,
            limiter=self._limiter,
            deadline=self.peer.overall_timeout,
            what=f"{operation} on PACS {self.peer.name}",
            abort_on_early_exit=True,
        )

    def store_session(self) -> ThreadStoreSession:
        """C-STOREs for one STOW-RS request, on one association while its contexts fit."""
        return ThreadStoreSession(self._ae, self.peer, self._executor, self._limiter)


def quiet_pynetdicom(debug: bool) -> None:
    """pynetdicom logs every DIMSE message (and pretty-prints every C-FIND identifier) at INFO:
    measured at 28% of a retrieval's worker-thread time. Keep it to warnings unless debugging."""
    from pynetdicom import _config

    _config.LOG_RESPONSE_IDENTIFIERS = debug
    _config.LOG_REQUEST_IDENTIFIERS = debug
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)
    transport_log = logging.getLogger("pynetdicom.transport")
    if not any(isinstance(f, _NoTlsTraceback) for f in transport_log.filters):
        transport_log.addFilter(_NoTlsTraceback())


class _NoTlsTraceback(logging.Filter):
    """pynetdicom logs a failed TLS handshake a third time, as an ERROR with a traceback; the
    gateway logs the reason once itself (a WARNING naming the PACS), so that record is dropped
    unless debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return record.levelno < logging.ERROR or not isinstance(exc, ssl.SSLError) or (
            logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG))


Client = PeerClient | AsyncPeerClient
RetrieveStream = (ThreadStream[ReceivedInstance, RetrieveOutcome]
                  | OperationStream[ReceivedInstance, RetrieveOutcome])
"""What ``Client.get`` and ``Client.move`` return, whichever the engine."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this code runs on, if any (the app's, in its lifespan)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class DimseClients:
    """Every configured peer's client, of the configured engine (``dimse_engine``); created in
    the app's lifespan and closed with it."""

    def __init__(self, settings: Settings, on_unrouted: Unrouted | None = None, *,
                 budget: AssociationBudget | None = None,
                 metrics: DimseMetrics | None = None) -> None:
        self._budget = budget
        self._metrics = metrics
        quiet_pynetdicom(settings.log_level == "DEBUG")
        # pynetdicom engine: each operation holds one thread for its whole life, so the pool
        # is sized to the slots; the asyncio engine needs none (the storage SCP has its own).
        workers = sum(p.max_associations for p in settings.pacs) + 4
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dimse")
        self._settings = settings
        self.router = MoveRouter()
        self.engine = settings.dimse_engine
        self.storage_scp: StorageSCP | AsyncStorageSCP | None = None
        for peer in settings.pacs:
            client_tls_cached(peer)  # a TLS file that cannot be loaded fails here, at start
        if settings.storage_scp_wanted:
            scp_tls = storage_scp_context(settings)
            admission = MoveAdmission(move_sources(settings.pacs))
            if self.engine == "asyncio":
                self.storage_scp = AsyncStorageSCP(
                    settings.ae_title, self.router, settings.storage_scp_host,
                    settings.storage_scp_port, admission=admission,
                    reuse_port=settings.storage_scp_reuse_port, on_unrouted=on_unrouted,
                    max_receive=settings.dimse_max_pdu_receive,
                    use_quickack=settings.dimse_tcp_quickack, ssl_context=scp_tls)
            else:
                self.storage_scp = StorageSCP(settings.ae_title, self.router,
                                              settings.storage_scp_host,
                                              settings.storage_scp_port, admission=admission,
                                              reuse_port=settings.storage_scp_reuse_port,
                                              on_unrouted=on_unrouted,
                                              ssl_context=scp_tls, loop=_running_loop())
                self.storage_scp.start()
        self._clients: dict[str, Client] = {
            p.name: self._client(settings, p) for p in settings.pacs
        }

    def _client(self, settings: Settings, peer: PacsPeer) -> Client:
        if settings.dimse_engine == "asyncio":
            return AsyncPeerClient(settings.ae_title, peer, router=self.router,
                                   max_receive=settings.dimse_max_pdu_receive,
                                   use_quickack=settings.dimse_tcp_quickack,
                                   budget=self._budget, metrics=self._metrics)
        return PeerClient(settings.ae_title, peer, self._executor, self.router,
                          budget=self._budget, metrics=self._metrics)

    @property
    def local_ae_title(self) -> str:
        """The gateway's AE title (Move Originator of its C-MOVEs)."""
        return self._settings.ae_title

    def get(self, name: str | None = None) -> Client:
        """The named peer's client, or the default peer's; LookupError if unknown."""
        return self._clients[self._settings.peer(name).name]

    async def start(self) -> None:
        """Start what runs on the event loop (the asyncio engine's storage SCP)."""
        if isinstance(self.storage_scp, AsyncStorageSCP):
            await self.storage_scp.start()

    async def aclose(self) -> None:
        """Release pooled associations, then stop the storage SCP and the worker pool."""
        for client in self._clients.values():
            if isinstance(client, AsyncPeerClient):
                await client.close()
        await settle_operations(SETTLE_AT_SHUTDOWN_S)
        if isinstance(self.storage_scp, AsyncStorageSCP):
            await self.storage_scp.stop()
            self.storage_scp = None
        self.close()

    def close(self) -> None:
        """Stop the storage SCP and the worker pool (stragglers' associations abort)."""
        if isinstance(self.storage_scp, StorageSCP):
            self.storage_scp.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
