"""How a streamed multipart body is cut into writes: large chunks alone, small neighbours
joined, a part's CRLF trailer sent with the next part's header, and the bytes unchanged."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from app.api.streaming import SMALL_CHUNK, TruncatableStreamingResponse


def response(parts: list[list[bytes]]) -> TruncatableStreamingResponse:
    async def generate() -> AsyncGenerator[list[bytes], None]:
        for part in parts:
            yield part

    return TruncatableStreamingResponse(generate(), b"--b--\r\n", what="test", pacs="p",
                                        media_type="multipart/related")


async def writes(parts: list[list[bytes]]) -> tuple[list[bytes], int]:
    r = response(parts)
    out = [chunk async for chunk in r._body()]
    return out, r.parts_sent


async def test_large_parts_take_two_writes_and_the_trailer_waits() -> None:
    big = [bytes([n]) * (SMALL_CHUNK * 2) for n in range(3)]
    parts = [[f"--b\r\nH{n}\r\n\r\n".encode(), big[n], b"\r\n"] for n in range(3)]
    out, sent = await writes(parts)
    assert out == [b"--b\r\nH0\r\n\r\n", big[0], b"\r\n--b\r\nH1\r\n\r\n", big[1],
                   b"\r\n--b\r\nH2\r\n\r\n", big[2], b"\r\n--b--\r\n"]
    assert sent == 3
    assert b"".join(out) == b"".join(b"".join(p) for p in parts) + b"--b--\r\n"


async def test_small_parts_are_one_write_each() -> None:
    parts = [[b"--b\r\nH\r\n\r\n", b"x" * 100, b"\r\n"] for _ in range(3)]
    out, sent = await writes(parts)
    assert len(out) == 4 and sent == 3  # one per part, and the closing delimiter
    assert b"".join(out) == b"".join(b"".join(p) for p in parts) + b"--b--\r\n"


async def test_no_parts_is_the_closing_delimiter_alone() -> None:
    out, sent = await writes([])
    assert out == [b"--b--\r\n"] and sent == 0
