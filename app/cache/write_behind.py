"""Writing a fill's instances to the cache beside the fill: each verified instance is announced
to the fill's local followers at once and queued; queued instances are written in batches, each
batch with the shared-log events that announce it to other processes (on Redis from a writer
thread of its own, see redisbackend).

For now ``add`` returns only once its instance is written (write-through): with the fill
running ahead of its writes, one request in 20 of a C-MOVE retrieval spread over two replicas
sharing Redis hung in about one run in four (tests/integration/test_cache_workers.py); the
cause is not yet found. Local followers still read the local log without round trips, and the
socket writes still run in the writer thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.cache.singleflight import FillContext, FillEvent
from app.cache.store import CachedInstance, GatewayCache


class WriteBehind:
    """The instances of one fill on their way into the cache (series ``series``)."""

    def __init__(self, cache: GatewayCache, series: str, ctx: FillContext, *,
                 on_declined: Callable[[CachedInstance], None] | None = None) -> None:
        """``on_declined`` gets each instance the cache refused (e.g. over its size cap)."""
        self._cache = cache
        self._on_declined = on_declined
        self.series = series
        self._ctx = ctx
        self._queue: list[CachedInstance] = []
        self._pending: dict[str, CachedInstance] = {}  # queued or being written, by SOP UID
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self.written: list[str] = []
        self.declined: list[str] = []

    def pending(self, sop: str) -> CachedInstance | None:
        """The instance if it is queued or being written (not yet readable from the cache)."""
        return self._pending.get(sop)

    async def add(self, item: CachedInstance) -> None:
        """Queue ``item``, announce it to local followers and wait until it is written (see the
        module's note). Raises what a previous batch raised (the cache is unreachable)."""
        if self._error is not None:
            raise self._error
        self._queue.append(item)
        self._pending[item.sop_instance_uid] = item
        self._ctx.publish_local(FillEvent("instance", sop=item.sop_instance_uid))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._flush(), name=f"write behind {self.series}")
        while item.sop_instance_uid in self._pending and self._error is None:
            self._room.clear()
            await self._room.wait()

    async def _flush(self) -> None:
        """Write queued instances, a batch at a time, until the queue is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                events = [(self._ctx.events_key,
                           FillEvent("instance", sop=i.sop_instance_uid).encode(),
                           self._ctx.event_ttl) for i in batch]
                stored = await self._cache.put_instances(self.series, batch, events)
                for item, ok in zip(batch, stored, strict=True):
                    (self.written if ok else self.declined).append(item.sop_instance_uid)
                    if not ok and self._on_declined is not None:
                        self._on_declined(item)
                    self._pending.pop(item.sop_instance_uid, None)
                self._room.set()
        except Exception as exc:  # kept for the fill, which raises it (add, finish)
            self._error = exc
            self._room.set()

    async def finish(self) -> None:
        """Wait until everything queued is written; raises what a batch raised."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Write nothing more than the batch in progress (the fill failed or was cancelled)."""
        self._queue.clear()

    async def settle(self) -> None:
        """Wait for the batch in progress to end, whatever its outcome."""
        if self._task is not None:
            await asyncio.wait({self._task})
