"""The asyncio engine's operation stream: an operation runs as a task on a leased association
and hands items to the consumer through a bounded queue, with the same contract as the thread
bridge (``async with``, ``async for``, ``result``), so services see one interface."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from app.dimse.bridge import Cancelled
from app.errors import UpstreamTimeout

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class _End:
    """Queue sentinel: the operation returned."""


class _Failure:
    """Queue sentinel: the operation raised."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = _End()
_RUNNING: set[asyncio.Task[None]] = set()
"""Strong references to operation tasks: one the consumer left (cancelling it) still runs to
its end (C-CANCEL, drain, return the association) and must not be garbage-collected."""


async def settle_operations(timeout: float) -> None:
    """Wait (at most ``timeout``) for operation tasks still running, e.g. those cancelled at
    shutdown, so that each closes its association before the event loop stops."""
    running = {t for t in _RUNNING if not t.done()}
    if running:
        await asyncio.wait(running, timeout=timeout)


class Sink(Generic[T]):
    """The operation's side: ``emit`` waits while the queue is full; Cancelled once the
    consumer has stopped wanting items."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self.cancelled = False

    async def emit(self, item: T) -> None:
        """Hand one item on, waiting for room."""
        if self.cancelled:
            raise Cancelled()
        await self._queue.put(item)
        if self.cancelled:
            raise Cancelled()


Operation = Callable[[Sink[T]], Awaitable[R]]
"""Runs one DIMSE operation (leasing and returning its association itself)."""


class OperationStream(Generic[T, R]):
    """Iterate the items an async ``operation(sink)`` emits. Leaving early cancels the
    operation (``on_early_exit="cancel"``: e.g. C-CANCEL and drain) or aborts it; a consumer
    that fails or is cancelled always aborts; ``deadline`` bounds the whole operation."""

    def __init__(self, operation: Operation[T, R], *, maxsize: int = 16,
                 deadline: float | None = None, what: str = "DIMSE operation",
                 on_early_exit: Literal["cancel", "abort"] = "cancel") -> None:
        self._operation = operation
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max(1, maxsize))
        self._overflow: asyncio.Queue[Any] = asyncio.Queue()
        self._sink: Sink[T] = Sink(self._queue)
        self._deadline_s = deadline
        self._deadline_at: float | None = None
        self._what = what
        self._early = on_early_exit
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._result: R | None = None
        self._abort_callbacks: list[Callable[[], None]] = []

    @property
    def result(self) -> R:
        """The operation's return value (only after the stream has ended normally)."""
        if not self._finished:
            raise RuntimeError("the stream has not ended yet")
        return self._result  # type: ignore[return-value]

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (e.g. abort the association) if the stream is aborted."""
        self._abort_callbacks.append(callback)

    async def __aenter__(self) -> OperationStream[T, R]:
        if self._deadline_s is not None:
            self._deadline_at = time.monotonic() + self._deadline_s
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._what)
        _RUNNING.add(self._task)
        self._task.add_done_callback(_RUNNING.discard)
        return self

    async def _run(self) -> None:
        try:
            self._result = await self._operation(self._sink)
        except asyncio.CancelledError:
            self._overflow.put_nowait(_Failure(UpstreamTimeout(f"{self._what} was aborted")))
            raise
        except BaseException as exc:  # handed to the consumer, not lost in a task
            self._overflow.put_nowait(_Failure(exc))
        else:
            self._overflow.put_nowait(_END)
        finally:
            # Wake a consumer waiting on the item queue (it checks the overflow queue first).
            if self._queue.empty():
                try:
                    self._queue.put_nowait(_END)
                except asyncio.QueueFull:  # pragma: no cover - empty just above
                    pass

    def _remaining(self) -> float | None:
        if self._deadline_at is None:
            return None
        return max(0.0, self._deadline_at - time.monotonic())

    def __aiter__(self) -> OperationStream[T, R]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        while True:
            if self._queue.empty() and not self._overflow.empty():
                return self._end(self._overflow.get_nowait())
            try:
                async with asyncio.timeout(self._remaining()):
                    item = await self._queue.get()
            except TimeoutError:
                self.abort()
                raise UpstreamTimeout(f"{self._what} did not finish within its deadline"
                                      ) from None
            if isinstance(item, _End):
                continue  # a wake-up: the real end is in the overflow queue
            return item  # type: ignore[no-any-return]

    def _end(self, item: Any) -> T:
        self._finished = True
        if isinstance(item, _Failure):
            raise item.exc
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Tell the operation to stop at its next emit (it may then finish gracefully)."""
        self._sink.cancelled = True
        while not self._queue.empty():  # make room so a waiting emit returns and sees it
            self._queue.get_nowait()

    def abort(self) -> None:
        """Stop now: run the abort callbacks (abort the association) and cancel the task."""
        self.cancel()
        callbacks, self._abort_callbacks = self._abort_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # an abort that fails has nothing left to clean up
                log.debug("abort callback failed", exc_info=True)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the operation's task has ended (its association returned or closed)."""
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._finished:
            return
        early_on_purpose = exc_type is None or issubclass(
            exc_type, (GeneratorExit, StopAsyncIteration))
        if early_on_purpose and self._early == "cancel":
            self.cancel()
        else:
            self.abort()
