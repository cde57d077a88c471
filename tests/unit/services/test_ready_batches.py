"""ready_batches: lists of what is ready, in order, bounded, errors after the items before them,
and the source closed when the consumer stops early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from app.services.ready_batches import ready_batches


async def fast(n: int, produced: list[int] | None = None) -> AsyncIterator[int]:
    for i in range(n):
        if produced is not None:
            produced.append(i)
        await asyncio.sleep(0)  # a cache read that is already done
        yield i


async def collect(source: AsyncIterator[int], most: int) -> list[list[int]]:
    batches = []
    async with aclosing(ready_batches(source, most)) as stream:
        async for batch in stream:
            batches.append(batch)
            await asyncio.sleep(0.01)  # the consumer's work: items pile up meanwhile
    return batches


async def test_a_fast_source_arrives_in_few_full_lists_in_order() -> None:
    batches = await collect(fast(100), 8)
    assert [i for b in batches for i in b] == list(range(100))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert len(batches) <= 100 // 8 + 2


async def test_a_slow_source_is_passed_on_item_by_item() -> None:
    async def slow() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0.03)
            yield i

    batches = []
    async with aclosing(ready_batches(slow(), 8)) as stream:
        async for batch in stream:
            batches.append(batch)
    assert batches == [[0], [1], [2], [3], [4]]


async def test_the_source_runs_at_most_most_items_ahead() -> None:
    produced: list[int] = []
    async with aclosing(ready_batches(fast(100, produced), 4)) as stream:
        first = await anext(stream)
        await asyncio.sleep(0.05)  # the source would run on without a bound
        assert len(produced) <= len(first) + 4 + 1


async def test_an_error_comes_after_the_items_before_it() -> None:
    async def failing() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        raise LookupError("gone")

    seen: list[int] = []
    with pytest.raises(LookupError, match="gone"):
        async with aclosing(ready_batches(failing(), 8)) as stream:
            async for batch in stream:
                seen.extend(batch)
    assert seen == [0, 1, 2]


async def test_stopping_early_closes_the_source_and_leaves_no_task() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                await asyncio.sleep(0)
                yield i
                i += 1
        finally:
            closed.set()

    before = len(asyncio.all_tasks())
    async with aclosing(ready_batches(endless(), 4)) as stream:
        await anext(stream)
    assert closed.is_set()
    assert len(asyncio.all_tasks()) == before
