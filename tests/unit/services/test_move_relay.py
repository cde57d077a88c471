"""MoveRelay: an instance of a C-MOVE that reached another worker's storage SCP is published
through the shared cache and handed to the C-MOVE that asked for it, under the same C-STORE
admission (that PACS, expected instance, no duplicate); Message IDs are unique across workers;
nothing is acknowledged that cannot be relayed.

Two MoveRelay objects on one shared backend stand for two workers. The shared backend is a
ResilientBackend over in-process memory: the type the app builds around Redis, so ``shared``
and ``healthy`` behave as they do in production."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

import pytest

from app.cache.memory import MemoryBackend
from app.cache.resilient import ResilientBackend
from app.dimse.move_admission import MoveRouter, Relayed
from app.dimse.received import ReceivedInstance
from app.services import move_relay
from app.services.move_relay import MoveRelay

pytestmark = pytest.mark.timeout(20)

GW = "GW"
PACS = frozenset({"pacs"})


class RecordingEmitter:
    """The consumer side a MoveSink hands instances to."""

    def __init__(self) -> None:
        self.items: list[ReceivedInstance] = []
        self._lock = threading.Lock()
        self.cancelled = False

    def emit(self, item: ReceivedInstance) -> None:
        with self._lock:
            self.items.append(item)


class Unreachable(MemoryBackend):
    """A primary that does not answer PING (Redis down)."""

    async def ping(self) -> bool:
        return False


class RefusesWrites(MemoryBackend):
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        raise RuntimeError("write refused")


def instance(sop: str) -> ReceivedInstance:
    # NUL bytes in the data: the encoded form separates its header fields with NUL.
    return ReceivedInstance(b"\x00DICM\x00" + sop.encode(), "1.2.840.10008.5.1.4.1.1.2", sop,
                            "1.2.840.10008.1.2.1")


@pytest.fixture
async def shared() -> AsyncIterator[ResilientBackend]:
    backend = ResilientBackend(MemoryBackend(1 << 20), MemoryBackend(1 << 20),
                               retry_interval=3600)
    yield backend
    await backend.close()


def worker(backend: object) -> tuple[MoveRelay, MoveRouter]:
    relay = MoveRelay(backend, ttl=30)  # type: ignore[arg-type]
    router = MoveRouter()
    relay.attach(router)
    return relay, router


async def forward(relay: MoveRelay, item: ReceivedInstance, message_id: int | None,
                  peers: frozenset[str] = PACS, originator: str | None = GW) -> Relayed:
    """What a storage SCP does with an instance no local C-MOVE wants."""
    return await relay.forward(item, originator, message_id, peers, "PACS", "10.0.0.7")


async def until(predicate: object, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_shared_only_for_a_cache_other_workers_see_and_while_it_answers() -> None:
    assert not MoveRelay(None).shared
    assert not MoveRelay(MemoryBackend(1000)).shared
    backend = ResilientBackend(Unreachable(1000), MemoryBackend(1000), retry_interval=3600)
    relay = MoveRelay(backend)
    assert relay.shared
    assert not await backend.check()  # the primary stops answering
    assert not relay.shared
    await backend.close()


async def test_an_instance_reaching_another_worker_is_relayed_to_its_c_move(
        shared: ResilientBackend) -> None:
    requester, router = worker(shared)
    receiver, _ = worker(shared)
    message_id = await requester.reserve_message_id(GW)
    assert message_id is not None
    emitter = RecordingEmitter()
    sink = router.register(GW, message_id, emitter, frozenset({"1.1", "1.2"}), peer="pacs")  # type: ignore[arg-type]
    async with requester.running(GW, message_id):
        assert await forward(receiver, instance("1.1"), message_id) is Relayed.RELAYED
        assert await forward(receiver, instance("1.2"), message_id) is Relayed.RELAYED
        await until(lambda: len(emitter.items) == 2)
    assert emitter.items == [instance("1.1"), instance("1.2")]  # bytes intact, in order
    assert sink.received == 2
    key = f"dwg:mv:{{{GW}:{message_id}}}"
    assert await shared.get(f"{key}:1.1") is None  # taken out of the cache once relayed


async def test_relayed_instances_pass_the_same_admission(
        shared: ResilientBackend, caplog: pytest.LogCaptureFixture) -> None:
    requester, router = worker(shared)
    receiver, _ = worker(shared)
    message_id = await requester.reserve_message_id(GW)
    emitter = RecordingEmitter()
    router.register(GW, message_id or 0, emitter, frozenset({"1.1"}), peer="pacs")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, "app.dimse.move_admission"):
        async with requester.running(GW, message_id):
            # Published (the receiving worker cannot judge), refused by the requester:
            await forward(receiver, instance("1.1"), message_id, peers=frozenset({"other"}))
            await forward(receiver, instance("1.9"), message_id)  # not expected
            await forward(receiver, instance("1.1"), message_id)  # admitted
            await forward(receiver, instance("1.1"), message_id)  # a duplicate
            await until(lambda: caplog.text.count("relayed by another worker") == 3)
    assert emitter.items == [instance("1.1")]
    assert "its C-MOVE was sent to another PACS" in caplog.text
    assert "not one of the instances its C-MOVE retrieves" in caplog.text
    assert "duplicate of an instance already received" in caplog.text


async def test_nothing_is_relayed_after_the_c_move_ends(shared: ResilientBackend) -> None:
    requester, router = worker(shared)
    receiver, _ = worker(shared)
    message_id = await requester.reserve_message_id(GW)
    emitter = RecordingEmitter()
    router.register(GW, message_id or 0, emitter, frozenset({"1.1"}), peer="pacs")  # type: ignore[arg-type]
    before = asyncio.all_tasks()
    async with requester.running(GW, message_id):
        relaying = asyncio.all_tasks() - before
        assert len(relaying) == 1
    assert all(task.done() for task in relaying)
    await forward(receiver, instance("1.1"), message_id)
    await asyncio.sleep(0.1)
    assert emitter.items == []


async def test_running_without_a_message_id_relays_nothing(shared: ResilientBackend) -> None:
    requester, _ = worker(shared)
    before = asyncio.all_tasks()
    async with requester.running(GW, None):
        assert asyncio.all_tasks() == before


@pytest.mark.parametrize(("peers", "originator", "message_id"), [
    (frozenset(), GW, 7),  # the association was not admitted as any PACS
    (PACS, None, 7),  # no Move Originator: nothing to route by
    (PACS, GW, None),
])
async def test_forward_refuses_what_no_worker_can_want(
        shared: ResilientBackend, peers: frozenset[str], originator: str | None,
        message_id: int | None) -> None:
    relay = worker(shared)[0]
    outcome = await forward(relay, instance("1.1"), message_id, peers, originator)
    assert outcome is Relayed.UNWANTED
    assert await shared.keys("dwg:mv:*") == []


async def test_forward_with_a_process_local_cache_refuses() -> None:
    relay, _ = worker(MemoryBackend(1 << 20))
    assert await forward(relay, instance("1.1"), 7) is Relayed.UNWANTED


async def test_forward_while_the_shared_cache_is_down_is_a_transient_refusal() -> None:
    backend = ResilientBackend(Unreachable(1000), MemoryBackend(1 << 20), retry_interval=3600)
    relay, _ = worker(backend)
    await backend.check()
    assert await forward(relay, instance("1.1"), 7) is Relayed.UNAVAILABLE
    assert await backend.fallback.keys("dwg:mv:*") == []  # not kept where nobody can see it
    await backend.close()


async def test_forward_that_cannot_publish_refuses_and_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    backend = ResilientBackend(RefusesWrites(1000), MemoryBackend(1000), retry_interval=3600)
    relay, _ = worker(backend)
    with caplog.at_level(logging.ERROR, "app.services.move_relay"):
        assert await forward(relay, instance("1.1"), 7) is Relayed.UNAVAILABLE
    assert "could not relay 1.1" in caplog.text
    await backend.close()


async def test_message_ids_are_unique_among_workers(
        shared: ResilientBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([7, 7, 9, 7])
    monkeypatch.setattr(move_relay.random, "randint", lambda a, b: next(draws))
    first, second = worker(shared)[0], worker(shared)[0]
    assert await first.reserve_message_id(GW) == 7
    assert await second.reserve_message_id(GW) == 9  # 7 is taken: drawn again
    assert await second.reserve_message_id("OTHER_GW") == 7  # IDs are per originator AE


async def test_message_id_reservation_gives_up_when_every_draw_is_taken(
        shared: ResilientBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(move_relay.random, "randint", lambda a, b: 7)
    relay = worker(shared)[0]
    assert await relay.reserve_message_id(GW) == 7
    assert await relay.reserve_message_id(GW) is None


async def test_no_message_id_without_a_shared_cache() -> None:
    assert await MoveRelay(MemoryBackend(1000)).reserve_message_id(GW) is None
    assert await MoveRelay(None).reserve_message_id(GW) is None
