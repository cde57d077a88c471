"""multipart/related framing (RFC 2046 5.1, RFC 2387; PS3.18 8.6.1.2): writer and strict parser.

The writer is split into header, trailer and closing pieces so that responses can be streamed
one part at a time. The parser is incremental (``MultipartParser``: bytes in as they arrive,
part events out, holding no more than a delimiter's length of body between calls), so a STOW-RS
request body is read as a stream; ``parse_multipart`` runs it over a whole body.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from app.dicomweb.mediatypes import split_outside_quotes, unquote

__all__ = [
    "MultipartError",
    "MultipartParser",
    "Part",
    "PartData",
    "PartEnd",
    "PartEvent",
    "PartHeaders",
    "PartStart",
    "closing_delimiter",
    "encode_multipart",
    "encode_part",
    "multipart_boundary",
    "multipart_content_type",
    "new_boundary",
    "parse_content_type",
    "parse_multipart",
    "part_header",
    "part_trailer",
]

CRLF = b"\r\n"
_BCHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")  # RFC 2046
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token


class MultipartError(ValueError):
    """A multipart body or Content-Type that does not follow RFC 2046/2387."""


def new_boundary() -> str:
    """Return a fresh random boundary (32 hex digits: bchars only, well under 70)."""
    return secrets.token_hex(16)


def _check_boundary(boundary: str) -> None:
    if not _BCHARS.match(boundary):
        raise MultipartError(f"invalid multipart boundary {boundary!r}")


def _param_value(value: str) -> str:
    """Render a parameter value, quoting it unless it is a plain token."""
    if _TOKEN.match(value):
        return value
    if any(c in value for c in '"\\\r\n'):
        raise ValueError(f"unsupported characters in parameter value {value!r}")
    return f'"{value}"'


def multipart_content_type(
    part_type: str, boundary: str, extra_params: Mapping[str, str] | None = None
) -> str:
    """Return ``multipart/related; type="<part_type>"; [extra;] boundary=<boundary>``.

    ``type`` is always quoted (PS3.18 8.6.1.2.1: the slash makes it a quoted-string).
    """
    _check_boundary(boundary)
    if any(c in part_type for c in '";\r\n'):
        raise ValueError(f"invalid part type {part_type!r}")
    params = [f'type="{part_type}"']
    for name, value in (extra_params or {}).items():
        params.append(f"{name}={_param_value(value)}")
    params.append(f"boundary={_param_value(boundary)}")
    return "; ".join(["multipart/related", *params])


def _header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in {name} header value")
    try:
        value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"non-ASCII {name} header value {value!r}") from None
    return value


def part_header(
    content_type: str,
    *,
    content_location: str | None = None,
    content_length: int | None = None,
    boundary: str,
) -> bytes:
    """Return the delimiter line and headers that open one part, up to the blank line."""
    _check_boundary(boundary)
    lines = [f"--{boundary}", f"Content-Type: {_header_value('Content-Type', content_type)}"]
    if content_location is not None:
        lines.append(f"Content-Location: {_header_value('Content-Location', content_location)}")
    if content_length is not None:
        if content_length < 0:
            raise ValueError("negative Content-Length")
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def part_trailer() -> bytes:
    """Return the CRLF that ends a part's body (it belongs to the next delimiter)."""
    return CRLF


def closing_delimiter(boundary: str) -> bytes:
    """Return the close delimiter ``--boundary--`` plus CRLF, ending the multipart body."""
    _check_boundary(boundary)
    return f"--{boundary}--\r\n".encode("ascii")


def encode_part(
    body: bytes,
    content_type: str,
    *,
    boundary: str,
    content_location: str | None = None,
    with_length: bool = True,
) -> bytes:
    """Return one complete part (header, body, trailer); for small parts only."""
    header = part_header(
        content_type,
        content_location=content_location,
        content_length=len(body) if with_length else None,
        boundary=boundary,
    )
    return header + body + part_trailer()


def encode_multipart(parts: list[tuple[bytes, str]], boundary: str) -> bytes:
    """Return a whole multipart body from ``(body, content_type)`` pairs (small bodies only)."""
    chunks = [encode_part(body, ctype, boundary=boundary) for body, ctype in parts]
    return b"".join(chunks) + closing_delimiter(boundary)


# -- parsing ------------------------------------------------------------------------------------


class PartHeaders(Mapping[str, str]):
    """Header fields of one part: case-insensitive lookup, original names when iterating."""

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items or []:
            self._items[name.lower()] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return {k.lower(): v for k, v in self.items()} == {
            str(k).lower(): v for k, v in other.items()
        }

    def __repr__(self) -> str:
        return f"PartHeaders({dict(self.items())!r})"


@dataclass(frozen=True)
class Part:
    """One body part of a multipart message: its header fields and its body bytes."""

    headers: PartHeaders = field(default_factory=PartHeaders)
    body: bytes = b""

    @property
    def content_type(self) -> str | None:
        """The part's Content-Type header, if any."""
        return self.headers.get("Content-Type")

    @property
    def content_location(self) -> str | None:
        """The part's Content-Location header, if any."""
        return self.headers.get("Content-Location")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type into a lower-case media type and its parameters (keys lower-case)."""
    head, *rest = split_outside_quotes(value, ";")
    params: dict[str, str] = {}
    for item in rest:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            continue
        params[name.strip().lower()] = unquote(raw)
    return head.strip().lower(), params


def _parse_headers(block: bytes) -> PartHeaders:
    items: list[tuple[str, str]] = []
    if not block:
        return PartHeaders(items)
    for raw_line in block.split(CRLF):
        if raw_line[:1] in (b" ", b"\t") and items:  # obsolete line folding
            name, value = items[-1]
            items[-1] = (name, value + " " + raw_line.strip().decode("latin-1"))
            continue
        raw_name, sep, raw_value = raw_line.partition(b":")
        if not sep or not raw_name or raw_name != raw_name.strip():
            raise MultipartError(f"malformed part header line {raw_line[:80]!r}")
        try:
            field_name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise MultipartError(f"non-ASCII part header name {raw_name[:80]!r}") from None
        items.append((field_name, raw_value.strip().decode("latin-1")))
    return PartHeaders(items)


def multipart_boundary(content_type: str) -> str:
    """The boundary of a ``multipart/*`` Content-Type; MultipartError when there is none."""
    media_type, params = parse_content_type(content_type)
    if not media_type.startswith("multipart/"):
        raise MultipartError(f"not a multipart media type: {media_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError("multipart Content-Type without a boundary")
    _check_boundary(boundary)
    return boundary


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins: its header fields (its body follows as PartData events)."""

    headers: PartHeaders


@dataclass(frozen=True, slots=True)
class PartData:
    """A piece of the current part's body, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's body is complete."""


PartEvent = PartStart | PartData | PartEnd
MAX_HEADER_BYTES = 16 * 1024  # a part's header block; real ones are a few hundred bytes
_MAX_DELIMITER_LINE = 1024  # transport padding after a delimiter (RFC 2046 5.1.1)


class MultipartParser:
    """Incremental, strict ``multipart/related`` parser (RFC 2046 5.1.1).

    ``feed`` bytes as they arrive and act on the events it returns; ``close`` at the end of
    the body. Body bytes are handed on as soon as they cannot be the start of a delimiter, so
    the parser itself holds at most a header block or a delimiter's length. The preamble and
    the epilogue are ignored; every part must be followed by a delimiter, the body must end
    with the close delimiter, and a part's Content-Length, when present, must equal its body
    length. Raises MultipartError otherwise (and from then on)."""

    def __init__(self, content_type: str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        boundary = multipart_boundary(content_type)
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._delimiter = CRLF + self._dash_boundary
        self._max_header = max_header_bytes
        self._buffer = bytearray()
        self._state = "preamble"
        self._at_start = True  # nothing consumed yet: the body may open with the dash-boundary
        self._remaining = 0  # body bytes still due, when the part has a Content-Length
        self.parts = 0

    @property
    def finished(self) -> bool:
        """Whether the close delimiter has been seen."""
        return self._state == "done"

    def feed(self, data: bytes) -> list[PartEvent]:
        """Take the next bytes of the body; the events they complete."""
        if self._state == "failed":
            raise MultipartError("the multipart body was already found malformed")
        if self._state == "done":
            return []  # epilogue
        self._buffer += data
        events: list[PartEvent] = []
        try:
            while self._step(events):
                pass
        except MultipartError:
            self._state = "failed"
            raise
        return events

    def close(self) -> None:
        """The body has ended: MultipartError unless it ended with the close delimiter."""
        if self._state == "done":
            return
        state, self._state = self._state, "failed"
        if state == "preamble":
            raise MultipartError("multipart body without a boundary delimiter")
        if state in ("body", "length", "after-length"):
            raise MultipartError("multipart body truncated: no delimiter after a part")
        if state == "headers":
            raise MultipartError("part headers not terminated by an empty line")
        raise MultipartError("multipart body truncated after a delimiter")

    # -- one step of the state machine: True when it made progress and may go on ---------------

    def _step(self, events: list[PartEvent]) -> bool:
        buf = self._buffer
        if self._state == "preamble":
            return self._preamble()
        if self._state == "delimiter":
            return self._after_delimiter()
        if self._state == "headers":
            return self._headers(events)
        if self._state == "length":
            if not buf:
                return False
            piece = bytes(buf[:self._remaining])
            del buf[:len(piece)]
            self._remaining -= len(piece)
            events.append(PartData(piece))
            if self._remaining == 0:
                self._state = "after-length"
            return True
        if self._state == "after-length":
            if len(buf) < len(self._delimiter):
                if not self._delimiter.startswith(bytes(buf)):
                    raise MultipartError("part Content-Length does not match the next delimiter")
                return False
            if not buf.startswith(self._delimiter):
                raise MultipartError("part Content-Length does not match the next delimiter")
            del buf[:len(self._delimiter)]
            events.append(PartEnd())
            self._state = "delimiter"
            return True
        if self._state == "body":
            return self._body(events)
        return False  # done or failed

    def _preamble(self) -> bool:
        buf = self._buffer
        if self._at_start:
            if len(buf) < len(self._dash_boundary) and self._dash_boundary.startswith(bytes(buf)):
                return False
            self._at_start = False
            if buf.startswith(self._dash_boundary):
                del buf[:len(self._dash_boundary)]
                self._state = "delimiter"
                return True
        index = buf.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                del buf[:len(buf) - keep]
            return False
        del buf[:index + len(self._delimiter)]
        self._state = "delimiter"
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf.startswith(b"--"):
            self._state = "done"
            buf.clear()
            return False
        line_end = buf.find(CRLF)
        if line_end < 0:
            if len(buf) > _MAX_DELIMITER_LINE or bytes(buf).strip(b" \t\r"):
                raise MultipartError("boundary delimiter not followed by CRLF")
            return False
        if buf[:line_end].strip(b" \t"):
            raise MultipartError("boundary delimiter not followed by CRLF")
        del buf[:line_end + 2]
        self._state = "headers"
        return True

    def _headers(self, events: list[PartEvent]) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf.startswith(CRLF):
            headers, consumed = PartHeaders(), 2
        else:
            end = buf.find(CRLF + CRLF)
            if end < 0:
                if len(buf) > self._max_header:
                    raise MultipartError(f"part headers longer than {self._max_header} bytes")
                return False
            headers, consumed = _parse_headers(bytes(buf[:end])), end + 4
        del buf[:consumed]
        self.parts += 1
        events.append(PartStart(headers))
        length_text = headers.get("Content-Length")
        if length_text is None:
            self._state = "body"
            return True
        try:
            length = int(length_text)
        except ValueError:
            raise MultipartError(f"invalid part Content-Length {length_text!r}") from None
        if length < 0:
            raise MultipartError("part Content-Length does not match the next delimiter")
        self._remaining = length
        self._state = "length" if length else "after-length"
        return True

    def _body(self, events: list[PartEvent]) -> bool:
        buf = self._buffer
        index = buf.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                events.append(PartData(bytes(buf[:len(buf) - keep])))
                del buf[:len(buf) - keep]
            return False
        if index:
            events.append(PartData(bytes(buf[:index])))
        del buf[:index + len(self._delimiter)]
        events.append(PartEnd())
        self._state = "delimiter"
        return True


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Parse a complete ``multipart/related`` body into parts, strictly (see MultipartParser).

    Raises ``MultipartError`` for a body that does not follow RFC 2046."""
    parser = MultipartParser(content_type, max_header_bytes=max(MAX_HEADER_BYTES, len(body)))
    parts: list[Part] = []
    headers = PartHeaders()
    chunks: list[bytes] = []
    for event in parser.feed(body):
        if isinstance(event, PartStart):
            headers, chunks = event.headers, []
        elif isinstance(event, PartData):
            chunks.append(event.data)
        else:
            parts.append(Part(headers=headers, body=b"".join(chunks)))
    parser.close()
    return parts
