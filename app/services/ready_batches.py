"""Group an async source's items into lists of what is ready, to do per-list work in one go.

Work done per item through the event loop (a thread hop, a cache write) costs a trip through
the loop each; on a busy loop a trip can take tens of milliseconds, so three hundred of them
add up to seconds. A source that is slow (a PACS) is still passed on item by item; a fast one
(the cache) arrives in few lists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def ready_batches(source: AsyncIterator[T], most: int) -> AsyncGenerator[list[T], None]:
    """``source``'s items in order, in lists of 1 to ``most``: each list holds what arrived
    while the consumer used the previous one. At most ``most`` items wait besides the list in
    use; the source's error is raised after the items that came before it."""
    queue: asyncio.Queue[T] = asyncio.Queue(max(1, most))

    async def pump() -> None:
        async for item in source:
            await queue.put(item)

    task = asyncio.ensure_future(pump())
    getter: asyncio.Future[T] | None = None
    try:
        while True:
            if queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():  # the source ended (or failed) first
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if queue.empty():
                        task.result()  # the source's error, if it failed
                        return
                    continue
                batch = [getter.result()]
            else:
                batch = [queue.get_nowait()]
            while len(batch) < most and not queue.empty():
                batch.append(queue.get_nowait())
            yield batch
    finally:
        for pending in (getter, task):
            if pending is not None and not pending.done():
                pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
