"""Integration tests: everything collected here is marked ``integration``; the real-peer
fixtures come from tests/peers/fixtures.py (registered in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import RedisServer, require_binary
from tests.peers.fixtures import GATEWAY_AE

__all__ = ["GATEWAY_AE"]
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/integration with ``integration``."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis for one test (some tests stop and restart it)."""
    require_binary("redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
