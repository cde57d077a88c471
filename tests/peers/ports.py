"""Loopback port helpers: reserve a free TCP port and wait until a server accepts on one."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Tell whether a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 15.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until ``host:port`` accepts TCP connections.

    Raises ``TimeoutError`` after ``timeout`` seconds, or ``RuntimeError`` at once when the
    optional ``process`` that should open the port has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(host, port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process {process.pid} exited with {process.returncode} "
                f"before {host}:{port} accepted connections"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout} s")
        time.sleep(0.05)
