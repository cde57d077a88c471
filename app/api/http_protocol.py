"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, except for how
the middle chunks of a chunked response body are written. A large chunk goes out as its size
line, bytes and CRLF in one vectored write instead of being joined first (a study retrieval
streams each instance as one chunk: the join copied every byte once more). A small chunk (a
multipart part's header) is held until the end of the event loop's turn, so that when the
part's body follows at once both leave as one chunk in one write: one wake-up of the client per
part instead of two."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

VECTORED_MIN_BYTES = 64 * 1024  # below this a join costs less than a vectored write


class VectoredChunkCycle(RequestResponseCycle):
    """A request/response cycle whose middle body chunks are written as described above (the
    rest, and every other kind of response, is uvicorn's)."""

    _held = b""  # small chunk bytes not written yet
    _flush_due = False

    async def send(self, message: Any) -> None:
        """Hold a small middle chunk, write a large one (with what is held) without copying
        it; anything else after what is held, as uvicorn does."""
        if not (message["type"] == "http.response.body" and message.get("more_body", False)
                and self.response_started and not self.response_complete
                and self.chunked_encoding and self.scope["method"] != "HEAD"):
            self._write_held()
            await super().send(message)
            return
        body = message.get("body", b"")
        if len(body) < VECTORED_MIN_BYTES:
            if body:
                self._held += body
                if not self._flush_due:
                    self._flush_due = True
                    asyncio.get_running_loop().call_soon(self._write_held)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        held, self._held = self._held, b""
        # uvloop's writelines hands the pieces to one writev; asyncio's own loop joins them.
        self.transport.writelines((b"%x\r\n" % (len(held) + len(body)), held, body, b"\r\n"))

    def _write_held(self) -> None:
        """Write the held small chunks as one chunk of their own."""
        self._flush_due = False
        held, self._held = self._held, b""
        if held and not self.disconnected:
            self.transport.write(b"%x\r\n%b\r\n" % (len(held), held))


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with VectoredChunkCycle as its request/response cycle."""

    def on_headers_complete(self) -> None:
        """Let uvicorn build the cycle, then give it the vectored body writes (its ASGI task
        has not run yet, so every send of the response goes through the subclass)."""
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = VectoredChunkCycle
