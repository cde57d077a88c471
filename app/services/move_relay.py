"""Cross-worker delivery of C-MOVE sub-operations through the shared cache.

With several worker processes sharing the Storage SCP port (SO_REUSEPORT), the PACS's
association may land on a worker that did not ask for the instances. That worker publishes each
such instance under the C-MOVE's (Move Originator AE Title, Message ID); the requesting worker
relays them into its retrieval. Message IDs are reserved in the shared cache so that they are
unique among all workers using the same AE title (PS3.7 9.1.1.1).

Only instances from an association the Storage SCP admitted (a configured C-MOVE PACS, see
``app.dimse.move_admission``) are published, labelled with the PACS names it was admitted as;
the requesting worker applies the same C-STORE admission (that PACS's C-MOVE, an expected
instance, no duplicate) before relaying one into its retrieval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.cache.backend import CacheBackend
from app.cache.memory import MemoryBackend
from app.cache.resilient import ResilientBackend
from app.dimse.move_admission import MoveRouter, log_refusal
from app.dimse.received import ReceivedInstance

log = logging.getLogger(__name__)
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
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
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def shared(self) -> bool:
        """True when the backend is shared between processes (Redis) and answering now: while
        Redis is down nothing can be relayed, so unrouted instances are refused rather than
        acknowledged and lost."""
        if self._backend is None or isinstance(self._backend, MemoryBackend):
            return False
        return not isinstance(self._backend, ResilientBackend) or self._backend.healthy

    def attach(self, router: MoveRouter, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to this process's router and event loop (in the app's lifespan)."""
        self._router = router
        self._loop = loop

    @staticmethod
    def _key(originator: str, message_id: int) -> str:
        return f"dwg:mv:{{{originator.strip()}:{message_id}}}"

    # -- the worker that received an instance nobody here asked for ----------------------------

    def forward(self, item: ReceivedInstance, originator: str | None, message_id: int | None,
                peers: frozenset[str], calling: str, address: str) -> int:
        """Publish an unrouted instance from an association admitted as ``peers`` (called in a
        Storage SCP thread); the C-STORE status (the Storage SCP logs refusals)."""
        relaying = self._backend is not None and not isinstance(self._backend, MemoryBackend)
        if not peers or not relaying or self._loop is None or not originator or message_id is None:
            return CANNOT_UNDERSTAND  # nobody else can want it
        if not self.shared:
            return OUT_OF_RESOURCES  # the shared cache is down now: a transient refusal
        future = asyncio.run_coroutine_threadsafe(
            self._publish(_encode(item, peers, calling, address), item.sop_instance_uid,
                          originator, int(message_id)), self._loop)
        try:
            future.result(timeout=30)
        except Exception:
            log.exception("could not relay %s to the requesting worker", item.sop_instance_uid)
            return OUT_OF_RESOURCES
        return 0x0000

    async def _publish(self, blob: bytes, sop: str, originator: str, message_id: int) -> None:
        assert self._backend is not None
        key = self._key(originator, message_id)
        await self._backend.set(f"{key}:{sop}", blob, self._ttl)
        await self._backend.append_event(key, sop, self._ttl)

    # -- the worker whose C-MOVE it is ---------------------------------------------------------

    async def reserve_message_id(self, originator: str) -> int | None:
        """A Message ID no other worker is using for a C-MOVE now (None: not shared)."""
        if not self.shared:
            return None
        assert self._backend is not None
        for _ in range(32):
            candidate = random.randint(1, 65535)
            token = await self._backend.acquire_lock(f"{self._key(originator, candidate)}:id",
                                                     self._ttl)
            if token is not None:
                return candidate
        return None

    async def relay(self, originator: str, message_id: int) -> None:
        """Deliver instances other workers publish for this C-MOVE until cancelled."""
        assert self._backend is not None and self._router is not None
        key = self._key(originator, message_id)
        position = 0
        while True:
            events = await self._backend.wait_events(key, position, 1.0)
            for sop in events:
                position += 1
                blob = await self._backend.get(f"{key}:{sop}")
                if blob is None:
                    continue
                await self._backend.delete(f"{key}:{sop}")
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
        """Context for a C-MOVE: relays published instances while it runs."""
        if message_id is None or not self.shared:
            yield
            return
        task = asyncio.get_running_loop().create_task(self.relay(originator, message_id))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
