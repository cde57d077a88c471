"""A C-MOVE whose relay is stopped just as a wake-up for it lands: the hang of the two-replica
C-MOVE retrieval (tests/integration/test_cache_workers.py), made deterministic on a real Redis.

What happened there: the replica running the fill retrieves by C-MOVE; Orthanc's sub-operations
reach the other replica, which publishes each instance through Redis (``MoveRelay.forward``);
the requesting replica's relay task waits for them in ``RedisBackend.wait_events``. When the
C-MOVE ends, ``MoveRelay.running`` cancels the relay and waits for it. If the Redis pub/sub
wake-up for the relay's log (its last entry's, arriving after the entry was read) completed the
waiter's wait just before that cancellation, ``asyncio.wait_for`` (Python 3.11) returned the
wait's result instead of raising CancelledError: the cancellation was lost, the relay polled on
forever, ``running`` never returned, the fill never published ``done``, and every follower of
the series waited. A fill that runs ahead of its cache writes reaches the end of the C-MOVE
right as that wake-up lands; waiting for each write had only moved the end away from it.

Here the wake-up and the cancellation are put in the same turn of the event loop, in the order
they came in the hung runs: the waiter of the relay's log is set by the real pub/sub listener
(a second worker publishes through Redis), and the C-MOVE ends in the step that set it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from app.cache.redisbackend import EVENTS_CHANNEL, RedisBackend
from app.cache.store import MoveRelayKeys
from app.dimse.move_admission import MoveRouter, Relayed
from app.dimse.received import ReceivedInstance
from app.services.move_relay import MoveRelay
from tests.peers import RedisServer, require_binary

pytestmark = pytest.mark.timeout(30)
GW = "GW"
PACS = frozenset({"pacs"})


class Emitter:
    """The retrieval's side of a MoveSink."""

    def __init__(self) -> None:
        self.items: list[ReceivedInstance] = []
        self.cancelled = False

    def emit(self, item: ReceivedInstance) -> None:
        self.items.append(item)


def instance(sop: str) -> ReceivedInstance:
    return ReceivedInstance(b"DICM" + sop.encode(), "1.2.840.10008.5.1.4.1.1.2", sop,
                            "1.2.840.10008.1.2.1")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_binary("redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis-relay")) as server:
        yield server


@pytest.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    """Two workers' connections to one Redis: the requester's and the receiver's."""
    requester, receiver = RedisBackend(redis_server.url), RedisBackend(redis_server.url)
    await requester.clear()
    try:
        yield requester, receiver
    finally:
        await requester.close()
        await receiver.close()


async def until(predicate: object, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


def parked(waiter: asyncio.Event) -> bool:
    """Whether a task waits on ``waiter`` now (rather than reading the log)."""
    return bool(waiter._waiters)  # type: ignore[attr-defined]


async def parked_waiter(backend: RedisBackend, key: str) -> asyncio.Event:
    """The event a ``wait_events`` call on ``key`` is parked on, once it is."""
    await until(lambda: key in backend._waiters and parked(backend._waiters[key]))
    return backend._waiters[key]


def then(waiter: asyncio.Event, action: Callable[[], None]) -> None:
    """Run ``action`` right after the pub/sub listener sets ``waiter``, in the same step."""
    wake = waiter.set

    def wake_then_act() -> None:
        wake()
        action()

    waiter.set = wake_then_act  # type: ignore[method-assign]


async def late_wake_up(backend: RedisBackend, key: str) -> None:
    """What the last entry's PUBLISH is when the relay has already read that entry: a wake-up
    for ``key`` with nothing new in its log."""
    await backend._redis.publish(EVENTS_CHANNEL, key)


async def test_a_c_move_ending_as_its_relay_is_woken_ends(
        workers: tuple[RedisBackend, RedisBackend]) -> None:
    requester_backend, receiver_backend = workers
    requester, receiver = MoveRelay(requester_backend), MoveRelay(receiver_backend)
    router = MoveRouter()
    requester.attach(router)
    message_id = await requester.reserve_message_id(GW)
    assert message_id is not None
    emitter = Emitter()
    router.register(GW, message_id, emitter, frozenset({"1.1"}),  # type: ignore[arg-type]
                    peer="pacs")
    log_key = MoveRelayKeys.log(GW, message_id)
    before = asyncio.all_tasks()
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    relays: list[asyncio.Task[None]] = []

    async def c_move() -> None:
        async with requester.running(GW, message_id):
            relays.extend(asyncio.all_tasks() - before - {asyncio.current_task()})
            assert await receiver.forward(instance("1.1"), GW, message_id, PACS, "PACS",
                                          "10.0.0.7") is Relayed.RELAYED
            await until(lambda: len(emitter.items) == 1)  # relayed; the relay waits for more
            then(await parked_waiter(requester_backend, log_key),
                 lambda: woken.done() or woken.set_result(None))
            await late_wake_up(receiver_backend, log_key)
            await woken  # the C-MOVE ends in the step right after the wake-up

    ending = asyncio.ensure_future(c_move())
    done, _ = await asyncio.wait({ending}, timeout=3)  # (no cancellation that could unstick it)
    hung = ending not in done
    if hung:
        ending.cancel()
    assert not hung, "leaving MoveRelay.running waited for a relay that lost its cancellation"
    ending.result()
    [relay] = relays
    assert relay.done()  # cancelled, or stopped at its next look at its stop flag
    assert emitter.items == [instance("1.1")]


async def test_a_waiter_cancelled_as_its_wake_up_lands_is_cancelled(
        workers: tuple[RedisBackend, RedisBackend]) -> None:
    """The same race one level down: ``wait_events`` must never turn a cancellation that
    arrives with its wake-up into a normal return (or into waiting on)."""
    waiting_backend, writer = workers
    key = "dwg:t:ev:{race}"
    task = asyncio.ensure_future(waiting_backend.wait_events(key, 0, 10.0))
    then(await parked_waiter(waiting_backend, key), task.cancel)
    await late_wake_up(writer, key)
    await asyncio.wait({task}, timeout=3)
    assert task.cancelled(), task
