"""The asyncio engine's face to the services: the same operations and stream contract as the
pynetdicom engine's PeerClient, on pooled associations and without threads on the data path
(C-MOVE deliveries still come from the storage SCP through the MoveRouter)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.dicomweb.sop_classes import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from app.dimse.association import next_message_id
from app.dimse.bridge import Cancelled
from app.dimse.budget import AssociationBudget, DimseMetrics
from app.dimse.engine import operations
from app.dimse.engine.association import (
    Association,
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    AssociationRequest,
    ConnectionClosed,
    ContextProposal,
    DimseTimeout,
)
from app.dimse.engine.operations import Progress
from app.dimse.engine.pool import AssociationPool
from app.dimse.engine.stream import OperationStream, Sink
from app.dimse.find import FindOutcome
from app.dimse.move_admission import MoveRouter
from app.dimse.observe import observed
from app.dimse.outgoing import OutgoingInstance, StoreContexts, StoreStatus
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.status import no_contexts, refused, unavailable
from app.dimse.tls import CLOSED_AFTER_HANDSHAKE, client_tls_cached
from app.dimse.tls import describe as tls_failure
from app.errors import GatewayError, UpstreamError, UpstreamTimeout
from app.settings import PacsPeer

FIND_MODEL = str(StudyRootQueryRetrieveInformationModelFind)
MOVE_MODEL = str(StudyRootQueryRetrieveInformationModelMove)
GET_MODEL = str(StudyRootQueryRetrieveInformationModelGet)
VERIFICATION = str(Verification)
QUERY_SYNTAXES = (str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian))
RELATIONAL = b"\x01"  # PS3.4 C.5.1.1: relational queries supported
SETTLE_GRACE_S = 5.0
R = TypeVar("R")
log = logging.getLogger(__name__)


class _ThreadSink:
    """Lets the storage SCP's threads feed an OperationStream: ``emit`` blocks the calling
    thread until the consumer's queue has room (so the PACS is slowed, memory stays flat)."""

    def __init__(self, sink: Sink[ReceivedInstance], loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self._loop = loop

    @property
    def cancelled(self) -> bool:
        return self._sink.cancelled

    def emit(self, item: ReceivedInstance) -> None:
        if self._sink.cancelled:
            raise Cancelled()
        try:
            future = asyncio.run_coroutine_threadsafe(self._sink.emit(item), self._loop)
        except RuntimeError as exc:  # the loop has closed: nobody is listening
            raise Cancelled() from exc
        future.result()


class AsyncPeerClient:
    """DIMSE operations against one PACS over pooled asyncio associations."""

    def __init__(self, local_ae_title: str, peer: PacsPeer, *, router: MoveRouter | None,
                 max_receive: int, use_quickack: bool, budget: AssociationBudget | None = None,
                 metrics: DimseMetrics | None = None) -> None:
        self.peer = peer
        self._tls = client_tls_cached(peer)
        self._metrics = metrics
        self._local_ae_title = local_ae_title
        self._router = router
        self._max_receive = max_receive
        self._use_quickack = use_quickack
        self.pool = AssociationPool(self._open, limit=peer.max_associations,
                                    idle_timeout=peer.association_idle_timeout,
                                    max_idle=peer.max_idle_associations, peer=peer.name,
                                    wait_timeout=peer.association_wait_timeout, budget=budget,
                                    metrics=metrics)
        self._relational: bool | None = None
        self._relational_until = 0.0  # monotonic time after which it is asked again
        self._where = (f"PACS {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}"
                       f"{', DICOM TLS' if self._tls else ''})")

    # -- associations --------------------------------------------------------------------------
    def _request(self, contexts: Sequence[ContextProposal], *, scp_roles: Sequence[str] = (),
                 extended: Sequence[tuple[str, bytes]] = ()) -> AssociationRequest:
        return AssociationRequest(self._local_ae_title, self.peer.ae_title, tuple(contexts),
                                  tuple(scp_roles), tuple(extended), self._max_receive)

    async def _open(self, request: AssociationRequest) -> Association:
        try:
            assoc = await Association.request(
                self.peer.host, self.peer.port, request,
                connect_timeout=self.peer.connect_timeout, acse_timeout=self.peer.acse_timeout,
                use_quickack=self._use_quickack, label=f"PACS {self.peer.name}",
                tls=self._tls)
        except ssl.SSLError as exc:
            log.warning("%s: DICOM TLS: %s", self._where, tls_failure(exc))
            raise unavailable(self.peer.name, f"{self._where}: DICOM TLS: {tls_failure(exc)}"
                              ) from None
        except AssociationRejected as exc:
            detail = f"result {exc.result}, source {exc.source}, reason {exc.reason}"
            if exc.result == 0x01 and exc.source == 0x01:
                raise refused(self.peer.name, f"{self._where} rejected the association "
                                              f"permanently ({detail})") from None
            raise unavailable(self.peer.name, f"{self._where} rejected the association "
                                              f"({detail})") from None
        except AssociationError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                log.warning("%s: DICOM TLS: %s", self._where, tls_failure(exc.__cause__))
                raise unavailable(self.peer.name, f"{self._where}: DICOM TLS: "
                                                  f"{tls_failure(exc.__cause__)}") from None
            log.info("%s: association request failed: %s", self._where, exc)
            if self._tls is not None and isinstance(exc, ConnectionClosed):
                log.warning("%s: %s", self._where, CLOSED_AFTER_HANDSHAKE)
                raise unavailable(self.peer.name, f"{self._where}: {CLOSED_AFTER_HANDSHAKE}"
                                  ) from None
            raise unavailable(self.peer.name, f"{self._where} is unreachable or did not answer "
                                              "the association request") from None
        except (OSError, TimeoutError) as exc:
            log.info("%s: association request failed: %r", self._where, exc)
            raise unavailable(self.peer.name, f"{self._where} is unreachable or did not answer "
                                              "the association request") from None
        if not assoc.contexts:
            assoc.abort("no accepted presentation contexts")
            raise no_contexts(self.peer.name, f"{self._where} accepted none of the proposed "
                                              "presentation contexts")
        return assoc

    async def _run(self, request: AssociationRequest, operation: str,
                   body: Callable[[Association, Progress], Awaitable[R]],
                   stream: OperationStream[object, object] | None = None) -> R:
        """Run one operation on a pooled association, with its errors made gateway errors."""
        def watch(assoc: Association) -> None:
            if stream is not None:
                stream.on_abort(lambda: assoc.abort("the request was abandoned"))

        async def timed(assoc: Association, progress: Progress) -> R:
            with observed(self._metrics, self.peer.name, operation) as seen:
                seen.result = await body(assoc, progress)
                return seen.result

        try:
            return await self.pool.run(request, timed, watch)
        except DimseTimeout as exc:
            raise UpstreamTimeout(f"PACS {self.peer.name} stopped answering the {operation} "
                                  f"({str(exc).rsplit(': ', 1)[-1]})") from None
        except AssociationAborted:
            raise UpstreamError(f"PACS {self.peer.name} aborted the {operation} association"
                                ) from None
        except AssociationError as exc:
            raise UpstreamError(f"PACS {self.peer.name}: {operation} failed: {exc}") from None

    # -- operations ----------------------------------------------------------------------------
    async def echo(self) -> float:
        """C-ECHO the peer; the round-trip time in seconds (association set-up included)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        request = self._request([ContextProposal(VERIFICATION, QUERY_SYNTAXES)])

        async def body(assoc: Association, progress: Progress) -> int:
            return await operations.c_echo(assoc, progress, model=VERIFICATION,
                                           message_id=next_message_id(),
                                           timeout=self.peer.dimse_timeout)
        try:
            async with asyncio.timeout(self.peer.overall_timeout):
                status = await self._run(request, "C-ECHO", body)
        except TimeoutError:
            raise UpstreamTimeout(f"PACS {self.peer.name} did not answer in time") from None
        if status != 0x0000:
            raise UpstreamError(f"PACS {self.peer.name} answered C-ECHO with status "
                                f"0x{status:04X}", dimse_status=status)
        return loop.time() - start

    def _find_request(self, relational: bool) -> AssociationRequest:
        return self._request([ContextProposal(FIND_MODEL, QUERY_SYNTAXES)],
                             extended=[(FIND_MODEL, RELATIONAL)] if relational else ())

    async def supports_relational(self) -> bool:
        """Whether the PACS accepts relational queries (asked once, then remembered for the
        peer's ``capability_ttl``)."""
        if self.peer.relational_queries == "never":
            return False
        if self._relational is None or time.monotonic() >= self._relational_until:
            async def body(assoc: Association, progress: Progress) -> bool:
                progress.finished = True  # nothing was sent: the association stays clean
                info = assoc.peer_extended.get(FIND_MODEL, b"")
                return bool(info) and info[:1] == RELATIONAL
            try:
                async with asyncio.timeout(self.peer.overall_timeout):
                    self._relational = await self._run(self._find_request(True), "C-FIND",
                                                       body)
            except (GatewayError, TimeoutError):
                return False
            self._relational_until = time.monotonic() + self.peer.capability_ttl
        return self._relational

    def find(self, identifier: Dataset, *, relational: bool = False, maxsize: int = 64
             ) -> OperationStream[Dataset, FindOutcome]:
        """A stream of C-FIND matches; leave it early to C-CANCEL the query."""
        request = self._find_request(relational)

        async def run(sink: Sink[Dataset]) -> FindOutcome:
            async def body(assoc: Association, progress: Progress) -> FindOutcome:
                return await operations.c_find(
                    assoc, progress, sink, identifier, model=FIND_MODEL,
                    message_id=next_message_id(), timeout=self.peer.dimse_timeout,
                    peer_name=self.peer.name, relational=relational)
            return await self._run(request, "C-FIND", body, stream)  # type: ignore[arg-type]

        stream: OperationStream[Dataset, FindOutcome] = OperationStream(
            run, maxsize=maxsize, deadline=self.peer.overall_timeout,
            what=f"C-FIND on PACS {self.peer.name}", on_early_exit="cancel")
        return stream

    def get(self, identifier: Dataset, storage: Sequence[tuple[str, Sequence[str]]], *,
            maxsize: int = 8) -> OperationStream[ReceivedInstance, RetrieveOutcome]:
        """A stream of instances retrieved by C-GET; leaving it early aborts the association."""
        classes = list(dict.fromkeys(sop for sop, _ in storage))
        # The query context rides along, so that the pooled association left by a retrieval
        # also carries the C-FIND that precedes the next one (one association, one PACS worker).
        contexts = [ContextProposal(FIND_MODEL, QUERY_SYNTAXES),
                    ContextProposal(GET_MODEL, QUERY_SYNTAXES)]
        contexts += [ContextProposal(sop, tuple(ts)) for sop, ts in storage]
        request = self._request(contexts, scp_roles=classes,
                                extended=[(FIND_MODEL, RELATIONAL)] if self._relational else ())

        async def run(sink: Sink[ReceivedInstance]) -> RetrieveOutcome:
            async def body(assoc: Association, progress: Progress) -> RetrieveOutcome:
                return await operations.c_get(
                    assoc, progress, sink, identifier, model=GET_MODEL,
                    message_id=next_message_id(), timeout=self.peer.dimse_timeout,
                    peer_name=self.peer.name, idle_timeout=self.peer.network_idle_timeout)
            return await self._run(request, "C-GET", body, stream)  # type: ignore[arg-type]

        stream: OperationStream[ReceivedInstance, RetrieveOutcome] = OperationStream(
            run, maxsize=maxsize, deadline=self.peer.overall_timeout,
            what=f"C-GET on PACS {self.peer.name}", on_early_exit="abort")
        return stream

    def move(self, identifier: Dataset, expected_uids: frozenset[str] = frozenset(), *,
             maxsize: int = 8, message_id: int | None = None
             ) -> OperationStream[ReceivedInstance, RetrieveOutcome]:
        """A stream of instances retrieved by C-MOVE to the gateway's own Storage SCP."""
        router = self._router
        if router is None:
            raise RuntimeError("C-MOVE needs the storage SCP (storage_scp_enabled)")
        request = self._request([ContextProposal(MOVE_MODEL, QUERY_SYNTAXES)])

        async def run(sink: Sink[ReceivedInstance]) -> RetrieveOutcome:
            msg_id = message_id if message_id is not None else next_message_id()
            move_sink = router.register(
                self._local_ae_title, msg_id,
                _ThreadSink(sink, asyncio.get_running_loop()),  # type: ignore[arg-type]
                expected_uids, peer=self.peer.name)
            try:
                async def body(assoc: Association, progress: Progress
                               ) -> operations.FinalResponse:
                    return await operations.c_move(
                        assoc, progress, identifier, self._local_ae_title, model=MOVE_MODEL,
                        message_id=msg_id, timeout=self.peer.dimse_timeout,
                        peer_name=self.peer.name)
                final = await self._run(request, "C-MOVE", body, stream)  # type: ignore[arg-type]
                received = await asyncio.to_thread(
                    move_sink.wait_settled, final.completed + final.warning, SETTLE_GRACE_S)
                return RetrieveOutcome(final.status, final.completed, final.failed,
                                       final.warning, received, final.failed_uids)
            finally:
                router.unregister(move_sink)

        stream: OperationStream[ReceivedInstance, RetrieveOutcome] = OperationStream(
            run, maxsize=maxsize, deadline=self.peer.overall_timeout,
            what=f"C-MOVE on PACS {self.peer.name}", on_early_exit="abort")
        return stream

    def store_session(self) -> AsyncStoreSession:
        """C-STOREs for one STOW-RS request, on pooled associations."""
        return AsyncStoreSession(self)

    def store_request(self, pairs: Sequence[tuple[str, str]]) -> AssociationRequest:
        """The association a store proposes: Verification, then each (SOP class, transfer
        syntax) pair as a context of its own."""
        return self._request([ContextProposal(VERIFICATION, QUERY_SYNTAXES)]
                             + [ContextProposal(sop, (ts,)) for sop, ts in pairs])

    async def c_store(self, request: AssociationRequest, instance: OutgoingInstance
                      ) -> StoreStatus:
        """One C-STORE on a pooled association negotiated for ``request``."""
        async def body(assoc: Association, progress: Progress) -> StoreStatus:
            return await operations.c_store(assoc, progress, instance,
                                            message_id=next_message_id(),
                                            timeout=self.peer.dimse_timeout)
        try:
            async with asyncio.timeout(self.peer.overall_timeout):
                return await self._run(request, "C-STORE", body)
        except TimeoutError:
            raise UpstreamTimeout(f"PACS {self.peer.name} did not answer the C-STORE in time"
                                  ) from None
    @property
    def associations(self) -> tuple[int, int, int]:
        """Associations open, in use, and operations waiting for one."""
        return self.pool.open_count, self.pool.leased_count, self.pool.waiting

    async def close(self) -> None:
        """Release the pooled associations."""
        await self.pool.close()


class AsyncStoreSession:
    """The C-STOREs of one STOW-RS request on the asyncio engine. Each store leases a pooled
    association negotiated for every (SOP class, transfer syntax) the request has needed so
    far, so the instances that follow reuse it; between instances it waits in the pool, so no
    association slot is held while the client is still sending the next instance."""

    def __init__(self, client: AsyncPeerClient) -> None:
        self._client = client
        self._contexts = StoreContexts()

    async def store(self, instance: OutgoingInstance) -> StoreStatus:
        """C-STORE one instance; GatewayError when the PACS could not be asked."""
        self._contexts.need(instance)
        return await self._client.c_store(self._client.store_request(self._contexts.proposed()),
                                          instance)

    async def __aenter__(self) -> AsyncStoreSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Nothing to close: the association waits in the pool for the next request."""
