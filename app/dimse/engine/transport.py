"""Socket policy for DIMSE connections: no Nagle, a large receive buffer, and TCP_QUICKACK set
again before every read so that a PACS which writes responses in two segments with Nagle on
(Debian's DCMTK) is not held up by our delayed ACK (~40 ms per exchange)."""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
RECEIVE_BUFFER = 4 * 1024 * 1024


def apply_policy(sock: Any) -> None:
    """TCP_NODELAY and a large SO_RCVBUF on a freshly connected or accepted socket."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:  # pragma: no cover - socket already closed
        log.debug("could not apply the socket policy", exc_info=True)


def quickack(sock: Any) -> None:
    """Ask for an immediate ACK of what arrives next (Linux clears this after each use)."""
    if TCP_QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
    except OSError:  # the socket is closing; the read will tell
        pass
