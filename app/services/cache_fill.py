"""Reading one PACS's instances through the cache: a complete series is read from the cache;
otherwise one fill per series (or instance) runs under a single-flight lock, anywhere, and
every request follows it.

The fill retrieves from the PACS, verifies each instance and hands it to ``WriteBehind``, which
announces it to the followers in this process at once and writes it to the cache in batches
(each batch with the shared-log events that announce it to other processes). Followers here
take instances from memory (``FreshInstances``, or the writer's queue); followers elsewhere read
them from the cache once the shared log names them. An instance too big to cache is handed
over in memory (``_handoff``) to followers here, and fetched on its own by the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.cache.singleflight import FillContext, FillEvent, SingleFlight
from app.cache.store import CachedInstance, GatewayCache, SeriesIndex
from app.cache.write_behind import WriteBehind
from app.dicomweb.part10_identity import verify_instance
from app.dicomweb.refs import InstanceRef, SeriesRef
from app.dimse.received import ReceivedInstance
from app.dimse.status import nothing_found
from app.errors import GatewayError, NotFound
from app.metrics import Metrics
from app.services.fill_errors import error_from_event
from app.services.fresh import FreshInstances
from app.services.pacs_retrieval import PacsRetrieval, Summary, describe

log = logging.getLogger(__name__)
HANDOFF_GRACE_S = 10.0
READ_AHEAD = 4


def _received(item: CachedInstance) -> ReceivedInstance:
    return ReceivedInstance(item.data, item.sop_class_uid, item.sop_instance_uid,
                            item.transfer_syntax)


@dataclass(frozen=True, slots=True)
class FillOutcome:
    """What one fill put into the cache: the instances verified (SOP Instance UID, SOP Class
    UID, transfer syntax), those written, and whether that is the whole series."""

    verified: tuple[tuple[str, str, str], ...]
    written: tuple[str, ...]
    complete: bool


class CacheFill:
    """Read-through of one PACS's series and instances via the cache, one fill at a time."""

    def __init__(self, retrieval: PacsRetrieval, cache: GatewayCache, flights: SingleFlight,
                 metrics: Metrics) -> None:
        self._retrieval = retrieval
        self._cache = cache
        self._flights = flights
        self._metrics = metrics
        self._peer = retrieval.peer
        # Instances a fill could not cache (over the size cap), for followers in this process.
        self._handoff: dict[tuple[str, str], ReceivedInstance] = {}
        # Instances a fill of this process verified: its local followers take them from here.
        self._fresh = FreshInstances()
        self._writing: set[WriteBehind] = set()  # fills of this process writing to the cache

    # -- series -------------------------------------------------------------------------------

    async def series(self, ref: SeriesRef) -> AsyncIterator[ReceivedInstance]:
        """Every instance of a series: from the cache when it is complete there, else as the
        fill (this request's or another's) brings them."""
        cache = self._cache
        sent: set[str] = set()
        index = await cache.complete_series(ref.series_uid)
        if index is not None:
            self._metrics.inc("cache_hits_total", kind="series")
            all_read = True
            async for sop, item in self._read_ahead(ref.series_uid,
                                                    [i[0] for i in index.instances]):
                if item is None:
                    all_read = False  # evicted meanwhile: the rest comes from a fill
                    break
                sent.add(sop)
                yield _received(item)
            if all_read:
                return
        self._metrics.inc("cache_misses_total", kind="series")
        async for event in self._follow_series(ref):
            if event.kind == "instance" and event.sop not in sent:
                sent.add(event.sop)
                yield await self._announced(ref, event.sop)
            elif event.kind == "failed":
                raise error_from_event(event)
            elif event.kind == "done":
                final = await cache.get_series_index(ref.series_uid)
                for sop, _, _ in (final.instances if final else ()):
                    if sop not in sent:
                        sent.add(sop)
                        yield await self._announced(ref, sop)
                if not sent:
                    raise nothing_found(describe(ref))

    async def warm(self, ref: SeriesRef) -> bool:
        """Fill the cache with a series (prefetch) without reading it back; False when there
        was nothing to do (the series is cached already)."""
        if await self._cache.complete_series(ref.series_uid) is not None:
            return False
        async for event in self._follow_series(ref):
            if event.kind in ("done", "failed"):
                break
        return True

    def _follow_series(self, ref: SeriesRef) -> AsyncIterator[FillEvent]:
        cache = self._cache

        async def complete() -> bool:
            return await cache.complete_series(ref.series_uid) is not None

        return self._flights.follow(cache.keys.lock(ref.series_uid),
                                    lambda token: cache.keys.events(ref.series_uid, token),
                                    functools.partial(self._fill, ref), complete)

    async def _read_ahead(self, series: str, sops: list[str]
                          ) -> AsyncIterator[tuple[str, CachedInstance | None]]:
        """Cached instances in order, fetching the next few while the current one is sent (a
        shared cache costs a round trip per instance otherwise). The first is read alone:
        read beside others, its bytes would share the cache's connection with theirs."""
        cache = self._cache
        pending: list[tuple[str, asyncio.Task[CachedInstance | None]]] = []
        upcoming = iter(sops)
        try:
            first = next(upcoming, None)
            if first is not None:
                pending.append((first, asyncio.ensure_future(cache.get_instance(series, first))))
            while pending:
                sop, task = pending.pop(0)
                item = await task
                while len(pending) < READ_AHEAD:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    pending.append((nxt, asyncio.ensure_future(cache.get_instance(series, nxt))))
                yield sop, item
        finally:
            for _, task in pending:
                task.cancel()

    # -- instances ----------------------------------------------------------------------------

    async def instance(self, ref: InstanceRef) -> ReceivedInstance:
        """One instance: held here, cached, brought by a running fill of its series, or
        filled on its own (under its own lock)."""
        cache = self._cache
        found = await self._present(ref.series_uid, ref.sop_instance_uid)
        if found is not None:
            self._metrics.inc("cache_hits_total", kind="instance")
            return found
        self._metrics.inc("cache_misses_total", kind="instance")
        # A fill of the whole series may be running (e.g. prefetch by a metadata request):
        # wait for our instance rather than starting another retrieval.
        async for event in self._flights.watch(
                cache.keys.lock(ref.series_uid),
                lambda token: cache.keys.events(ref.series_uid, token)):
            if event.kind != "instance" or event.sop == ref.sop_instance_uid:
                found = await self._present(ref.series_uid, ref.sop_instance_uid)
                if found is not None or event.kind != "instance":
                    break
        if found is not None:
            return found

        async def present() -> bool:
            return await cache.backend.exists(
                [cache.keys.instance(ref.series_uid, ref.sop_instance_uid)]) == 1

        async for event in self._flights.follow(
                cache.keys.lock(ref.series_uid, ref.sop_instance_uid),
                lambda t: cache.keys.events(ref.series_uid, t, ref.sop_instance_uid),
                functools.partial(self._fill, ref), present):
            if event.kind == "failed":
                raise error_from_event(event)
            if event.kind == "done":
                break
        found = await self._present(ref.series_uid, ref.sop_instance_uid)
        return found if found is not None else await self._direct(ref)

    async def _present(self, series_uid: str, sop: str) -> ReceivedInstance | None:
        """The instance if this process holds it (a fill's fresh, queued or handed-over
        instance) or the cache has it."""
        held = self._held(series_uid, sop)
        if held is not None:
            return held
        item = await self._cache.get_instance(series_uid, sop)
        return _received(item) if item is not None else None

    def _held(self, series_uid: str, sop: str) -> ReceivedInstance | None:
        """An instance a fill of this process verified and still holds in memory."""
        fresh = self._fresh.get(series_uid, sop)
        if fresh is not None:
            return fresh
        for writer in self._writing:
            if writer.series == series_uid and (item := writer.pending(sop)) is not None:
                return _received(item)
        return self._handoff.get((series_uid, sop))

    async def _announced(self, ref: SeriesRef, sop: str) -> ReceivedInstance:
        """An instance a fill announced: held here, or read from the cache; fetched on its own
        if the cache could not keep it."""
        found = await self._present(ref.series_uid, sop)
        if found is not None:
            return found
        log.info("instance %s announced but not in the cache (size cap or eviction)", sop)
        return await self._direct(InstanceRef(ref.study_uid, ref.series_uid, sop))

    async def _direct(self, ref: InstanceRef) -> ReceivedInstance:
        """One instance retrieved on its own, past the cache."""
        async for item in self._retrieval.received(ref):
            if item.sop_instance_uid == ref.sop_instance_uid:
                return item
        raise NotFound(f"{describe(ref)} was not among what the PACS sent")

    # -- the fill -----------------------------------------------------------------------------

    async def _fill(self, ref: SeriesRef | InstanceRef, ctx: FillContext) -> None:
        """Retrieve ``ref`` from the PACS into the cache, announcing each verified instance;
        ends with the fill's final event (``done``, or ``failed`` with nothing left behind)."""
        cache = self._cache
        handed: list[tuple[str, str]] = []
        loop = asyncio.get_running_loop()

        def hand_over(item: CachedInstance) -> None:  # too big to cache: for local followers
            handed.append((ref.series_uid, item.sop_instance_uid))
            self._handoff[handed[-1]] = _received(item)

        writer = WriteBehind(cache, ref.series_uid, ctx, on_declined=hand_over)
        self._writing.add(writer)
        try:
            outcome = await self._retrieve_into(ref, writer)
            if isinstance(ref, SeriesRef):
                await self._record(ref, outcome)
            await ctx.publish(FillEvent("done"))
        except GatewayError as exc:
            if exc.detail != exc.message:  # what the clients will not be told (PACS address)
                log.warning("cache fill of %s failed: %s", describe(ref), exc.detail)
            writer.stop()
            await writer.settle()
            if writer.written:  # a failed retrieval leaves no partial entry behind
                self._fresh.forget(ref.series_uid, writer.written)
                await cache.backend.delete(
                    *[cache.keys.instance(ref.series_uid, s) for s in writer.written])
            await ctx.publish(FillEvent("failed", http_status=exc.http_status,
                                        dimse_status=exc.dimse_status, message=exc.message))
        finally:
            writer.stop()
            self._writing.discard(writer)
            for key in handed:  # followers have had the fill's events; keep briefly for laggards
                loop.call_later(HANDOFF_GRACE_S, self._handoff.pop, key, None)

    async def _retrieve_into(self, ref: SeriesRef | InstanceRef, writer: WriteBehind
                             ) -> FillOutcome:
        """Retrieve ``ref`` and queue each verified instance for the cache; returns once
        everything queued is written."""
        cache = self._cache
        known = None
        if self._by_get(ref):
            stored = await cache.get_summary(ref.series_uid)
            known = Summary(*stored) if stored is not None else None
        verified: list[tuple[str, str, str]] = []
        retrieval = self._retrieval.received(ref, known=known)
        async for item in retrieval:
            if not verify_instance(item.data, item.transfer_syntax, item.sop_instance_uid):
                log.warning("instance %s from PACS %s failed verification; not cached",
                            item.sop_instance_uid, self._peer.name)
                continue
            self._fresh.put(ref.series_uid, item)
            verified.append((item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax))
            await writer.add(CachedInstance(item.sop_instance_uid, item.sop_class_uid,
                                            item.transfer_syntax, item.data))
        await writer.finish()
        tally = retrieval.tally
        complete = (tally is not None and tally.complete
                    and tally.received == len(writer.written))
        return FillOutcome(tuple(verified), tuple(writer.written), complete)

    def _by_get(self, ref: SeriesRef | InstanceRef) -> bool:
        """Whether a fill of ``ref`` retrieves a whole series by C-GET (and so may start from,
        and leaves, a cached summary)."""
        return isinstance(ref, SeriesRef) and self._peer.retrieve_method != "move"

    async def _record(self, ref: SeriesRef, outcome: FillOutcome) -> None:
        """Write the series index (complete only if everything expected arrived and was
        written) and, after a complete C-GET, the summary the next fill starts from."""
        cache = self._cache
        await cache.put_series_index(
            SeriesIndex(ref.study_uid, ref.series_uid, outcome.complete, outcome.verified))
        if self._by_get(ref) and outcome.complete:  # the next fill needs no C-FIND
            await cache.put_summary(ref.series_uid, len(outcome.verified),
                                    sorted({i[1] for i in outcome.verified}))
        elif self._by_get(ref):  # a summary that did not match what the PACS sent is dropped
            await cache.backend.delete(cache.keys.summary(ref.series_uid))

    # -- a study's series ---------------------------------------------------------------------

    async def study_series(self, study_uid: str) -> list[str]:
        """The series of a study: from the cache when a complete C-FIND listed them before,
        else from the PACS (one SERIES-level C-FIND), cached when that answer was complete."""
        cached = await self._cache.get_study_series(study_uid)
        if cached:
            self._metrics.inc("cache_hits_total", kind="study_series")
            return cached
        self._metrics.inc("cache_misses_total", kind="study_series")
        uids, complete = await self._retrieval.list_series(study_uid)
        if complete and uids:
            await self._cache.put_study_series(study_uid, uids)
        return uids

