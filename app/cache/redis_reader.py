"""Pipelined GETs of large values on a raw Redis connection (RESP2), for the warm read path.

redis-py reads a 525 KB instance through a stream reader: each socket read becomes a bytes
object, is appended to the reader's buffer, cut out, then cut again to drop the CRLF, plus
a health check, a timeout and a write per command (about 35 % of a warm study retrieval).
Here every reply lands in one receive buffer and leaves as bytes with one copy, GETs issued in
the same event-loop turn go out in one write, and replies are matched to their callers in
order on one shared connection. Only plain TCP and Unix-socket, non-Cluster URLs use it (see
``supports``); everything else keeps redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from app.cache.backend import CacheUnavailable
from app.cache.resp import encode_command

_INITIAL_BUFFER = 256 * 1024
_MIN_FREE = 64 * 1024
_MAX_LINE = 64 * 1024  # a status, error or length line longer than this is not Redis


class RespError(Exception):
    """An error reply (``-ERR ...``): the command failed, the connection is fine."""


def supports(url: str) -> bool:
    """Whether ``url`` is a Redis URL this reader can connect to by itself: plain TCP
    (``redis://``) or a Unix socket (``unix://``); TLS is left to redis-py."""
    return urlsplit(url).scheme in ("redis", "unix")


class _ReplyProtocol(asyncio.BufferedProtocol):
    """Frames RESP2 replies into one buffer and hands each to the oldest waiting future."""

    def __init__(self, max_value: int) -> None:
        self._max_value = max_value
        self._buf = bytearray(_INITIAL_BUFFER)
        self._start = self._end = 0
        self._need = 0  # bytes the reply being read needs in all, once known
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outgoing: list[bytes] = []  # commands of this loop turn, written together
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or CacheUnavailable(f"redis: connection lost ({exc or 'closed'})")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def get_buffer(self, sizehint: int) -> memoryview:
        pending = self._end - self._start
        wanted = max(_MIN_FREE, self._need - pending)
        if len(self._buf) - self._end < wanted:
            if len(self._buf) - pending >= wanted:  # compact in place
                self._buf[:pending] = self._buf[self._start:self._end]
            else:
                fresh = bytearray(max(pending + wanted, len(self._buf)))
                fresh[:pending] = self._buf[self._start:self._end]
                self._buf = fresh
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        try:
            while self._start < self._end and self._reply():
                pass
        except CacheUnavailable as exc:
            self.lost = exc
            if self.transport is not None:
                self.transport.abort()
            return
        if self._start == self._end:
            self._start = self._end = 0

    def _reply(self) -> bool:
        """Parse one complete reply at the start of the buffer; False if it is incomplete."""
        buf, start = self._buf, self._start
        line_end = buf.find(b"\r\n", start, min(self._end, start + _MAX_LINE))
        if line_end < 0:
            if self._end - start >= _MAX_LINE:
                raise CacheUnavailable("redis: reply line too long")
            return False
        kind = buf[start]
        value: Any
        if kind == 0x24:  # $ bulk string
            length = int(buf[start + 1:line_end])
            if length < 0:
                value, end = None, line_end + 2
            else:
                if length > self._max_value:
                    raise CacheUnavailable(f"redis: a value of {length} bytes is over the cap")
                end = line_end + 2 + length + 2
                if self._end < end:
                    self._need = end - start
                    return False
                value = bytes(memoryview(buf)[line_end + 2:end - 2])
        elif kind in (0x2B, 0x3A):  # + status, : integer
            value, end = bytes(buf[start + 1:line_end]), line_end + 2
        elif kind == 0x2D:  # - error
            value = RespError(buf[start + 1:line_end].decode("utf-8", "replace"))
            end = line_end + 2
        else:
            raise CacheUnavailable(f"redis: unexpected reply type {chr(kind)!r}")
        self._start, self._need = end, 0
        if not self.waiting:
            raise CacheUnavailable("redis: a reply nobody asked for")
        future = self.waiting.popleft()
        if not future.done():  # a caller that gave up still has its reply consumed
            if isinstance(value, RespError):
                future.set_exception(value)
            else:
                future.set_result(value)
        return True


class RedisBulkReader:
    """GET and MGET-like reads of large values over one pipelined connection."""

    def __init__(self, url: str, *, timeout: float, max_value: int) -> None:
        parts = urlsplit(url)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        # unix:///run/redis.sock?db=1 (redis-py's form) or redis://host:port/1
        self._socket_path = unquote(parts.path) if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        db = (parse_qs(parts.query).get("db", ["0"])[0] if self._socket_path is not None
              else parts.path.lstrip("/"))
        self._db = int(db) if db else 0
        self._timeout = timeout
        self._max_value = max_value
        self._protocol: _ReplyProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _ReplyProtocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            loop = asyncio.get_running_loop()
            fresh = _ReplyProtocol(self._max_value)
            try:
                async with asyncio.timeout(self._timeout):
                    if self._socket_path is not None:
                        await loop.create_unix_connection(lambda: fresh, self._socket_path)
                    else:
                        await loop.create_connection(lambda: fresh, self._host, self._port)
                    hello: list[bytes] = []
                    if self._password is not None:
                        hello.append(encode_command(b"AUTH", *((self._username.encode(),)
                                                       if self._username else ()),
                                           self._password.encode()))
                    if self._db:
                        hello.append(encode_command(b"SELECT", str(self._db).encode()))
                    replies = [self._queue(fresh, command) for command in hello]
                    await asyncio.gather(*replies)
            except (OSError, TimeoutError, RespError) as exc:
                if fresh.transport is not None:
                    fresh.transport.abort()
                raise CacheUnavailable(f"redis: cannot connect for reads: {exc}") from exc
            self._protocol = fresh
            return fresh

    @staticmethod
    def _queue(protocol: _ReplyProtocol, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command``; commands queued in the same loop turn leave in one write."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append(future)
        if not protocol.outgoing:
            loop.call_soon(RedisBulkReader._flush, protocol)
        protocol.outgoing.append(command)
        return future

    @staticmethod
    def _flush(protocol: _ReplyProtocol) -> None:
        data, protocol.outgoing = b"".join(protocol.outgoing), []
        if protocol.transport is not None and protocol.lost is None:
            protocol.transport.write(data)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where missing), pipelined; CacheUnavailable when Redis
        cannot answer in time (the connection is then dropped: replies would be out of step)."""
        protocol = await self._connection()
        futures = [self._queue(protocol, encode_command(b"GET", key.encode())) for key in keys]
        try:
            async with asyncio.timeout(self._timeout):
                values = await asyncio.gather(*futures)
        except TimeoutError:
            self._drop(protocol)
            raise CacheUnavailable("redis: no answer in time") from None
        except RespError as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc
        return list(values)

    async def get(self, key: str) -> bytes | None:
        """One value (None if missing)."""
        return (await self.get_many([key]))[0]

    def _drop(self, protocol: _ReplyProtocol) -> None:
        if protocol.transport is not None:
            protocol.transport.abort()
        if self._protocol is protocol:
            self._protocol = None

    def close(self) -> None:
        """Close the connection (pending reads fail with CacheUnavailable)."""
        if self._protocol is not None:
            self._drop(self._protocol)
