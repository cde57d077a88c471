"""Cross-worker delivery of C-MOVE sub-operations through the shared cache.

With several worker processes sharing the Storage SCP port (SO_REUSEPORT), the PACS's
association may land on a worker that did not ask for the instances. That worker publishes each
such instance under the C-MOVE's (Move Originator AE Title, Message ID); the requesting worker
relays them into its retrieval. Message IDs are reserved in the shared cache so that they are
unique among all workers using the same AE title (PS3.7 9.1.1.1).

``forward`` runs on the event loop (the asyncio engine's storage SCP awaits it; pynetdicom's
waits for it from its thread through ``app.dimse.bridge.run_on_loop``) and says what became of
the instance (``Relayed``); the storage SCP turns that into a C-STORE status
(``app.dimse.move_admission.unrouted_status``). Keys are ``app.cache.store.MoveRelayKeys``.

Only instances from an association the Storage SCP admitted (a configured C-MOVE PACS, see
``app.dimse.move_admission``) are published, labelled with the PACS names it was admitted as;
the requesting worker applies the same C-STORE admission (that PACS's C-MOVE, an expected
instance, no duplicate) before relaying one into its retrieval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.cache.backend import CacheBackend
from app.cache.store import MoveRelayKeys
from app.dimse.move_admission import MoveRouter, Relayed, log_refusal
from app.dimse.received import ReceivedInstance

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 30.0
RELAY_POLL_S = 0.25  # how long the relay waits on its log before looking at its stop flag
RELAY_STOP_S = 2.0  # how long leaving a C-MOVE waits for its relay to end
_SEP = b"\x00"


def _encode(item: ReceivedInstance, peers: frozenset[str], calling: str, address: str) -> bytes:
    head = "\x00".join((item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax,
                        ",".join(sorted(peers)), calling, address, ""))
    return head.encode() + item.data


def _decode(blob: bytes) -> tuple[ReceivedInstance, frozenset[str], str, str]:
    cls, sop, ts, peers, calling, address, data = blob.split(_SEP, 6)
    return (ReceivedInstance(data, cls.decode(), sop.decode(), ts.decode()),
            frozenset(p for p in peers.decode().split(",") if p), calling.decode(),
            address.decode())


class MoveRelay:
    """Publishes unrouted sub-operations and relays published ones to local C-MOVEs."""

    def __init__(self, backend: CacheBackend | None, ttl: float = 300.0) -> None:
        self._backend = backend
        self._ttl = ttl
        self._router: MoveRouter | None = None

    @property
    def relaying(self) -> bool:
        """Whether other workers can be reached at all: the cache is shared between processes."""
        return self._backend is not None and self._backend.spans_processes

    @property
    def shared(self) -> bool:
        """True when the backend is shared between processes (Redis) and answering now: while
        Redis is down nothing can be relayed, so unrouted instances are refused rather than
        acknowledged and lost."""
        return self._backend is not None and self._backend.shared

    def attach(self, router: MoveRouter) -> None:
        """Bind to this process's router (in the app's lifespan)."""
        self._router = router

    # -- the worker that received an instance nobody here asked for ----------------------------

    async def forward(self, item: ReceivedInstance, originator: str | None,
                      message_id: int | None, peers: frozenset[str], calling: str,
                      address: str) -> Relayed:
        """Publish an unrouted instance from an association admitted as ``peers`` for the
        worker whose C-MOVE it is (on the event loop; the storage SCP turns the outcome into
        a C-STORE status and logs refusals)."""
        if not peers or not self.relaying or not originator or message_id is None:
            return Relayed.UNWANTED  # nobody else can want it
        if not self.shared:
            return Relayed.UNAVAILABLE  # the shared cache is down now: a transient refusal
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._publish(_encode(item, peers, calling, address),
                                    item.sop_instance_uid, originator, int(message_id))
        except Exception:
            log.exception("could not relay %s to the requesting worker", item.sop_instance_uid)
            return Relayed.UNAVAILABLE
        return Relayed.RELAYED

    async def _publish(self, blob: bytes, sop: str, originator: str, message_id: int) -> None:
        assert self._backend is not None
        entry = f"{sop}/{secrets.token_hex(4)}"  # one entry per delivery, duplicates included
        await self._backend.set(MoveRelayKeys.instance(originator, message_id, entry), blob,
                                self._ttl)
        await self._backend.append_event(MoveRelayKeys.log(originator, message_id), entry,
                                         self._ttl)

    # -- the worker whose C-MOVE it is ---------------------------------------------------------

    async def reserve_message_id(self, originator: str) -> int | None:
        """A Message ID no other worker is using for a C-MOVE now (None: not shared)."""
        if not self.shared:
            return None
        assert self._backend is not None
        for _ in range(32):
            candidate = random.randint(1, 65535)
            token = await self._backend.acquire_lock(
                MoveRelayKeys.message_id(originator, candidate), self._ttl)
            if token is not None:
                return candidate
        return None

    async def relay(self, originator: str, message_id: int, stop: asyncio.Event) -> None:
        """Deliver instances other workers publish for this C-MOVE until ``stop`` is set."""
        assert self._backend is not None and self._router is not None
        key = MoveRelayKeys.log(originator, message_id)
        position = 0
        while not stop.is_set():
            events = await self._backend.wait_events(key, position, RELAY_POLL_S)
            for entry in events:
                if stop.is_set():
                    return
                position += 1
                published = MoveRelayKeys.instance(originator, message_id, entry)
                blob = await self._backend.get(published)
                if blob is None:
                    continue
                await self._backend.delete(published)
                item, peers, calling, address = _decode(blob)
                decision = self._router.admit_store(peers, originator, message_id,
                                                    item.sop_instance_uid)
                if decision.sink is None:
                    log_refusal(calling, address, item.sop_instance_uid,
                                f"relayed by another worker: {decision.reason}")
                    continue
                await asyncio.to_thread(decision.sink.deliver, item)

    @asynccontextmanager
    async def running(self, originator: str, message_id: int | None) -> AsyncIterator[None]:
        """Context for a C-MOVE: relays published instances while it runs. On leaving, the
        relay is told to stop and cancelled, and waited for at most ``RELAY_STOP_S``: on
        Python 3.11 a cancellation that lands just as an awaited call completes can be lost
        (``asyncio.wait_for``, used inside redis-py, then returns normally), so the relay
        also stops at its next look at ``stop``, and the C-MOVE never waits on it unbounded."""
        if message_id is None or not self.shared:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self.relay(originator, message_id, stop), name=f"relay {originator}:{message_id}")
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=RELAY_STOP_S)
            if not done:
                log.warning("the relay of C-MOVE %s:%d did not stop within %.0f s",
                            originator, message_id, RELAY_STOP_S)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("the relay of C-MOVE %s:%d failed: %s", originator, message_id,
                            task.exception())
