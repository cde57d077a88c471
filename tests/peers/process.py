"""A child process with its output in a log file, stopped politely and then by force; and the
start/stop/context-manager shape every peer server of the tests shares."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class ManagedProcess:
    """Run one server executable as a child; optionally in its own process group.

    ``own_group`` puts the child in a new process group so that ``stop()`` also reaches the
    children it forks (dcmqrscp forks one per association, and each inherits the listening
    socket, which would keep the port bound after the parent is gone).
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        own_group: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.own_group = own_group
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        """The running child, or None."""
        return self._popen

    @property
    def pid(self) -> int | None:
        """PID of the child we started (the parent, for forking servers)."""
        return None if self._popen is None else self._popen.pid

    def running(self) -> bool:
        """Tell whether the child was started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the child, appending its stdout and stderr to ``log_path``."""
        if self.running():
            raise RuntimeError(f"{self.argv[0]} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                process_group=0 if self.own_group else None,
            )
        atexit.register(self.stop)
        return self._popen

    def stop(self, timeout: float = 10.0) -> None:
        """Send SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; a no-op if not running."""
        popen = self._popen
        if popen is None:
            return
        atexit.unregister(self.stop)
        self._popen = None
        if popen.poll() is None:
            self._signal(popen, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(popen, signal.SIGKILL)
                popen.wait(timeout)
        if self.own_group:
            # Forked children of the server may outlive it; they belong to our group.
            self._signal(popen, signal.SIGKILL)

    def _signal(self, popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            if self.own_group:
                os.killpg(popen.pid, sig)
            else:
                popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class PeerServer:
    """A server the tests start and stop: ``with Server(...) as server:`` starts it and stops it
    however the block ends. Subclasses define ``start`` and ``stop``."""

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class OneProcessServer(PeerServer):
    """A peer server that is one ManagedProcess, kept in ``_process`` while it runs."""

    _process: ManagedProcess | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (and, with ``own_group``, what it forked); a no-op when not
        running."""
        if self._process is not None:
            self._process.stop(timeout)
            self._process = None

    def running(self) -> bool:
        """Tell whether the process is alive."""
        return self._process is not None and self._process.running()

    @property
    def pid(self) -> int | None:
        """PID of the process we started (the parent, for forking servers)."""
        return None if self._process is None else self._process.pid
