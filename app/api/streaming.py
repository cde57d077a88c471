"""Streaming responses that a failure after the headers cuts short, logged as one warning.

Once the status line is sent, an error can only end the response. The part being written is
complete; the closing multipart delimiter (or JSON ``]``) is never sent and the connection is
closed without ending the chunked body (an exception leaves the app), so any client can tell
the response is incomplete (PS3.18 8.6.1.2). That is an expected outcome of a PACS failing
mid-way, not a gateway bug: it is logged once, at WARNING, naming the request, the PACS and the
parts sent, without tracebacks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.errors import GatewayError

log = logging.getLogger(__name__)
SMALL_CHUNK = 64 * 1024  # chunks below this are joined with their neighbours (a cheap copy)
HELD_TRAILER = 16  # a part's last chunk up to this size goes out with what follows it

class ResponseCutShort(Exception):  # noqa: N818 - it is an outcome, not an error of the gateway
    """Raised out of the app once a response has been cut short and logged: the server then
    closes the connection without ending the chunked body. Nobody logs it again (the problems
    handler ignores it; _CutShortFilter drops the server's "Exception in ASGI application")."""


class _CutShortFilter(logging.Filter):
    """Drop a server's traceback for a response the gateway cut short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ResponseCutShort)


def install_cut_short_filter() -> None:
    """Attach the filter to uvicorn's error logger once per process."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutShortFilter) for f in logger.filters):
        logger.addFilter(_CutShortFilter())


class TruncatableStreamingResponse(StreamingResponse):
    """A StreamingResponse of parts; an error after the first part ends it short (see module).

    ``closing`` ends a complete body: the closing multipart delimiter, a JSON ``]``, or a
    callable giving it once every part is out (a ZIP archive's central directory)."""

    def __init__(self, parts: AsyncGenerator[list[bytes], None],
                 closing: bytes | Callable[[], bytes], *, what: str,
                 pacs: str, media_type: str, headers: dict[str, str] | None = None) -> None:
        self._parts = parts
        self._closing = closing
        self._what = what
        self._pacs = pacs
        self.parts_sent = 0
        super().__init__(self._body(), media_type=media_type, headers=headers)

    async def _body(self) -> AsyncIterable[bytes]:
        """The parts' chunks with small neighbours joined, so that a part costs the server one
        write per large chunk plus one for the small ones around it (each write wakes the
        client): a part's short trailer waits to go out with the next part's header."""
        held = b""
        async with aclosing(self._parts):
            async for chunks in self._parts:
                pending, held = [held], b""
                if chunks and len(chunks[-1]) <= HELD_TRAILER:
                    *chunks, held = chunks
                for chunk in chunks:
                    if len(chunk) < SMALL_CHUNK:
                        pending.append(chunk)
                        continue
                    if any(pending):
                        yield b"".join(pending)
                        pending = []
                    yield chunk
                if any(pending):
                    yield b"".join(pending)
                self.parts_sent += 1
        # A callable closing is made only now, after the last part (a ZIP's central directory).
        closing = self._closing() if callable(self._closing) else self._closing
        yield held + closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watching_send(message: Any) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await super().__call__(scope, receive, watching_send)
        except Exception as exc:  # noqa: BLE001 - after the headers, every error ends the body
            if not started or isinstance(exc, ClientDisconnect):
                raise
            reason = exc.detail if isinstance(exc, GatewayError) else repr(exc)
            log.warning(
                "%s %s: %s from PACS %r cut short after %d part(s) sent: %s",
                scope.get("method", "GET"), scope.get("path", ""), self._what, self._pacs,
                self.parts_sent, reason,
            )
            raise ResponseCutShort(reason) from None  # the server closes the connection


T = TypeVar("T")


def rendered_parts(first: T, rest: AsyncIterator[T],
                   render: Callable[[T], list[bytes]]) -> AsyncGenerator[list[bytes], None]:
    """The wire chunks of ``first`` then of each item of ``rest``, one list per part."""

    async def parts() -> AsyncGenerator[list[bytes], None]:
        async with aclosing(rest):  # type: ignore[type-var]
            yield render(first)
            async for item in rest:
                yield render(item)

    return parts()


def stream_parts(pacs: str, first: T, rest: AsyncIterator[T],
                 render: Callable[[T], list[bytes]], closing: bytes | Callable[[], bytes],
                 media_type: str, what: str,
                 headers: dict[str, str] | None = None) -> TruncatableStreamingResponse:
    """A streaming response writing ``first`` then ``rest`` through ``render``; a failure after
    the headers ends it without ``closing``, logged once."""
    return TruncatableStreamingResponse(rendered_parts(first, rest, render), closing, what=what,
                                        pacs=pacs, media_type=media_type, headers=headers)
