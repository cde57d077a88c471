"""RESP2 encoding of Redis commands as the pieces one socket write takes: everything small
joined, every large argument (an instance) passed through as the very bytes object, so that
hundreds of megabytes reach the socket without a copy in Python (redis-py's hiredis packer
copies each command into one bytes object)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LARGE = 16 * 1024  # arguments at least this long are passed through rather than joined


def pack(commands: Iterable[Sequence[bytes]], large: int = LARGE) -> list[bytes]:
    """Commands (each a sequence of arguments) encoded as arrays of bulk strings, in order."""
    out: list[bytes] = []
    small: list[bytes] = []
    for parts in commands:
        small.append(b"*%d\r\n" % len(parts))
        for part in parts:
            if len(part) >= large:
                small.append(b"$%d\r\n" % len(part))
                out.append(b"".join(small))
                out.append(part)
                small = [b"\r\n"]
            else:
                small.append(b"$%d\r\n%s\r\n" % (len(part), part))
    if small:
        out.append(b"".join(small))
    return out


def encode_command(*parts: bytes) -> bytes:
    """One command as one bytes object."""
    return b"".join(pack([parts]))
