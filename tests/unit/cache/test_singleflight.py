"""SingleFlight on both backends: one fill however many followers, every follower sees the same
outcome (success or failure), a dead holder is taken over once its lock expires, and a live
holder keeps its lock past the TTL by renewing it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from app.cache.backend import CacheBackend
from app.cache.redisbackend import RedisBackend
from app.cache.singleflight import FillContext, FillEvent, SingleFlight
from tests.peers import RedisServer

pytestmark = pytest.mark.timeout(30)

LOCK = "dwg:t:lock:{s}"


def events_key(token: str) -> str:
    return f"dwg:t:ev:{{s}}:{token}"


class Work:
    """A fill that announces ``count`` instances ``delay`` apart, and records its runs."""

    def __init__(self, count: int = 3, delay: float = 0.05,
                 fail_with: Exception | None = None, fail_event: FillEvent | None = None
                 ) -> None:
        self.count = count
        self.delay = delay
        self.fail_with = fail_with
        self.fail_event = fail_event
        self.runs = 0
        self.done = False

    async def __call__(self, ctx: FillContext) -> None:
        self.runs += 1
        for n in range(self.count):
            await asyncio.sleep(self.delay)
            await ctx.publish(FillEvent("instance", sop=f"1.{n}"))
        if self.fail_with is not None:
            raise self.fail_with
        if self.fail_event is not None:
            await ctx.publish(self.fail_event)
            return
        self.done = True
        await ctx.publish(FillEvent("done"))

    async def complete(self) -> bool:
        return self.done


async def collect(flights: SingleFlight, work: Work,
                  complete: Callable[[], Awaitable[bool]] | None = None) -> list[FillEvent]:
    return [e async for e in flights.follow(LOCK, events_key, work, complete or work.complete)]


@pytest.mark.parametrize("text", ["i:1.2.3", "d", "f:503:-:PACS busy", "f:502:42752:a:b:c"])
def test_fill_event_encoding(text: str) -> None:
    assert FillEvent.decode(text).encode() == text


def test_failed_event_fields() -> None:
    event = FillEvent.decode("f:504:49152:timed out: after 5 s")
    assert (event.kind, event.http_status, event.dimse_status, event.message) == (
        "failed", 504, 0xC000, "timed out: after 5 s")


async def released_soon(backend: CacheBackend) -> None:
    """Followers in the holder's process read its local log, so they may see the final event
    a moment before the holder has released the lock (one more round trip): it must follow."""
    for _ in range(200):
        if await backend.lock_holder(LOCK) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the holder kept its lock after its final event")


async def test_concurrent_followers_start_exactly_one_fill(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=4, delay=0.05)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(collect(flights, work) for _ in range(20)))
    assert work.runs == 1
    expected = [FillEvent("instance", sop=f"1.{n}") for n in range(4)] + [FillEvent("done")]
    assert all(r == expected for r in results)
    await released_soon(backend)
    await flights.close()


async def test_followers_after_completion_start_nothing(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=1, delay=0)
    async with asyncio.timeout(10):
        await collect(flights, work)
        assert await collect(flights, work) == [FillEvent("done")]
    assert work.runs == 1


async def test_failing_fill_gives_every_follower_the_failure(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=2, delay=0.05, fail_with=RuntimeError("association aborted"))
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(collect(flights, work) for _ in range(10)))
    assert work.runs == 1
    for events in results:
        assert [e.kind for e in events] == ["instance", "instance", "failed"]
        assert events[-1].http_status == 502
        assert "association aborted" in events[-1].message
    await released_soon(backend)


async def test_reported_failure_is_passed_on_verbatim(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=5)
    failure = FillEvent("failed", http_status=503, dimse_status=0xA702, message="out of resources")
    work = Work(count=0, fail_event=failure)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(collect(flights, work) for _ in range(5)))
    assert work.runs == 1
    assert results == [[failure]] * 5


async def test_failure_is_not_remembered(backend: CacheBackend) -> None:
    """A failed fill leaves no lock behind: the next request tries the PACS again."""
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=0, fail_with=RuntimeError("boom"))
    async with asyncio.timeout(10):
        assert [e.kind for e in await collect(flights, work)] == ["failed"]
        work.fail_with = None
        assert [e.kind for e in await collect(flights, work)] == ["done"]
    assert work.runs == 2


async def test_dead_holder_is_taken_over_after_its_lock_expires(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=0.6)
    dead = await backend.acquire_lock(LOCK, 0.6)  # a holder that never publishes nor renews
    assert dead
    await backend.append_event(events_key(dead), "i:1.0", 30)  # it got as far as one instance
    work = Work(count=2, delay=0.01)
    started = time.monotonic()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(collect(flights, work) for _ in range(5)))
    elapsed = time.monotonic() - started
    assert work.runs == 1  # exactly one follower took over
    for events in results:
        assert events[0] == FillEvent("instance", sop="1.0")  # from the dead holder's log
        assert events[-1] == FillEvent("done")
    assert elapsed < 4.0  # blocked for about the lock's expiry, not for ever


async def test_live_holder_renews_its_lock_past_the_ttl(backend: CacheBackend) -> None:
    # Renewed every 0.4 s, so a loaded machine may stall the holder 0.8 s and it still holds.
    flights = SingleFlight(backend, lock_ttl=1.2)
    work = Work(count=6, delay=0.5)  # 3 s: two and a half lock TTLs
    async with asyncio.timeout(15):
        first = asyncio.create_task(collect(flights, work))
        await asyncio.sleep(2.0)  # well past the first expiry: renewals must have kept it
        late = await collect(flights, work)
        await first
    assert work.runs == 1
    assert late[-1] == FillEvent("done")


async def test_two_processes_share_one_fill_through_redis(empty_redis: RedisServer) -> None:
    """Two SingleFlights on two Redis clients (as in two workers) run one fill between them."""
    left, right = RedisBackend(empty_redis.url), RedisBackend(empty_redis.url)
    work = Work(count=3, delay=0.1)
    try:
        async with asyncio.timeout(10):
            results = await asyncio.gather(
                *(collect(SingleFlight(b, lock_ttl=5), work)
                  for b in (left, right, left, right)))
        assert work.runs == 1
        assert all(r[-1] == FillEvent("done") and len(r) == 4 for r in results)
    finally:
        await left.close()
        await right.close()


async def test_close_cancels_running_fills(backend: CacheBackend) -> None:
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=100, delay=0.1)
    follower = asyncio.create_task(collect(flights, work))
    await asyncio.sleep(0.2)
    assert flights.running == 1
    await flights.close()
    assert flights.running == 0
    follower.cancel()


async def test_a_caller_that_arrived_before_a_local_fill_ended_shares_it(
        backend: CacheBackend) -> None:
    """``since``: a caller that arrived while the fill ran shares it even when it reaches
    ``follow`` after the end; one that arrived after the end looks again (and, the work not
    being complete, runs its own). The done event carries the fill's result in-process."""
    flights = SingleFlight(backend, lock_ttl=5)
    runs: list[int] = []
    finished = asyncio.Event()

    async def fill(ctx: FillContext) -> None:
        runs.append(len(runs))
        await ctx.publish(FillEvent("done", result={"run": len(runs)}))
        finished.set()
        await asyncio.sleep(0.3)  # ended, its lock not yet released

    async def never() -> bool:
        return False

    async def follow(since: int | None = None) -> list[FillEvent]:
        return [e async for e in flights.follow(LOCK, events_key, fill, never, since=since)]

    async with asyncio.timeout(10):
        arrived = SingleFlight.ticket()  # before the fill below ends
        first = asyncio.create_task(follow())
        await finished.wait()
        finished.clear()
        shared = await follow(since=arrived)
        assert runs == [0] and shared[-1].result == {"run": 1}
        late = await follow()  # arrived after the end: a new fill once the lock is free
        assert runs == [0, 1] and late[-1].result == {"run": 2}
        assert (await first)[-1].result == {"run": 1}
    assert FillEvent.decode(FillEvent("done", result={"x": 1}).encode()).result is None


async def test_refresh_starts_one_background_fill_only_when_idle_and_still_due(
        backend: CacheBackend) -> None:
    """``refresh``: nothing while a fill holds the lock; the lock released again when the work
    is no longer due once it is held; otherwise one fill that the caller does not wait for, and
    that a follower arriving meanwhile shares."""
    flights = SingleFlight(backend, lock_ttl=5)
    work = Work(count=2, delay=0.1)
    due = True

    async def is_due() -> bool:
        return due

    async with asyncio.timeout(10):
        started = time.monotonic()
        assert await flights.refresh(LOCK, events_key, work, is_due)
        assert time.monotonic() - started < 0.1  # not waited for
        assert flights.running == 1
        assert not await flights.refresh(LOCK, events_key, work, is_due)  # one at a time
        shared = await collect(flights, work)  # follows the refresh instead of filling
        assert work.runs == 1 and shared[-1] == FillEvent("done")
        await released_soon(backend)
        due = False
        assert not await flights.refresh(LOCK, events_key, work, is_due)
        assert await backend.lock_holder(LOCK) is None  # taken, then given back
        assert work.runs == 1
    await flights.close()


async def test_a_caller_that_arrived_before_the_end_shares_it_after_the_lock_is_gone(
        backend: CacheBackend) -> None:
    """The final event of a local fill is kept a few seconds: a caller that arrived before
    the end gets it (result included) even once the lock is released, failures too; a caller
    that arrived later starts its own fill."""
    flights = SingleFlight(backend, lock_ttl=5)
    runs: list[int] = []
    failing = False

    async def fill(ctx: FillContext) -> None:
        runs.append(len(runs))
        if failing:
            await ctx.publish(FillEvent("failed", http_status=502, message="PACS said no"))
            return
        await ctx.publish(FillEvent("done", result={"run": len(runs)}))

    async def never() -> bool:
        return False

    async def follow(since: int | None = None) -> list[FillEvent]:
        return [e async for e in flights.follow(LOCK, events_key, fill, never, since=since)]

    async with asyncio.timeout(10):
        arrived = SingleFlight.ticket()
        assert (await follow())[-1].result == {"run": 1}
        await released_soon(backend)
        assert (await follow(since=arrived))[-1].result == {"run": 1}  # shared, no new run
        assert runs == [0]
        assert (await follow())[-1].result == {"run": 2}  # arrived after the end
        await released_soon(backend)
        failing, arrived = True, SingleFlight.ticket()
        assert (await follow())[-1].kind == "failed"
        await released_soon(backend)
        shared = await follow(since=arrived)
        assert shared[-1].kind == "failed" and shared[-1].message == "PACS said no"
        assert runs == [0, 1, 2]
    await flights.close()


async def test_the_kept_outcome_is_the_first_final_event(backend: CacheBackend) -> None:
    """A fill that raises after publishing done still ended with done for its followers; a
    caller that reaches it after the lock is gone gets that done, not the later failure."""
    flights = SingleFlight(backend, lock_ttl=5)

    async def fill(ctx: FillContext) -> None:
        await ctx.publish(FillEvent("done", result={"ok": True}))
        raise RuntimeError("after the end")

    async def never() -> bool:
        return False

    async with asyncio.timeout(10):
        arrived = SingleFlight.ticket()
        first = [e async for e in flights.follow(LOCK, events_key, fill, never)]
        assert first[-1].kind == "done"
        await released_soon(backend)
        late = [e async for e in flights.follow(LOCK, events_key, fill, never, since=arrived)]
        assert late == [FillEvent("done", result={"ok": True})]
    await flights.close()
