"""Run a throwaway Redis on a free loopback port (no persistence) for tests that must not share."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.peers.binaries import find_binary
from tests.peers.ports import free_port, wait_for_port
from tests.peers.process import ManagedProcess, OneProcessServer


class RedisServer(OneProcessServer):
    """A private ``redis-server`` bound to 127.0.0.1 with saving and AOF disabled."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = (),
                 unix_socket: bool = False) -> None:
        """``unix_socket``: listen on a Unix socket too (``socket_url``), in the work directory
        or, when that path would be too long for a socket (107 bytes), a temporary one."""
        self.workdir = Path(workdir)
        self.extra_args = extra_args
        self.port = free_port()
        self.socket_path: Path | None = None
        if unix_socket:
            self.socket_path = self.workdir.absolute() / "redis.sock"
            if len(str(self.socket_path).encode()) > 100:
                self.socket_path = Path(tempfile.mkdtemp(prefix="dwg-redis-")) / "redis.sock"
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """``unix://`` URL of the server's Unix socket (only with ``unix_socket``)."""
        if self.socket_path is None:
            raise RuntimeError("this redis-server has no Unix socket")
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server in the foreground as our child and wait for its port."""
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (run scripts/install-deps)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            *(("--unixsocket", str(self.socket_path), "--unixsocketperm", "700")
              if self.socket_path is not None else ()),
            *self.extra_args,
        ]  # fmt: skip
        self._process = ManagedProcess(argv, self.workdir / "redis.log", cwd=self.workdir)
        popen: subprocess.Popen[bytes] = self._process.start()
        try:
            wait_for_port(self.host, self.port, timeout, process=popen)
        except (TimeoutError, RuntimeError) as error:
            tail = self._process.log_tail()
            self.stop()
            raise RuntimeError(f"redis-server did not start:\n{tail}") from error
