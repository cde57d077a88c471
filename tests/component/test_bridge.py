"""The thread -> asyncio bridge: order, a real bound on items in flight, cancellation seen by the
producer, errors and deadlines reaching the consumer, the concurrency limiter, no stray threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.dimse.bridge import Cancelled, Emitter, ThreadStream
from app.errors import UpstreamTimeout

pytestmark = pytest.mark.timeout(20)
EXECUTOR_SHUTDOWN_S = 5.0  # producers here return at once when told to


async def test_items_flow_in_order_and_result_is_returned(executor: ThreadPoolExecutor) -> None:
    def producer(emitter: Emitter[int]) -> str:
        for i in range(200):
            emitter.emit(i)
        return "done"

    async with ThreadStream(producer, executor=executor, maxsize=4) as stream:
        items = [item async for item in stream]
    assert items == list(range(200))
    assert stream.result == "done"


async def test_result_before_the_end_is_an_error(executor: ThreadPoolExecutor) -> None:
    def producer(emitter: Emitter[int]) -> int:
        emitter.emit(1)
        return 0

    async with ThreadStream(producer, executor=executor) as stream:
        with pytest.raises(RuntimeError):
            _ = stream.result
        assert [i async for i in stream] == [1]
    assert stream.result == 0


async def test_bounded_queue_bounds_items_in_flight(executor: ThreadPoolExecutor) -> None:
    maxsize = 8
    lock = threading.Lock()
    emitted = 0
    consumed = 0
    peak = 0

    def producer(emitter: Emitter[int]) -> None:
        nonlocal emitted, peak
        for i in range(1000):
            emitter.emit(i)
            with lock:
                emitted += 1
                peak = max(peak, emitted - consumed)

    async with ThreadStream(producer, executor=executor, maxsize=maxsize) as stream:
        async for i in stream:
            with lock:
                consumed += 1
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # a slow consumer: the producer must wait
    assert consumed == 1000
    # The consumer frees a slot just before counting the item it took, so one more may be
    # counted in flight for an instant; without the bound the producer would be hundreds ahead.
    assert peak <= maxsize + 1, peak


async def test_early_exit_makes_the_producer_see_cancelled(executor: ThreadPoolExecutor) -> None:
    saw_cancelled = threading.Event()
    emitted: list[int] = []

    def producer(emitter: Emitter[int]) -> None:
        try:
            for i in range(10_000):
                emitter.emit(i)
                emitted.append(i)
        except Cancelled:
            saw_cancelled.set()
            raise

    stream: ThreadStream[int, None] = ThreadStream(producer, executor=executor, maxsize=2)
    async with stream:
        async for i in stream:
            if i == 4:
                break
    await stream.wait_closed(timeout=5)
    assert saw_cancelled.is_set()
    assert len(emitted) < 20  # stopped promptly, not after the 10 000 items


async def test_producer_exception_reaches_the_consumer(executor: ThreadPoolExecutor) -> None:
    class Boom(Exception):
        pass

    def producer(emitter: Emitter[int]) -> None:
        emitter.emit(1)
        emitter.emit(2)
        raise Boom("in the thread")

    got: list[int] = []
    with pytest.raises(Boom, match="in the thread"):
        async with ThreadStream(producer, executor=executor) as stream:
            async for item in stream:
                got.append(item)
    assert got == [1, 2]


async def test_exception_before_any_item(executor: ThreadPoolExecutor) -> None:
    def producer(emitter: Emitter[int]) -> None:
        raise UpstreamTimeout("no answer")

    with pytest.raises(UpstreamTimeout):
        async with ThreadStream(producer, executor=executor) as stream:
            async for _ in stream:
                pass


async def test_deadline_raises_upstream_timeout_and_runs_abort_callbacks(
    executor: ThreadPoolExecutor,
) -> None:
    aborted = threading.Event()
    returned = threading.Event()

    def producer(emitter: Emitter[int]) -> None:
        emitter.on_abort(aborted.set)
        emitter.emit(1)
        aborted.wait(10)  # blocked "on the network" until the abort callback frees it
        returned.set()

    start = time.monotonic()
    got: list[int] = []
    stream: ThreadStream[int, None] = ThreadStream(producer, executor=executor, deadline=0.3)
    with pytest.raises(UpstreamTimeout) as info:
        async with stream:
            async for item in stream:
                got.append(item)
    elapsed = time.monotonic() - start
    assert got == [1]
    assert info.value.http_status == 504
    assert 0.25 <= elapsed < 2.0
    assert aborted.wait(2)
    await stream.wait_closed(timeout=5)
    assert returned.is_set()


async def test_consumer_cancellation_runs_abort_callbacks(executor: ThreadPoolExecutor) -> None:
    aborted = threading.Event()

    def producer(emitter: Emitter[int]) -> None:
        emitter.on_abort(aborted.set)
        aborted.wait(10)

    async def consume() -> None:
        async with ThreadStream(producer, executor=executor) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert aborted.wait(2)


async def test_limiter_bounds_concurrent_producers(executor: ThreadPoolExecutor) -> None:
    limiter = asyncio.Semaphore(2)
    lock = threading.Lock()
    running = 0
    peak = 0

    def producer(emitter: Emitter[int]) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        emitter.emit(1)
        with lock:
            running -= 1
        return 1

    async def one() -> int:
        async with ThreadStream(producer, executor=executor, limiter=limiter) as stream:
            items = [i async for i in stream]
        await stream.wait_closed(timeout=5)
        return sum(items) + stream.result

    results = await asyncio.gather(*(one() for _ in range(6)))
    assert results == [2] * 6
    assert peak == 2


async def test_limiter_slot_is_released_after_failure(executor: ThreadPoolExecutor) -> None:
    limiter = asyncio.Semaphore(1)

    def failing(emitter: Emitter[int]) -> None:
        raise ValueError("x")

    for _ in range(3):  # would block forever on the second round if the slot leaked
        with pytest.raises(ValueError):
            async with ThreadStream(failing, executor=executor, limiter=limiter) as stream:
                async for _ in stream:
                    pass
        await stream.wait_closed(timeout=5)
    assert not limiter.locked()


async def test_deadline_while_waiting_for_a_slot(executor: ThreadPoolExecutor) -> None:
    limiter = asyncio.Semaphore(1)
    release = threading.Event()

    def blocker(emitter: Emitter[int]) -> None:
        release.wait(5)

    async with ThreadStream(blocker, executor=executor, limiter=limiter) as first:
        with pytest.raises(UpstreamTimeout):
            async with ThreadStream(blocker, executor=executor, limiter=limiter, deadline=0.2):
                pass
        release.set()
        async for _ in first:
            pass


async def test_abort_on_early_exit_runs_abort_callbacks(executor: ThreadPoolExecutor) -> None:
    aborted = threading.Event()

    def producer(emitter: Emitter[int]) -> None:
        emitter.on_abort(aborted.set)
        for i in range(100):
            emitter.emit(i)

    stream: ThreadStream[int, None] = ThreadStream(
        producer, executor=executor, maxsize=1, abort_on_early_exit=True
    )
    async with stream:
        async for _ in stream:
            break
    assert aborted.wait(2)
    await stream.wait_closed(timeout=5)


async def test_early_exit_without_abort_flag_does_not_abort(
    executor: ThreadPoolExecutor,
) -> None:
    aborted = threading.Event()

    def producer(emitter: Emitter[int]) -> None:
        emitter.on_abort(aborted.set)
        for i in range(100):
            emitter.emit(i)

    stream: ThreadStream[int, None] = ThreadStream(producer, executor=executor, maxsize=1)
    async with stream:
        async for _ in stream:
            break
    await stream.wait_closed(timeout=5)
    assert not aborted.is_set()
