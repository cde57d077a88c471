"""The RESP2 encoder of the Redis batch writer: byte-for-byte what redis-py's own encoder
sends, with every large argument passed through as the same object (not copied)."""

from __future__ import annotations

from redis.connection import PythonRespSerializer

from app.cache.resp import encode_command, pack


def _reference(commands: list[list[bytes]]) -> bytes:
    serializer = PythonRespSerializer(6000, lambda value: value)
    return b"".join(b"".join(serializer.pack(*parts)) for parts in commands)


def test_pack_matches_redis_py_and_passes_large_values_through() -> None:
    big = bytes(range(256)) * 300  # 76,800 bytes
    other = b"\r\n" * 20_000  # CRLF inside a value is data, not framing
    commands = [[b"SET", b"k1", big, b"PX", b"60000"], [b"SET", b"k2", b""],
                [b"RPUSH", b"log", b"i:1", b"i:2"], [b"SET", b"k3", other],
                [b"PUBLISH", b"dwg:events", b"log"]]
    pieces = pack(commands)
    assert b"".join(pieces) == _reference(commands)
    assert any(piece is big for piece in pieces) and any(piece is other for piece in pieces)
    assert len(pieces) == 5  # small parts joined: before big, big, between, other, after


def test_small_commands_are_one_piece() -> None:
    assert pack([[b"GET", b"a"], [b"GET", b"b"]]) == [b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
                                                     b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"]
    assert encode_command(b"SELECT", b"3") == _reference([[b"SELECT", b"3"]])
    assert pack([]) == []
