"""The gateway's HTTP protocol (vectored writes of large chunks) against a real uvicorn server
and a real HTTP client: the chunked framing must stay byte-exact whatever the chunk sizes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.api.http_protocol import VECTORED_MIN_BYTES, GatewayHttpProtocol, VectoredChunkCycle
from tests.peers.ports import free_port

# Sizes around the threshold, empty chunks and a large one; each chunk's bytes are distinct.
SIZES = [0, 1, VECTORED_MIN_BYTES - 1, VECTORED_MIN_BYTES, 3 * VECTORED_MIN_BYTES + 7, 0,
         1_000_003, 5]


def _chunk(i: int, size: int) -> bytes:
    return bytes((i * 31 + j) % 251 for j in range(min(size, 251))) * (size // 251) + bytes(
        (i * 31 + j) % 251 for j in range(size % 251))


EXPECTED = b"".join(_chunk(i, n) for i, n in enumerate(SIZES))


class _App:
    """Streams SIZES as body chunks and remembers which cycle class answered."""

    def __init__(self) -> None:
        self.cycles: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.cycles.append(type(getattr(send, "__self__", None)).__name__)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        if scope["path"] == "/last-big":  # the final chunk is large: uvicorn's own path
            await send({"type": "http.response.body", "body": _chunk(0, 200_000)})
            return
        for i, size in enumerate(SIZES):
            await send({"type": "http.response.body", "body": _chunk(i, size),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, _App]]:
    app = _App()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            http=GatewayHttpProtocol, loop=request.param, lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


def test_chunked_body_is_byte_exact(server: tuple[str, _App]) -> None:
    url, app = server
    with httpx.Client() as client:
        for _ in range(2):  # a second request on the same keep-alive connection
            response = client.get(f"{url}/stream")
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.content == EXPECTED
    assert app.cycles[-1] == VectoredChunkCycle.__name__


def test_large_final_chunk_and_head(server: tuple[str, _App]) -> None:
    url, _ = server
    with httpx.Client() as client:
        assert client.get(f"{url}/last-big").content == _chunk(0, 200_000)
        head = client.head(f"{url}/stream")
        assert head.status_code == 200 and head.content == b""


def test_client_gone_mid_stream_leaves_server_serving(server: tuple[str, _App]) -> None:
    url, _ = server
    with httpx.Client() as client, client.stream("GET", f"{url}/stream") as response:
        next(response.iter_raw(1024))  # read a little, then drop the connection
    assert httpx.get(f"{url}/stream").content == EXPECTED


def _wire_chunks(url: str, path: str) -> list[int]:
    """The chunk sizes of a response as they are on the wire (raw socket, HTTP/1.1)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(1 << 20):
            raw += chunk
    body = raw.split(b"\r\n\r\n", 1)[1]
    sizes = []
    while True:
        line, body = body.split(b"\r\n", 1)
        size = int(line, 16)
        if size == 0:
            return sizes
        sizes.append(size)
        body = body[size + 2:]


def test_a_small_chunk_goes_out_with_the_large_one_that_follows(
        server: tuple[str, _App]) -> None:
    """Each small chunk is held for the large chunk sent right after it: one chunk on the
    wire instead of two (small ones with nothing large after them still go out)."""
    url, _ = server
    sizes = _wire_chunks(url, "/stream")
    assert sum(sizes) == len(EXPECTED)
    assert VECTORED_MIN_BYTES + (VECTORED_MIN_BYTES - 1) + 1 in sizes  # 1 + MIN-1 + MIN
    assert 3 * VECTORED_MIN_BYTES + 7 in sizes
    assert 1_000_003 in sizes  # after an empty chunk: nothing to join
    assert 5 in sizes  # the last small chunk, with nothing after it
