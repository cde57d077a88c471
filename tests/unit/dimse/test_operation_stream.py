"""The asyncio engine's OperationStream, the contract every service relies on whichever engine
runs (the thread bridge's is tested in tests/component/test_bridge.py): items in order and the
result after them, an error after the items it follows, a bounded queue, leaving early cancels
(the operation finishes gracefully) or aborts, a failing consumer always aborts, and a deadline
bounds the whole operation."""

from __future__ import annotations

import asyncio

import pytest

from app.dimse.bridge import Cancelled
from app.dimse.engine.stream import OperationStream, Sink, settle_operations
from app.errors import UpstreamError, UpstreamTimeout

pytestmark = pytest.mark.timeout(10)


async def test_items_in_order_then_the_result() -> None:
    async def operation(sink: Sink[int]) -> str:
        for i in range(50):
            await sink.emit(i)
        return "final"

    async with OperationStream(operation, maxsize=4) as stream:
        with pytest.raises(RuntimeError):
            _ = stream.result  # not before the end
        items = [i async for i in stream]
    assert items == list(range(50))
    assert stream.result == "final"


async def test_an_error_reaches_the_consumer_after_the_items_before_it() -> None:
    async def operation(sink: Sink[int]) -> None:
        await sink.emit(1)
        await sink.emit(2)
        raise UpstreamError("PACS aborted")

    got: list[int] = []
    with pytest.raises(UpstreamError, match="PACS aborted"):
        async with OperationStream(operation) as stream:
            async for item in stream:
                got.append(item)
    assert got == [1, 2]


async def test_the_queue_bounds_items_in_flight() -> None:
    emitted = 0

    async def operation(sink: Sink[int]) -> None:
        nonlocal emitted
        for i in range(20):
            await sink.emit(i)
            emitted += 1

    async with OperationStream(operation, maxsize=3) as stream:
        first = await stream.__anext__()
        await asyncio.sleep(0.05)  # the operation runs ahead as far as the queue lets it
        assert first == 0 and emitted <= 1 + 3
        rest = [i async for i in stream]
    assert rest == list(range(1, 20))


async def test_leaving_early_lets_a_cancel_operation_finish_gracefully() -> None:
    seen: list[str] = []
    aborted: list[bool] = []

    async def operation(sink: Sink[int]) -> None:
        try:
            for i in range(100):
                await sink.emit(i)
        except Cancelled:
            seen.append("cancelled")  # e.g. send C-CANCEL and drain
            raise

    stream: OperationStream[int, None] = OperationStream(operation, maxsize=2,
                                                         on_early_exit="cancel")
    stream.on_abort(lambda: aborted.append(True))
    async with stream:
        async for item in stream:
            if item == 3:
                break
    await stream.wait_closed(timeout=5)
    assert seen == ["cancelled"] and aborted == []


async def test_leaving_early_an_abort_operation_runs_its_abort_callbacks() -> None:
    aborted: list[bool] = []
    ended = asyncio.Event()

    async def operation(sink: Sink[int]) -> None:
        try:
            for i in range(100):
                await sink.emit(i)
        finally:
            ended.set()

    stream: OperationStream[int, None] = OperationStream(operation, maxsize=2,
                                                         on_early_exit="abort")
    stream.on_abort(lambda: aborted.append(True))
    async with stream:
        async for item in stream:
            if item == 3:
                break
    await asyncio.wait_for(ended.wait(), 5)
    assert aborted == [True]


async def test_a_failing_consumer_always_aborts() -> None:
    aborted: list[bool] = []

    async def operation(sink: Sink[int]) -> None:
        for i in range(100):
            await sink.emit(i)

    stream: OperationStream[int, None] = OperationStream(operation, on_early_exit="cancel")
    stream.on_abort(lambda: aborted.append(True))
    with pytest.raises(ValueError):
        async with stream:
            async for _ in stream:
                raise ValueError("the HTTP client went away")
    assert aborted == [True]
    await stream.wait_closed(timeout=5)


async def test_the_deadline_bounds_the_whole_operation() -> None:
    aborted: list[bool] = []

    async def operation(sink: Sink[int]) -> None:
        await sink.emit(1)
        await asyncio.sleep(30)  # a PACS that stops answering

    stream: OperationStream[int, None] = OperationStream(operation, deadline=0.2,
                                                         what="C-GET on PACS x")
    stream.on_abort(lambda: aborted.append(True))
    got: list[int] = []
    with pytest.raises(UpstreamTimeout, match="C-GET on PACS x did not finish"):
        async with stream:
            async for item in stream:
                got.append(item)
    assert got == [1] and aborted == [True]
    await stream.wait_closed(timeout=5)


async def test_settle_operations_waits_for_operations_left_running() -> None:
    finished = asyncio.Event()

    async def operation(sink: Sink[int]) -> None:
        try:
            await sink.emit(1)
            await sink.emit(2)
        except Cancelled:
            await asyncio.sleep(0.1)  # returning its association takes a moment
            finished.set()
            raise

    stream: OperationStream[int, None] = OperationStream(operation, maxsize=1)
    async with stream:
        async for _ in stream:
            break
    assert not finished.is_set()
    await settle_operations(5)
    assert finished.is_set()
