"""`dicomweb-gateway demo` end to end: it binds its port first, prints the DICOMweb root, and
serves on that very socket (issue #10 item 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]


def test_demo_serves_on_the_port_it_announced() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DWG_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[1].strip() == f"DICOMweb root: http://127.0.0.1:{port}/dicomweb", lines
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/dicomweb/studies", timeout=10)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 200 and response.json()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
