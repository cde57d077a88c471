"""A distributed semaphore in Redis: the association budget every worker and replica shares.

Per PACS, in one Cluster slot (hash tag ``{peer}``):

- ``holders``: a sorted set of lease ids scored by their expiry (Redis time, ms). A holder renews
  its leases every third of ``lease_ttl``; a holder that dies (SIGKILL, a lost replica) stops
  renewing and its leases drop out once expired, so its slots come back by themselves.
- ``queue``: waiting lease ids scored by a ticket (INCR of ``tickets``): the oldest waiter is
  served first. A waiter is granted a lease only when its rank in the queue is below the number
  of free slots, so a newcomer never overtakes an older waiter.
- ``alive``: waiting ids scored by when their waiter must have asked again; a waiter that died
  leaves the queue after ``WAITER_TTL_S``.

Acquiring is one Lua script (drop the expired, join the queue, take a slot if it is our turn).
Waiters sleep until a PUBLISH on ``dwg:assoc`` says a lease was released (or, at the latest,
``RECHECK_S``: the only wake-up on a Redis Cluster, and the one that notices expired leases).
A waiter also publishes that it waits, so processes holding idle associations close them.

Redis unreachable: the gateway must not stop, so a lease is granted at once without Redis (each
process keeps its own ``max_associations`` limit) and this is logged once, until Redis answers.
This class implements app.dimse.budget.AssociationBudget (a protocol: the DIMSE layer never
imports the cache package).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.cache.redisbackend import ERRORS

log = logging.getLogger(__name__)
CHANNEL = "dwg:assoc"
RECHECK_S = 1.0  # longest sleep of a waiter between two tries (no fast polling)
WAITER_TTL_S = 5.0  # a waiter that has not tried again for this long has left the queue
KEY_TTL_MS = 24 * 3600 * 1000  # the keys of a PACS nobody used for a day disappear
REDIS_ERRORS = (*ERRORS, redis_errors.ResponseError)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_DROP_EXPIRED = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
"""
# KEYS: holders, queue, alive, tickets. ARGV: id, limit, lease ms, waiter ms, key ttl ms.
# Returns 1 when the lease is granted (or renewed), else 0 (queued).
_ACQUIRE = _NOW + _DROP_EXPIRED + """
local id, limit = ARGV[1], tonumber(ARGV[2])
local lease_ms, waiter_ms, key_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, key_ms) end
if redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], now + lease_ms, id)
  return 1
end
if not redis.call('ZSCORE', KEYS[2], id) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
end
local free = limit - redis.call('ZCARD', KEYS[1])
if free > 0 and redis.call('ZRANK', KEYS[2], id) < free then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[1], now + lease_ms, id)
  return 1
end
redis.call('ZADD', KEYS[3], now + waiter_ms, id)
return 0
"""
# KEYS: holders, queue, alive. ARGV: id. Leaves the budget whatever the id was doing.
_RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""
# KEYS: holders, queue, alive. ARGV: lease ms, ids... Returns {waiting, lost ids...}.
_RENEW = _NOW + _DROP_EXPIRED + """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
table.insert(lost, 1, redis.call('ZCARD', KEYS[2]))
return lost
"""


class RedisLease:
    """One lease id held in Redis; ``release`` removes it in the background."""

    def __init__(self, budget: RedisAssociationBudget, peer: str, holder: str) -> None:
        self._budget = budget
        self.peer = peer
        self.holder = holder
        self._released = False

    def release(self) -> None:
        """Give the slot back (once)."""
        if not self._released:
            self._released = True
            self._budget.release(self.peer, self.holder)


class LocalLease:
    """A lease granted while Redis was unreachable: only the process's own limit applied."""

    def release(self) -> None:
        """Nothing to give back."""


class RedisAssociationBudget:
    """Per-PACS association limits shared through Redis by every worker and replica."""

    def __init__(self, url: str, *, cluster: bool = False, lease_ttl: float = 15.0,
                 prefix: str = "dwg:", socket_timeout: float = 2.0) -> None:
        common: dict[str, Any] = {"socket_timeout": socket_timeout,
                                  "socket_connect_timeout": socket_timeout}
        self._cluster = cluster
        self._redis: Redis | RedisCluster = (RedisCluster.from_url(url, **common) if cluster
                                             else Redis.from_url(url, **common))
        self._prefix = prefix
        self._lease_ms = int(lease_ttl * 1000)
        self._renew_every = lease_ttl / 3
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._held: dict[str, set[str]] = {}
        self._wakers: dict[str, set[asyncio.Event]] = {}
        self._waiting_elsewhere: dict[str, bool] = {}
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.up = True

    # -- keys and state ------------------------------------------------------------------------
    def _keys(self, peer: str) -> list[str]:
        base = f"{self._prefix}assoc:{{{peer}}}"
        return [f"{base}:holders", f"{base}:queue", f"{base}:alive", f"{base}:tickets"]

    def _went_down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            log.warning("association budget: Redis does not answer (%s); each process keeps "
                        "to its own max_associations until it does", exc or type(exc).__name__)

    def _came_back(self) -> None:
        if not self.up:
            self.up = True
            log.warning("association budget: Redis answers again; max_associations holds "
                        "across all processes")

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop any more (shutdown): the lease expires by itself
            coro.close()
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _ensure_background(self) -> None:
        loop = asyncio.get_running_loop()
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew_forever())
        if not self._cluster and (self._listener is None or self._listener.done()):
            self._listener = loop.create_task(self._listen())

    # -- the AssociationBudget protocol --------------------------------------------------------
    async def acquire(self, peer: str, limit: int, timeout: float
                      ) -> RedisLease | LocalLease | None:
        """A lease for one association to ``peer`` once it is this waiter's turn and fewer than
        ``limit`` are held; None after ``timeout`` seconds."""
        self._ensure_background()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        holder = f"{self._owner}:{secrets.token_hex(6)}"
        keys = self._keys(peer)
        event = asyncio.Event()
        self._wakers.setdefault(peer, set()).add(event)
        granted = announced = False
        try:
            while True:
                event.clear()
                try:
                    granted = bool(await self._acquire(
                        keys=keys, args=[holder, limit, self._lease_ms,
                                         int(WAITER_TTL_S * 1000), KEY_TTL_MS]))
                except REDIS_ERRORS as exc:
                    self._went_down(exc)
                    return LocalLease()
                self._came_back()
                if granted:
                    self._held.setdefault(peer, set()).add(holder)
                    return RedisLease(self, peer, holder)
                if not announced:  # holders elsewhere: close your idle associations
                    announced = True
                    self._spawn(self._publish(f"wanted:{peer}"))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, RECHECK_S))
        finally:
            self._wakers[peer].discard(event)
            if not granted:  # leave the queue (and any lease a cancelled call was granted)
                self._spawn(self._leave(peer, holder, publish=False))

    def contended(self, peer: str) -> bool:
        """Whether another process waits for a lease of ``peer`` (as last seen)."""
        return self._waiting_elsewhere.get(peer, False)

    def on_contended(self, peer: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a waiter for ``peer`` appears."""
        self._callbacks.setdefault(peer, []).append(callback)

    # -- release, renewal, wake-ups ------------------------------------------------------------
    def release(self, peer: str, holder: str) -> None:
        """Give ``holder``'s lease back in the background and wake the waiters."""
        self._held.get(peer, set()).discard(holder)
        self._spawn(self._leave(peer, holder, publish=True))

    async def _leave(self, peer: str, holder: str, *, publish: bool) -> None:
        keys = self._keys(peer)
        try:
            removed = await self._release(keys=keys[:3], args=[holder])
        except REDIS_ERRORS as exc:  # the lease expires by itself
            self._went_down(exc)
            return
        del publish, removed  # a released lease or a queue place given up: others move up
        await self._publish(f"released:{peer}")

    async def _publish(self, message: str) -> None:
        if self._cluster:  # no pub/sub on a Cluster: waiters try again every RECHECK_S
            return
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.publish(CHANNEL, message)

    def _mark_contended(self, peer: str, waiting: bool) -> None:
        before = self._waiting_elsewhere.get(peer, False)
        self._waiting_elsewhere[peer] = waiting
        if waiting and not before:
            for callback in self._callbacks.get(peer, []):
                try:
                    callback()
                except Exception:  # one pool's trouble must not stop the others' wake-up
                    log.exception("association budget: contention callback failed")

    async def _renew_forever(self) -> None:
        """Extend every lease this process holds, every third of the lease time; notes which
        PACS have waiters, and logs a lease lost (this process stalled past its expiry)."""
        while True:
            await asyncio.sleep(self._renew_every)
            # PACS with leases here, and those last seen contended (to see the queue empty).
            peers = set(self._held) | {p for p, w in self._waiting_elsewhere.items() if w}
            for peer in peers:
                await self._renew_peer(peer, self._held.setdefault(peer, set()))

    async def _renew_peer(self, peer: str, holders: set[str]) -> None:
        ids = sorted(holders)
        try:
            answer = await self._renew(keys=self._keys(peer)[:3], args=[self._lease_ms, *ids])
        except REDIS_ERRORS as exc:
            self._went_down(exc)
            return
        self._came_back()
        waiting, lost = int(answer[0]), [bytes(x).decode() for x in answer[1:]]
        for holder in lost:
            if holder in holders:
                holders.discard(holder)
                log.warning("association budget: a lease for PACS %s expired before it was "
                            "renewed (the process stalled?); its association stays open", peer)
        self._mark_contended(peer, waiting > 0)

    async def _listen(self) -> None:
        """Wake local waiters when a lease is released anywhere; note waiters elsewhere."""
        assert isinstance(self._redis, Redis)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    kind, _, peer = bytes(message["data"]).decode().partition(":")
                    if kind == "released":
                        for event in self._wakers.get(peer, ()):
                            event.set()
                    elif kind == "wanted":
                        self._mark_contended(peer, True)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: waiters try again every RECHECK_S meanwhile
                log.debug("association budget listener lost its connection", exc_info=True)
                await asyncio.sleep(RECHECK_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        """Stop the background tasks and give back every lease still held."""
        for task in (self._renewer, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for peer, holders in list(self._held.items()):
            for holder in list(holders):
                self.release(peer, holder)
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=2)
        with contextlib.suppress(Exception):
            await self._redis.aclose()
