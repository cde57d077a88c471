"""STOW-RS (PS3.18 10.5) for one PACS: the request body is parsed as it arrives, each part is
checked and C-STOREd before the next one is read (so at most one instance, within
``stow_max_instance_bytes``, is held in memory, and the rest of the body waits in the network
buffers), and the cache forgets what the new instances make stale."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.cache.store import GatewayCache
from app.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
)
from app.dicomweb.stow import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    FailedInstance,
    IncomingInstance,
    RejectedPart,
    StoredInstance,
    inspect_part,
    part_uids,
    store_status,
)
from app.dimse.outgoing import OutgoingInstance, StoreSession
from app.dimse.status import Category, category
from app.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    UpstreamUnavailable,
)
from app.metrics import Metrics

log = logging.getLogger(__name__)
HEAD_KEPT = 64 * 1024  # of a part over the size limit: enough for its File Meta and UIDs
FILL_POLL_S = 0.5  # how often a store checks whether a fill of a touched series has ended
FILL_WAIT_S = 600.0  # and for how long at most
UNANSWERED_IN_A_ROW = 2  # stores failing without a PACS answer before the rest is not tried


@dataclass
class StoreOutcome:
    """What a STOW-RS request achieved: the instances stored and the parts that failed, why
    the body was not read to its end (``halted``: malformed, too large), and the error of a
    PACS that could not be asked (``upstream``), after which nothing more was tried."""

    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    halted: GatewayError | None = None
    upstream: GatewayError | None = None
    unprefixed: bool = False  # some part lacked the Part-10 preamble (tolerated, logged once)

    @property
    def http_status(self) -> int:
        """PS3.18 Table 10.5.3-1, and the request-level failures: a body too large (413) or
        malformed (400) before anything was stored (202 after), or a PACS that could not be
        asked about any instance (its 502/503/504)."""
        if not self.stored:
            if self.halted is not None:
                return self.halted.http_status
            if self.upstream is not None and all(
                    f.reason == PROCESSING_FAILURE for f in self.failed):
                return self.upstream.http_status
        if self.halted is not None:  # some stored, the rest of the body unread
            return 202
        return store_status(self.stored, self.failed)


class _Part:
    """The part being received: its Content-Type and bytes, the bytes only up to the limit."""

    def __init__(self, content_type: str | None) -> None:
        self.content_type = content_type
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False

    def add(self, data: bytes, limit: int) -> None:
        self.size += len(data)
        if self.too_large:
            return
        if self.size > limit:  # keep only the head, for the UIDs of the failure report
            self.too_large = True
            head = b"".join(self.chunks) + data
            self.chunks = [head[:HEAD_KEPT]]
            return
        self.chunks.append(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks = []
        return data


class StoreService:
    """Store Instances (PS3.18 10.5) into one PACS by C-STORE."""

    def __init__(self, peer_name: str, session: Callable[[], StoreSession],
                 cache: GatewayCache | None,
                 metrics: Metrics, *, max_instance_bytes: int, max_request_bytes: int) -> None:
        self._peer = peer_name
        self._session = session
        self._cache = cache
        self._metrics = metrics
        self._max_instance = max_instance_bytes
        self._max_request = max_request_bytes
        self._after_fills: set[asyncio.Task[None]] = set()

    async def store_instances(self, body: AsyncIterator[bytes], content_type: str,
                              study_uid: str | None) -> StoreOutcome:
        """Store every instance of a ``multipart/related; type="application/dicom"`` body;
        ``study_uid``, when the URL names one, is the study every instance must belong to.
        BadRequest before reading anything for a Content-Type without a boundary. A
        GatewayError raised by ``body`` ends the reading like a malformed body: what was stored
        before is reported (and forgotten by the cache) all the same."""
        try:
            parser = MultipartParser(content_type)
        except MultipartError as exc:
            raise BadRequest(f"invalid multipart Content-Type: {exc}") from None
        outcome = StoreOutcome()
        part: _Part | None = None
        received = 0
        unanswered = 0
        async with self._session() as session:
            try:
                async for chunk in body:
                    received += len(chunk)
                    over = received > self._max_request
                    if over:  # what fits is still read: the parts it completes are stored
                        chunk = chunk[:len(chunk) - (received - self._max_request)]
                    for event in parser.feed(chunk):
                        if isinstance(event, PartStart):
                            part = _Part(event.headers.get("Content-Type"))
                        elif isinstance(event, PartData):
                            assert part is not None
                            part.add(event.data, self._max_instance)
                        elif isinstance(event, PartEnd):
                            assert part is not None
                            unanswered = await self._part(part, parser.parts, study_uid,
                                                          session, outcome, unanswered)
                            part = None
                    if over:
                        outcome.halted = PayloadTooLarge(
                            f"the request body exceeds stow_max_request_bytes "
                            f"({self._max_request} bytes); part "
                            f"{parser.parts + (0 if part is not None else 1)} and any after it "
                            "were not stored")
                        break
                else:
                    parser.close()
                    if parser.parts == 0:
                        outcome.halted = BadRequest("the multipart body holds no part")
            except MultipartError as exc:
                outcome.halted = BadRequest(f"malformed multipart body: {exc}")
            except GatewayError as exc:  # from the body: the client went away, say
                outcome.halted = exc
        await self._forget(outcome.stored)
        self._count(outcome)
        return outcome

    async def _part(self, part: _Part, number: int, study_uid: str | None,
                    session: StoreSession, outcome: StoreOutcome, unanswered: int) -> int:
        """Check and store one complete part; the count of stores in a row that got no answer
        from the PACS."""
        data = part.take()
        if part.too_large:
            sop_class, sop_instance = part_uids(data)
            outcome.failed.append(FailedInstance(
                sop_class, sop_instance, OUT_OF_RESOURCES,
                f"part {number} ({part.size} bytes) exceeds stow_max_instance_bytes "
                f"({self._max_instance} bytes)"))
            return unanswered
        try:
            instance = await asyncio.to_thread(inspect_part, data, part.content_type, study_uid)
        except RejectedPart as rejected:
            outcome.failed.append(rejected.failure)
            return unanswered
        del data
        if not instance.prefixed and not outcome.unprefixed:
            outcome.unprefixed = True
            log.warning("STOW-RS to PACS %s: parts without the Part-10 preamble and DICM prefix "
                        "(PS3.10 7.1), as pydicom writes them; accepted", self._peer)
        if outcome.upstream is not None and unanswered >= UNANSWERED_IN_A_ROW:
            outcome.failed.append(_not_tried(instance, outcome.upstream))
            return unanswered
        try:
            status = await session.store(_outgoing(instance))
        except GatewayError as exc:
            log.warning("C-STORE of %s to PACS %s failed: %s", instance.sop_instance,
                        self._peer, exc.detail)
            outcome.upstream = exc
            outcome.failed.append(FailedInstance(
                instance.sop_class, instance.sop_instance, PROCESSING_FAILURE,
                f"instance {instance.sop_instance}: {exc.message}"))
            return UNANSWERED_IN_A_ROW if isinstance(exc, UpstreamUnavailable) else unanswered + 1
        kind = category(status.status)
        if kind in (Category.SUCCESS, Category.WARNING):
            outcome.stored.append(StoredInstance(
                instance.sop_class, instance.sop_instance, instance.study, instance.series,
                status.status if kind is Category.WARNING else None))
        else:
            outcome.failed.append(FailedInstance(
                instance.sop_class, instance.sop_instance, status.status,
                f"instance {instance.sop_instance}: the PACS answered C-STORE with status "
                f"0x{status.status:04X}" + (f" ({status.comment})" if status.comment else "")))
        return 0

    async def _forget(self, stored: list[StoredInstance]) -> None:
        """Make the cache forget what the stored instances make stale, so that the next
        WADO-RS or QIDO-RS request sees them (GatewayCache.forget_stored)."""
        if self._cache is None or not stored:
            return
        series: dict[tuple[str, str], list[str]] = {}
        for item in stored:
            series.setdefault((item.study, item.series), []).append(item.sop_instance)
        cache = self._cache
        try:
            filling = []
            for (study, series_uid), sops in series.items():
                await cache.forget_stored(study, series_uid, sops)
                if await cache.backend.lock_holder(cache.keys.lock(series_uid)) is not None:
                    filling.append((study, series_uid, sops))
            await cache.new_query_generation()
        except Exception:  # a cache that fails here serves stale entries until they expire
            log.warning("could not invalidate the cache after a store on PACS %s", self._peer,
                        exc_info=True)
            return
        if filling:  # a fill that started before the store may write the old series back
            task = asyncio.get_running_loop().create_task(self._forget_after_fills(filling))
            self._after_fills.add(task)
            task.add_done_callback(self._after_fills.discard)

    async def _forget_after_fills(self, filling: list[tuple[str, str, list[str]]]) -> None:
        """Forget the touched series again once the fills running during the store have
        ended (within FILL_WAIT_S)."""
        cache = self._cache
        assert cache is not None
        polls = int(FILL_WAIT_S / FILL_POLL_S)
        try:
            for study, series_uid, sops in filling:
                for _ in range(polls):  # the lock may be in Redis: polled, not awaited
                    if await cache.backend.lock_holder(cache.keys.lock(series_uid)) is None:
                        break
                    await asyncio.sleep(FILL_POLL_S)
                await cache.forget_stored(study, series_uid, sops)
        except Exception:
            log.warning("could not invalidate series after a fill on PACS %s", self._peer,
                        exc_info=True)

    async def close(self) -> None:
        """Stop waiting for fills (at shutdown)."""
        tasks = list(self._after_fills)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _count(self, outcome: StoreOutcome) -> None:
        warned = sum(1 for item in outcome.stored if item.warning is not None)
        for kind, amount in (("stored", len(outcome.stored) - warned), ("warning", warned),
                             ("failed", len(outcome.failed))):
            if amount:
                self._metrics.inc("stow_instances_total", amount, peer=self._peer, outcome=kind)
        log.info("STOW-RS to PACS %s: %d stored (%d with warnings), %d failed%s", self._peer,
                 len(outcome.stored), warned, len(outcome.failed),
                 f"; {outcome.halted.message}" if outcome.halted is not None else "")


def _outgoing(instance: IncomingInstance) -> OutgoingInstance:
    return OutgoingInstance(instance.data, instance.dataset_offset, instance.sop_class,
                            instance.sop_instance, instance.transfer_syntax)


def _not_tried(instance: IncomingInstance, error: GatewayError) -> FailedInstance:
    return FailedInstance(instance.sop_class, instance.sop_instance, PROCESSING_FAILURE,
                          f"instance {instance.sop_instance}: not sent ({error.message})")

