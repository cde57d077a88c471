"""Run the gateway as a separate process (``uvicorn --factory --workers N``) configured through
DWG_* environment variables, for tests that need several workers sharing one cache."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.peers.ports import free_port
from tests.peers.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTED = "Application startup complete"


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """DWG_* variables for Settings ``values`` (lists and mappings as JSON, booleans in lower
    case), as pydantic-settings reads them."""
    env: dict[str, str] = {}
    for name, value in values.items():
        if isinstance(value, (list, dict, tuple)):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"DWG_{name.upper()}"] = text
    return env


class GatewayProcess:
    """``python -m uvicorn app.main:create_server_app --factory --workers N`` on a free
    loopback port, in its own process group (stopping it stops every worker)."""

    def __init__(self, workdir: Path, settings: Mapping[str, Any], *, workers: int = 2,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workers = workers
        self.port = free_port()
        extra = dict(env or {})
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("DWG_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(settings_env(settings))
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "uvicorn", "app.main:create_server_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers), "--log-level", "info"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(argv, self.workdir / "gateway.log", env=env,
                                       cwd=REPO_ROOT, own_group=True)

    @property
    def url(self) -> str:
        """The server root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where both workers' output goes."""
        return self.workdir / "gateway.log"

    def log_text(self) -> str:
        """Everything the process logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start, then wait until every worker has completed its start-up and /healthz answers."""
        popen = self._process.start()
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"gateway exited with {popen.returncode}:\n"
                                   f"{self._process.log_tail()}")
            if self.log_text().count(STARTED) >= self.workers and self._healthy():
                return self
            if time.monotonic() > deadline:
                tail = self._process.log_tail()
                self.stop()
                raise TimeoutError(f"gateway did not start within {timeout} s:\n{tail}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL every process of the gateway at once (no shutdown, no cleanup: a crash)."""
        pid = self._process.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            popen = self._process.popen
            if popen is not None:
                popen.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; idempotent."""
        self._process.stop(timeout)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
