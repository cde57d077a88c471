"""Single-flight retrieval: however many requests (tasks, workers, replicas) want the same series
or instance, one holds a lock with expiry and retrieves it; everyone follows its event log.

The holder appends ``i:<sop>`` as each instance enters the cache, then ``d`` (done) or
``f:<http>:<dimse>:<message>`` (failed), and only then releases the lock. A follower that sees no
progress checks the lock: if it expired (the holder crashed) and the work is not complete, it
takes the lock itself and becomes the holder, so nobody is blocked past the lock's expiry.

Followers in the holder's own process read a local copy of the log instead, fed as soon as the
fill has something for them (an instance it hands over in memory may be announced here before
it is written to a shared cache; the shared log announces it once it is there).

A caller may pass the moment it arrived (``ticket``): a fill of this process that ended after
that moment is its fill too, even when the event loop reaches the caller only once the fill's
lock is gone. Each process keeps the final events of its latest fills a few seconds for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.cache.backend import CacheBackend

log = logging.getLogger(__name__)


FillKind = Literal["instance", "done", "failed"]
"""What a fill reports: an instance landed, the fill is done, or it failed."""


@dataclass(frozen=True, slots=True)
class FillEvent:
    """Progress of a fill: an instance landed, the fill is done, or it failed."""

    kind: FillKind
    sop: str = ""
    http_status: int = 0
    dimse_status: int | None = None
    message: str = ""
    # What the fill made, for followers in its own process only (never encoded): they take it
    # from the local log instead of reading it back from the cache.
    result: Any = field(default=None, compare=False, repr=False)

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
ENDED_KEEP_S = 5.0
"""Seconds a local fill's final event is kept for callers that arrived before it."""
ENDED_MAX = 16
"""Local fills whose final events are kept (they may carry a search's result)."""


class LocalLog:
    """A fill's events for followers in its own process: appended without a round trip."""

    def __init__(self) -> None:
        self.events: list[FillEvent] = []
        self._changed = asyncio.Event()
        self.ended_at: int | None = None  # _ORDER when the final event came in
        self.final: FillEvent | None = None  # the first done or failed: what followers see

    @property
    def ended(self) -> bool:
        """Whether the final event (done or failed) is in."""
        return self.ended_at is not None

    def append(self, event: FillEvent) -> None:
        if event.kind in ("done", "failed") and self.ended_at is None:
            self.ended_at = next(_ORDER)
            self.final = event
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
        # lock key -> (end in _ORDER, monotonic time, final event) of this process's latest fills
        self._ended: OrderedDict[str, tuple[int, float, FillEvent]] = OrderedDict()

    @property
    def running(self) -> int:
        """Fills running in this process."""
        return len(self._tasks)

    @staticmethod
    def ticket() -> int:
        """A place in this process's order of events, to pass to ``follow`` as ``since``."""
        return next(_ORDER)

    async def follow(
        self,
        lock_key: str,
        events_key: Callable[[str], str],
        fill: Fill,
        is_complete: Callable[[], Awaitable[bool]],
        since: int | None = None,
    ) -> AsyncIterator[FillEvent]:
        """Events of the fill for ``lock_key`` (starting one here if none runs), ending with
        ``done`` or ``failed``; ``done`` straight away when the work is already complete.
        A fill of this process that ended before ``since`` (a ``ticket``; default: now) is
        not this caller's: it looks again, and may start another."""
        started = since if since is not None else next(_ORDER)
        while True:
            outcome = self._ended_since(lock_key, started)
            if outcome is not None:  # a fill here ended after this caller arrived: its outcome
                yield outcome
                return
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
                self._start(lock_key, token, events_key, fill)
            ended = False
            async for event in self._holder_events(lock_key, events_key(token), token, started):
                yield event
                ended = event.kind in ("done", "failed")
            if ended:
                return

    async def refresh(self, lock_key: str, events_key: Callable[[str], str], fill: Fill,
                      is_due: Callable[[], Awaitable[bool]]) -> bool:
        """Start ``fill`` in the background when no fill holds ``lock_key`` and ``is_due()``
        still holds once the lock is taken (refresh-ahead: the caller does not wait, and
        callers that follow the lock meanwhile share the fill); whether one was started."""
        if await self._backend.lock_holder(lock_key) is not None:
            return False
        token = await self._backend.acquire_lock(lock_key, self._lock_ttl)
        if token is None:
            return False
        if not await is_due():  # refreshed by somebody else between our checks
            await self._backend.release_lock(lock_key, token)
            return False
        self._start(lock_key, token, events_key, fill)
        return True

    async def watch(self, lock_key: str, events_key: Callable[[str], str]
                    ) -> AsyncIterator[FillEvent]:
        """Events of the fill running now for ``lock_key``, if any (none is started): a caller
        that needs part of that fill's work waits for it rather than starting its own. Ends
        with the fill's final event, or early when its holder is gone without one."""
        token = await self._backend.lock_holder(lock_key)
        if token is not None:
            async for event in self._holder_events(lock_key, events_key(token), token,
                                                   next(_ORDER)):
                yield event

    async def _holder_events(self, lock_key: str, key: str, token: str, started: int
                             ) -> AsyncIterator[FillEvent]:
        """The events of the fill holding ``lock_key`` with ``token``, to its final one; ends
        without one when that fill is over without a final event for this caller (its
        holder is gone, or it ended before ``started``): the caller looks at the lock again."""
        running = self._local.get(key)
        if running is not None:  # the fill runs in this process: no round trips
            local, task = running
            if local.ended_at is not None and local.ended_at < started:
                # Over before this call began (its lock not yet released): not this
                # caller's outcome, look again once the holder has let go.
                await asyncio.wait({task})
                return
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
                        return
                else:
                    continue
            for text in events:
                position += 1
                event = FillEvent.decode(text)
                yield event
                if event.kind in ("done", "failed"):
                    return

    def _start(self, lock_key: str, token: str, events_key: Callable[[str], str],
               fill: Fill) -> None:
        """Run ``fill`` as the holder of ``lock_key`` (taken with ``token``)."""
        ctx = FillContext(self._backend, lock_key, token, events_key(token), self._lock_ttl,
                          self._event_ttl)

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
                if ctx.local.ended_at is not None and ctx.local.final is not None:
                    # kept before the lock goes, so that no caller falls between the two
                    self._remember(ctx.lock_key, ctx.local.ended_at, ctx.local.final)
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

    def _remember(self, lock_key: str, ended_at: int, final: FillEvent) -> None:
        """Keep a local fill's final event for callers that arrived before it ended."""
        now = time.monotonic()
        self._ended[lock_key] = (ended_at, now, final)
        self._ended.move_to_end(lock_key)
        while len(self._ended) > ENDED_MAX or (
                now - next(iter(self._ended.values()))[1] > ENDED_KEEP_S):
            self._ended.popitem(last=False)

    def _ended_since(self, lock_key: str, started: int) -> FillEvent | None:
        """The final event of this process's latest fill of ``lock_key`` if it ended after
        ``started`` and not longer than ENDED_KEEP_S ago."""
        entry = self._ended.get(lock_key)
        if entry is None:
            return None
        ended_at, at, final = entry
        if time.monotonic() - at > ENDED_KEEP_S:
            del self._ended[lock_key]
            return None
        return final if ended_at > started else None

    async def close(self) -> None:
        """Cancel fills still running (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
