"""What a failed C-FIND / C-GET / C-MOVE final status becomes: the HTTP-facing error class, its
message, and the DIMSE status kept for the audit trail and the logs (PS3.4 C.4.1-C.4.3)."""

from __future__ import annotations

import pytest

from app.dimse.status import find_failure, retrieve_failure
from app.errors import (
    BadRequest,
    GatewayError,
    UpstreamError,
    UpstreamNotSupported,
    UpstreamUnavailable,
)


@pytest.mark.parametrize("status, kind, reason", [
    (0xA700, UpstreamUnavailable, "(PACS out of resources)"),
    (0xA702, UpstreamUnavailable, "(PACS out of resources)"),
    (0xA900, BadRequest, "(identifier does not match SOP class"),
    (0x0122, UpstreamNotSupported, "(SOP class not supported)"),
    (0xFE00, UpstreamError, "(cancelled by the PACS)"),
    (0xC001, UpstreamError, "C-FIND failed with status 0xC001: no room"),
])
def test_find_failures(status: int, kind: type[GatewayError], reason: str) -> None:
    error = find_failure(status, comment="no room")
    assert type(error) is kind and error.dimse_status == status
    assert f"C-FIND failed with status 0x{status:04X}: no room" in str(error.detail)
    assert reason in str(error.detail)


@pytest.mark.parametrize("status, kind, reason", [
    (0xA701, UpstreamUnavailable, "(PACS out of resources)"),
    (0xA801, UpstreamError, "(move destination unknown to the PACS)"),
    (0x0112, UpstreamNotSupported, "(SOP class not supported)"),
    (0xA900, UpstreamError, "C-MOVE failed with status 0xA900"),  # not a query-key problem
])
def test_retrieve_failures(status: int, kind: type[GatewayError], reason: str) -> None:
    error = retrieve_failure(status, "C-MOVE")
    assert type(error) is kind and error.dimse_status == status
    assert reason in str(error.detail) and "(identifier" not in str(error.detail)
