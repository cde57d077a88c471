"""Content-Encoding for DICOM JSON and XML responses (QIDO-RS results, metadata, the
Capabilities Description), negotiated by Accept-Encoding (RFC 9110 12.5.3, 8.4).

Text compresses five- to twenty-fold; pixel data does not, so instances, frames, bulk data,
ZIP archives and rendered images are never encoded (their multipart bodies hold binary parts,
often already compressed). Only the multipart/related of DICOM XML parts is text among the
multipart answers, and it is encoded like JSON.

- **Negotiation**: the highest-q coding the client accepts among ``br`` (when the brotli
  package is installed) and ``gzip``; identity when the client lists it with a higher q,
  sends no Accept-Encoding, or accepts nothing the gateway has (identity is always a
  fallback: a 406 for an encoding would help nobody). Ties go to br, then gzip.
- **Streaming**: a streamed body (metadata of a series) is compressed chunk by chunk as it
  goes, flushed at least every 64 KiB of input; memory stays one chunk. A body cut short
  stays cut short: the compressed stream then lacks its end as well.
- **Validators**: every response this applies to says ``Vary: Accept-Encoding``. An encoded
  response's ETag gets the coding as a suffix (``"abc-gzip"``), so each encoding has its own
  strong validator (RFC 9110 8.8.3); a request's ``If-None-Match`` naming a suffixed tag of the
  coding it would get now is matched against the handler's identity tag, and the 304 carries
  the suffixed tag back.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.dicomweb.mediatypes import DICOM_JSON, DICOM_XML, MULTIPART_RELATED, parse_accept
from app.dicomweb.wadl import WADL_MEDIA_TYPE

try:  # optional at run time: without it only gzip is offered
    import brotli
except ImportError:  # pragma: no cover - the project depends on it
    brotli = None

GZIP_LEVEL = 6  # zlib's default: most of the gain for little CPU
INLINE_ENCODE_BYTES = 512 << 10  # bodies below it are encoded on the event loop
BROTLI_QUALITY = 5  # brotli's default (11) is for static files; 4-6 is the usual for responses

#: Codings the gateway can produce, in its own order of preference for ties.
CODINGS: tuple[str, ...] = (("br",) if brotli is not None else ()) + ("gzip",)
_ALIASES = {"x-gzip": "gzip"}
#: Media types worth encoding: DICOM JSON (and its application/json alias), DICOM XML, WADL.
TEXT_MEDIA_TYPES = frozenset({DICOM_JSON, "application/json", DICOM_XML, WADL_MEDIA_TYPE})


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Coding (lower case) -> q from an Accept-Encoding value; an invalid q counts as 0 (the
    entry is then ignored rather than preferred)."""
    weights: dict[str, float] = {}
    for entry in header.split(","):
        name, *params = (piece.strip() for piece in entry.split(";"))
        name = _ALIASES.get(name.lower(), name.lower())
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also false for NaN
                    q = 0.0
        weights[name] = q
    return weights


def choose_coding(header: str | None, available: tuple[str, ...] = CODINGS) -> str | None:
    """The content coding for a response, None for identity (RFC 9110 12.5.3): a coding not
    listed is acceptable only through ``*``. Identity is always the fallback; it wins over the
    codings only when the client lists it with a higher q (``gzip;q=0.5, identity``)."""
    if not header or not header.strip():
        return None
    weights = parse_accept_encoding(header)
    star = weights.get("*")
    identity_q = weights.get("identity", 0.0)
    best: tuple[float, int, str] | None = None
    for rank, coding in enumerate(available):
        q = weights.get(coding, star if star is not None else 0.0)
        if q > 0 and (best is None or (q, -rank) > best[:2]):
            best = (q, -rank, coding)
    if best is None or best[0] < identity_q:
        return None
    return best[2]


def is_text_representation(content_type: str) -> bool:
    """Whether a response of this Content-Type is encoded when the client accepts it."""
    ranges = parse_accept(content_type)
    if not ranges:
        return False
    media = ranges[0]
    if media.media_type == MULTIPART_RELATED:
        return (media.part_type or "").lower() == DICOM_XML
    return media.media_type in TEXT_MEDIA_TYPES


def coded_etag(etag: str, coding: str) -> str:
    """``"abc"`` -> ``"abc-gzip"`` (``W/"abc"`` -> ``W/"abc-gzip"``)."""
    if etag.endswith('"'):
        return f'{etag[:-1]}-{coding}"'
    return etag


def _identity_tags(header: str, coding: str) -> tuple[str, dict[str, str]]:
    """An If-None-Match value with this coding's suffix removed, and identity tag -> the tag
    the client sent."""
    sent: dict[str, str] = {}
    tags = []
    suffix = f'-{coding}"'
    for raw in header.split(","):
        tag = raw.strip()
        bare = tag.removeprefix("W/")
        if bare.endswith(suffix):
            identity = bare[: -len(suffix)] + '"'
            sent[identity] = tag
            tag = identity
        tags.append(tag)
    return ", ".join(tags), sent


class _Encoder:
    """One response's compressor: ``compress`` for each chunk, ``finish`` at the end.

    The compressor keeps what it has not yet emitted; once ``FLUSH_EVERY`` bytes of input
    are held back it is flushed, so a streamed body reaches the client steadily (and what was
    rendered before a failure mostly left) at little cost in ratio."""

    FLUSH_EVERY = 64 * 1024

    def __init__(self, coding: str) -> None:
        if coding == "br":
            assert brotli is not None
            compressor = brotli.Compressor(quality=BROTLI_QUALITY)
            self._compress: Callable[[bytes], bytes] = compressor.process
            self._flush: Callable[[], bytes] = compressor.flush
            self._finish: Callable[[], bytes] = compressor.finish
        else:
            gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            self._compress = gz.compress
            self._flush = lambda: gz.flush(zlib.Z_SYNC_FLUSH)
            self._finish = gz.flush
        self._held = 0

    def compress(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = self._compress(data)
        self._held = 0 if out else self._held + len(data)
        if self._held >= self.FLUSH_EVERY:
            out += self._flush()
            self._held = 0
        return out

    def finish(self) -> bytes:
        return self._finish()


def encode_body(data: bytes, coding: str) -> bytes:
    """A whole body in ``coding`` (``br`` or ``gzip``), as the middleware would send it."""
    encoder = _Encoder(coding)
    return encoder.compress(data) + encoder.finish()


def body_encoder(coding: str) -> Callable[[bytes], Awaitable[bytes]]:
    """``encode_body`` in ``coding`` for a route that keeps the encoded body for later
    requests: small bodies on the event loop (a thread hop costs more), large ones in a
    worker thread."""

    async def encode(data: bytes) -> bytes:
        if len(data) < INLINE_ENCODE_BYTES:
            return encode_body(data, coding)
        return await asyncio.to_thread(encode_body, data, coding)

    return encode


def encoded_headers(coding: str) -> dict[str, str]:
    """The headers of a response whose body a route encoded in ``coding`` itself."""
    return {"Content-Encoding": coding, "Vary": "Accept-Encoding"}


class _Response:
    """Watches one response on its way out and encodes it when it qualifies."""

    def __init__(self, send: Send, coding: str | None, min_bytes: int,
                 sent_tags: dict[str, str]) -> None:
        self._send = send
        self._coding = coding
        self._min_bytes = min_bytes
        self._sent_tags = sent_tags
        self._start: Message | None = None
        self._encoder: _Encoder | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body" and self._start is not None:
            await self._on_first_body(message)
        elif message["type"] == "http.response.body" and self._encoder is not None:
            await self._on_body(message)
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        headers = MutableHeaders(scope=message)
        status = message["status"]
        if status == 304:
            etag = headers.get("etag")
            if etag is not None and etag.removeprefix("W/") in self._sent_tags:
                headers["ETag"] = self._sent_tags[etag.removeprefix("W/")]
                headers.add_vary_header("Accept-Encoding")
            await self._send(message)
            return
        if status != 200 or "content-encoding" in headers or not is_text_representation(
                headers.get("content-type", "")):
            await self._send(message)
            return
        headers.add_vary_header("Accept-Encoding")
        if self._coding is None:
            await self._send(message)
            return
        self._start = message  # held until the first body shows whether it is worth it

    async def _on_first_body(self, message: Message) -> None:
        start, self._start = self._start, None
        assert start is not None and self._coding is not None
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not more and len(body) < self._min_bytes:
            await self._send(start)
            await self._send(message)
            return
        headers = MutableHeaders(scope=start)
        headers["Content-Encoding"] = self._coding
        if "etag" in headers:
            headers["ETag"] = coded_etag(headers["etag"], self._coding)
        encoder = _Encoder(self._coding)
        if not more:
            data = encoder.compress(body) + encoder.finish()
            headers["Content-Length"] = str(len(data))
            await self._send(start)
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
            return
        if "content-length" in headers:
            del headers["content-length"]
        self._encoder = encoder
        await self._send(start)
        await self._on_body(message)

    async def _on_body(self, message: Message) -> None:
        assert self._encoder is not None
        more = bool(message.get("more_body", False))
        data = self._encoder.compress(message.get("body", b""))
        if not more:
            data += self._encoder.finish()
            self._encoder = None
        if data or not more:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})


class CompressionMiddleware:
    """Encodes text responses as the client's Accept-Encoding asks (see module)."""

    def __init__(self, app: ASGIApp, *, min_bytes: int) -> None:
        self.app = app
        self.min_bytes = min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)
        coding = choose_coding(request_headers.get("accept-encoding"))
        sent_tags: dict[str, str] = {}
        condition = request_headers.get("if-none-match")
        if coding is not None and condition:
            rewritten, sent_tags = _identity_tags(condition, coding)
            if sent_tags:
                scope = dict(scope)
                raw: list[Any] = [(k, v) for k, v in scope["headers"] if k != b"if-none-match"]
                raw.append((b"if-none-match", rewritten.encode("latin-1")))
                scope["headers"] = raw
        response = _Response(send, coding, self.min_bytes, sent_tags)
        await self.app(scope, receive, response.send)
