"""Integration tests: everything collected here is marked ``integration``; the real-peer
fixtures come from tests/peers/fixtures.py (registered in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.fixtures import GATEWAY_AE

__all__ = ["GATEWAY_AE"]
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/integration with ``integration``."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
