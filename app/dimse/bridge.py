"""The one place where pynetdicom's threads meet asyncio.

A blocking producer (a DIMSE operation) runs in a worker thread and hands items to the event loop
through a *bounded* queue: when the consumer is slow the producer waits, so memory stays flat. When
the consumer stops early the producer sees ``Cancelled`` at its next ``emit`` (and can send a
C-CANCEL); when the consumer is cancelled or its deadline passes, registered abort callbacks run
(aborting the association) so the worker thread is never left blocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from app.errors import UpstreamTimeout

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class Limiter(Protocol):
    """What bounds concurrent operations: an ``asyncio.Semaphore``, or budget.SlotGate."""

    async def acquire(self) -> bool: ...

    def release(self) -> None: ...


class Cancelled(Exception):
    """Raised in the producer thread when the consumer no longer wants items."""


class _End:
    """Queue sentinel: the producer returned."""


_END = _End()


class _Failure:
    """Queue sentinel: the producer raised."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Emitter(Generic[T]):
    """The producer's side of a ThreadStream: ``emit`` blocks while the queue is full."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
        capacity: threading.Semaphore,
        cancelled: threading.Event,
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._capacity = capacity
        self._cancelled = cancelled
        self._abort_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        """True once the consumer has stopped wanting items."""
        return self._cancelled.is_set()

    def emit(self, item: T) -> None:
        """Hand one item to the consumer, waiting for room; raises Cancelled if it has gone."""
        while not self._capacity.acquire(timeout=0.05):
            if self._cancelled.is_set() or self._loop.is_closed():
                self._cancelled.set()  # a closed loop has no consumer left to wait for
                raise Cancelled()
        if self._cancelled.is_set():
            self._capacity.release()
            raise Cancelled()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError as exc:  # the event loop has closed: nobody is listening
            self._cancelled.set()
            raise Cancelled() from exc

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Register a callback (e.g. ``assoc.abort``) to run if the consumer aborts the stream."""
        with self._lock:
            self._abort_callbacks.append(callback)

    def _take_abort_callbacks(self) -> list[Callable[[], None]]:
        with self._lock:
            callbacks, self._abort_callbacks = self._abort_callbacks, []
        return callbacks


class ThreadStream(Generic[T, R]):
    """Iterate, in asyncio, the items a blocking ``producer(emitter)`` emits from a worker thread.

    Use as ``async with ThreadStream(...) as stream: async for item in stream: ...``; after the
    loop ``stream.result`` is the producer's return value. ``deadline`` (seconds) bounds the whole
    operation: past it the stream is aborted and UpstreamTimeout is raised.
    """

    def __init__(
        self,
        producer: Callable[[Emitter[T]], R],
        *,
        executor: Executor | None = None,
        maxsize: int = 16,
        limiter: Limiter | None = None,
        deadline: float | None = None,
        what: str = "DIMSE operation",
        abort_on_early_exit: bool = False,
    ) -> None:
        self._producer = producer
        self._executor = executor
        self._maxsize = max(1, maxsize)
        self._limiter = limiter
        self._deadline_s = deadline
        self._what = what
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._capacity = threading.Semaphore(self._maxsize)
        self._cancelled = threading.Event()
        self._emitter: Emitter[T] | None = None
        self._future: asyncio.Future[None] | None = None
        self._finished = False
        self._result: R | None = None
        self._deadline_at: float | None = None
        self._abort_on_early_exit = abort_on_early_exit

    @property
    def result(self) -> R:
        """The producer's return value (only after the stream has ended normally)."""
        if not self._finished:
            raise RuntimeError("the stream has not ended yet")
        return self._result  # type: ignore[return-value]

    async def __aenter__(self) -> ThreadStream[T, R]:
        loop = asyncio.get_running_loop()
        if self._deadline_s is not None:
            self._deadline_at = time.monotonic() + self._deadline_s
        if self._limiter is not None:
            try:  # asyncio.timeout: a cancellation is never taken for the acquisition
                async with asyncio.timeout(self._remaining()):
                    await self._limiter.acquire()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{self._what}: no free association slot before the deadline"
                ) from None
        self._emitter = Emitter(loop, self._queue, self._capacity, self._cancelled)
        emitter = self._emitter

        def run() -> None:
            try:
                value = self._producer(emitter)
            except BaseException as exc:  # handed to the consumer, not lost in a thread
                self._post(loop, _Failure(exc))
            else:
                self._result = value
                self._post(loop, _END)

        try:
            self._future = loop.run_in_executor(self._executor, run)
        except BaseException:
            if self._limiter is not None:
                self._limiter.release()
            raise
        if self._limiter is not None:
            limiter = self._limiter
            self._future.add_done_callback(lambda _f: limiter.release())
        return self

    def _post(self, loop: asyncio.AbstractEventLoop, item: object) -> None:
        """Deliver an end-of-stream sentinel from the worker thread (not counted in capacity)."""
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has closed; nobody is waiting any more
            pass

    def _remaining(self) -> float | None:
        if self._deadline_at is None:
            return None
        return max(0.0, self._deadline_at - time.monotonic())

    def __aiter__(self) -> ThreadStream[T, R]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        try:  # asyncio.timeout: a cancellation is never taken for an item
            async with asyncio.timeout(self._remaining()):
                item = await self._queue.get()
        except TimeoutError:
            self.abort()
            raise UpstreamTimeout(f"{self._what} did not finish within its deadline") from None
        if isinstance(item, _End):
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.exc
        self._capacity.release()
        return item

    def cancel(self) -> None:
        """Tell the producer to stop at its next emit (it may then finish gracefully)."""
        self._cancelled.set()

    def abort(self) -> None:
        """Stop now: cancel and run the abort callbacks in a worker thread (they may block)."""
        self._cancelled.set()
        if self._emitter is None:
            return
        for callback in self._emitter._take_abort_callbacks():
            threading.Thread(target=_run_quietly, args=(callback,), daemon=True).start()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the producer thread has returned (its association is released)."""
        if self._future is not None:
            await asyncio.wait({self._future}, timeout=timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        early_on_purpose = exc_type is None or issubclass(
            exc_type, (GeneratorExit, StopAsyncIteration))
        if early_on_purpose and not self._abort_on_early_exit:
            self.cancel()  # stopped early on purpose: let the producer cancel and drain
        else:
            self.abort()  # cancelled, timed out or failed: do not wait on the PACS


def _run_quietly(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # an abort that fails has nothing left to clean up
        log.debug("abort callback failed", exc_info=True)


def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R],
                timeout: float) -> R:
    """Run ``coro`` on ``loop`` from another thread (a storage SCP thread of pynetdicom's
    engine) and wait for its result, at most ``timeout`` seconds: TimeoutError after that
    (the coroutine is cancelled), RuntimeError when the loop has closed."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no answer from the event loop within {timeout:.0f} s") from None
