"""Single-flight retrieval: however many requests (tasks, workers, replicas) want the same series
or instance, one holds a lock with expiry and retrieves it; everyone follows its event log.

The holder appends ``i:<sop>`` as each instance enters the cache, then ``d`` (done) or
``f:<http>:<dimse>:<message>`` (failed), and only then releases the lock. A follower that sees no
progress checks the lock: if it expired (the holder crashed) and the work is not complete, it
takes the lock itself and becomes the holder, so nobody is blocked past the lock's expiry.

Followers in the holder's own process read a local copy of the log instead, fed as soon as the
fill has something for them (an instance it hands over in memory may be announced here before
it is written to a shared cache; the shared log announces it once it is there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from app.cache.backend import CacheBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FillEvent:
    """Progress of a fill: an instance landed, the fill is done, or it failed."""

    kind: str  # "instance" | "done" | "failed"
    sop: str = ""
    http_status: int = 0
    dimse_status: int | None = None
    message: str = ""

    def encode(self) -> str:
        if self.kind == "instance":
            return f"i:{self.sop}"
        if self.kind == "done":
            return "d"
        dimse = "-" if self.dimse_status is None else str(self.dimse_status)
        return f"f:{self.http_status}:{dimse}:{self.message}"

    @classmethod
    def decode(cls, text: str) -> FillEvent:
        if text.startswith("i:"):
            return cls("instance", sop=text[2:])
        if text == "d":
            return cls("done")
        _, http, dimse, message = (text.split(":", 3) + ["", "", ""])[:4]
        return cls("failed", http_status=int(http or 502),
                   dimse_status=None if dimse in ("-", "") else int(dimse), message=message)


Fill = Callable[["FillContext"], Awaitable[None]]
_ORDER = itertools.count()  # orders follow() calls and local logs' ends in this process


class LocalLog:
    """A fill's events for followers in its own process: appended without a round trip."""

    def __init__(self) -> None:
        self.events: list[FillEvent] = []
        self._changed = asyncio.Event()
        self.ended_at: int | None = None  # _ORDER when the final event came in

    @property
    def ended(self) -> bool:
        """Whether the final event (done or failed) is in."""
        return self.ended_at is not None

    def append(self, event: FillEvent) -> None:
        if event.kind in ("done", "failed") and self.ended_at is None:
            self.ended_at = next(_ORDER)
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[FillEvent]:
        """Every event, from the first, until the final one."""
        position = 0
        while True:
            while position < len(self.events):
                event = self.events[position]
                position += 1
                yield event
                if event.kind in ("done", "failed"):
                    return
            await self._changed.wait()


class FillContext:
    """What a fill uses to report progress; it keeps the lock alive while the fill runs."""

    def __init__(self, backend: CacheBackend, lock_key: str, token: str, events_key: str,
                 lock_ttl: float, event_ttl: float, local: LocalLog | None = None) -> None:
        self._backend = backend
        self.lock_key = lock_key
        self.token = token
        self.events_key = events_key
        self._lock_ttl = lock_ttl
        self._event_ttl = event_ttl
        self.local = local if local is not None else LocalLog()

    @property
    def event_ttl(self) -> float:
        """How long the shared event log is kept."""
        return self._event_ttl

    async def publish(self, event: FillEvent) -> None:
        """Tell every follower, local and shared."""
        self.local.append(event)
        await self._backend.append_event(self.events_key, event.encode(), self._event_ttl)

    def publish_local(self, event: FillEvent) -> None:
        """Tell the followers in this process only (the shared log is written separately,
        e.g. in the same batch as the instance it announces)."""
        self.local.append(event)

    async def keep_alive(self) -> None:
        """Renew the lock until cancelled (runs beside the fill)."""
        while True:
            await asyncio.sleep(self._lock_ttl / 3)
            with contextlib.suppress(Exception):
                if not await self._backend.renew_lock(self.lock_key, self.token, self._lock_ttl):
                    log.warning("lost fill lock %s", self.lock_key)
                    return


class SingleFlight:
    """Starts fills (at most one per key at a time, anywhere) and lets callers follow them."""

    def __init__(self, backend: CacheBackend, *, lock_ttl: float = 30.0,
                 event_ttl: float = 600.0) -> None:
        self._backend = backend
        self._lock_ttl = lock_ttl
        self._event_ttl = event_ttl
        self._tasks: set[asyncio.Task[None]] = set()
        # events key -> (log, task) of a fill running in this process
        self._local: dict[str, tuple[LocalLog, asyncio.Task[None]]] = {}

    @property
    def running(self) -> int:
        """Fills running in this process."""
        return len(self._tasks)

    async def follow(
        self,
        lock_key: str,
        events_key: Callable[[str], str],
        fill: Fill,
        is_complete: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[FillEvent]:
        """Events of the fill for ``lock_key`` (starting one here if none runs), ending with
        ``done`` or ``failed``; ``done`` straight away when the work is already complete."""
        started = next(_ORDER)
        while True:
            token = await self._backend.lock_holder(lock_key)
            if token is None:
                if await is_complete():
                    yield FillEvent("done")
                    return
                token = await self._backend.acquire_lock(lock_key, self._lock_ttl)
                if token is None:
                    continue  # somebody else took it first: follow theirs
                if await is_complete():  # finished between our checks
                    await self._backend.release_lock(lock_key, token)
                    yield FillEvent("done")
                    return
                self._start(FillContext(self._backend, lock_key, token, events_key(token),
                                        self._lock_ttl, self._event_ttl), fill)
            key = events_key(token)
            running = self._local.get(key)
            if running is not None:  # the fill runs in this process: no round trips
                local, task = running
                if local.ended_at is not None and local.ended_at < started:
                    # Over before this call began (its lock not yet released): not this
                    # caller's outcome, look again once the holder has let go.
                    await asyncio.wait({task})
                    continue
                async for event in local.follow():
                    yield event
                return
            position = 0
            while True:
                events = await self._backend.wait_events(key, position, self._lock_ttl / 3)
                if not events:
                    if await self._backend.lock_holder(lock_key) != token:
                        # The holder is gone without a final event (crashed or expired).
                        events = await self._backend.read_events(key, position)
                        if not events:
                            break
                    else:
                        continue
                for text in events:
                    position += 1
                    event = FillEvent.decode(text)
                    yield event
                    if event.kind in ("done", "failed"):
                        return

    def _start(self, ctx: FillContext, fill: Fill) -> None:
        async def run() -> None:
            keeper = asyncio.create_task(ctx.keep_alive())
            try:
                await fill(ctx)
            except Exception as exc:  # a fill must always end with a final event
                log.exception("fill %s failed", ctx.lock_key)
                with contextlib.suppress(Exception):
                    await ctx.publish(FillEvent("failed", http_status=502,
                                                message=f"retrieval failed: {exc}"))
            finally:
                keeper.cancel()
                with contextlib.suppress(Exception):
                    await self._backend.release_lock(ctx.lock_key, ctx.token)
                if not ctx.local.ended:  # cancelled: local followers must not wait forever
                    ctx.local.append(FillEvent("failed", http_status=503,
                                               message="the retrieval was stopped"))
                self._local.pop(ctx.events_key, None)

        task = asyncio.get_running_loop().create_task(run(), name=f"fill {ctx.lock_key}")
        self._local[ctx.events_key] = (ctx.local, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel fills still running (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
