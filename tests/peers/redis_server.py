"""Run a throwaway Redis on a free loopback port (no persistence) for tests that must not share."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.peers.binaries import find_binary
from tests.peers.ports import free_port, wait_for_port
from tests.peers.process import ManagedProcess, OneProcessServer


class RedisServer(OneProcessServer):
    """A private ``redis-server`` bound to 127.0.0.1 with saving and AOF disabled."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.extra_args = extra_args
        self.port = free_port()
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server."""
        return f"redis://{self.host}:{self.port}/0"

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
