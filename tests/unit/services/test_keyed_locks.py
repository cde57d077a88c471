"""KeyedLocks: one holder per key at a time, keys independent, nothing kept once released."""

from __future__ import annotations

import asyncio

import pytest

from app.services.keyed_locks import KeyedLocks


async def test_one_holder_per_key_and_keys_are_independent() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    async def work(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0.01)
            inside[key] -= 1

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(work(k) for k in "aaaabbbb"))
    assert most == {"a": 1, "b": 1}
    assert asyncio.get_running_loop().time() - started < 0.2  # a and b ran side by side
    assert len(locks) == 0


async def test_a_failing_or_cancelled_holder_lets_the_next_one_in() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("boom")
    gate = asyncio.Event()

    async def stuck() -> None:
        async with locks.hold("k"):
            await gate.wait()

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0.01)  # holding
    assert len(locks) == 1
    task.cancel()
    async with asyncio.timeout(1), locks.hold("k"):
        pass  # got in once the stuck holder was cancelled
    assert len(locks) == 0
