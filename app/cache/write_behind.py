"""Writing a fill's instances to the cache behind the fill, so that the retrieval (and the
requests reading it) run at the PACS's pace rather than the cache's: each verified instance is
announced to the fill's local followers at once and queued; queued instances are written in
batches (on Redis from a writer thread of its own, see redisbackend), each batch with the
shared-log events that announce it to other processes, so another process never hears of an
instance before it can read it. Local followers take a queued instance from memory
(``pending``). A byte budget bounds what waits to be written (the fill waits for room beyond
it). The fill publishes ``done`` only after ``finish``: every batch is written by then.

The fill once waited for each write (write-through) because a C-MOVE retrieval over two
replicas hung about one run in four with this design. The cause was not here: leaving the
C-MOVE cancels its relay task (services/move_relay.py), and on Python 3.11 that cancellation
can be lost when it lands just as an awaited call completes (``asyncio.wait_for`` returns the
result instead of raising; redis-py uses it too), so the relay polled on and the fill never
ended. Running ahead made the C-MOVE end right as the relay was woken for its last instance.
The relay now also stops on a flag and is waited for with a bound, and the event-log waits use
``asyncio.timeout``; tests/component/test_relay_cancellation.py reproduces the race."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.cache.singleflight import FillContext, FillEvent
from app.cache.store import CachedInstance, GatewayCache

log = logging.getLogger(__name__)
DEFAULT_MAX_PENDING = 32 * 1024 * 1024


class WriteBehind:
    """The instances of one fill on their way into the cache (series ``series``)."""

    def __init__(self, cache: GatewayCache, series: str, ctx: FillContext, *,
                 on_declined: Callable[[CachedInstance], None] | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        """``on_declined`` gets each instance the cache refused (e.g. over its size cap)."""
        self._cache = cache
        self._on_declined = on_declined
        self.series = series
        self._ctx = ctx
        self._max_pending = max_pending
        self._queue: list[CachedInstance] = []
        self._pending: dict[str, CachedInstance] = {}  # queued or being written, by SOP UID
        self._pending_bytes = 0
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self.written: list[str] = []
        self.declined: list[str] = []

    def pending(self, sop: str) -> CachedInstance | None:
        """The instance if it is queued or being written (not yet readable from the cache)."""
        return self._pending.get(sop)

    async def add(self, item: CachedInstance) -> None:
        """Queue ``item`` and announce it to local followers; waits while the budget is full.
        Raises what a previous batch raised (the cache is unreachable)."""
        if self._error is not None:
            raise self._error
        self._queue.append(item)
        self._pending[item.sop_instance_uid] = item
        self._pending_bytes += len(item.data)
        self._ctx.publish_local(FillEvent("instance", sop=item.sop_instance_uid))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._flush(), name=f"write behind {self.series}")
        while self._pending_bytes > self._max_pending and self._error is None:
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
                    self._pending_bytes -= len(item.data)
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
