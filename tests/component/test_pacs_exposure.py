"""What a client learns about the PACS when it fails (issue #10 item 9): 503 and 502 bodies and
/readyz name the PACS, never its AE title, host or port; the logs keep the details, and /readyz
shows them only with readyz_details."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from .conftest import GatewayFactory, ScriptedScp, free_port, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(30)

SECRET_AE = "SECRET_AE"


def _leaks(text: str, port: int) -> list[str]:
    return [s for s in (SECRET_AE, "127.0.0.1", str(port)) if s in text]


@pytest.mark.parametrize("path", ["/dicomweb/studies", "/dicomweb/studies/1.2.3/metadata",
                                  "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered"])
async def test_unreachable_pacs_is_503_without_its_address(
        gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, path: str) -> None:
    port = free_port()
    settings = gateway_settings(peer_config(port, ae_title=SECRET_AE))
    with caplog.at_level(logging.INFO):
        async with gateway(settings) as client:
            r = await client.get(path)
    assert r.status_code == 503
    assert r.json()["00000902"]["Value"] == ["PACS demo is unavailable"]
    assert not _leaks(r.text, port) and not _leaks(str(r.headers), port)
    logged = "\n".join(rec.getMessage() for rec in caplog.records
                       if rec.name.startswith(("app.api", "app.services")))
    assert f"{SECRET_AE}@127.0.0.1:{port}" in logged  # the operator still learns where


async def test_readyz_hides_the_pacs_address_by_default(
        gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with caplog.at_level(logging.INFO):
        async with gateway(gateway_settings(peer_config(port, ae_title=SECRET_AE))) as client:
            first = await client.get("/readyz")
            second = await client.get("/readyz")
    assert first.status_code == second.status_code == 503
    assert first.json()["pacs"]["demo"] == {"status": "unavailable",
                                            "error": "PACS demo is unavailable",
                                            "retrieve": "C-GET"}
    assert not _leaks(first.text, port)
    readiness = [rec.getMessage() for rec in caplog.records
                 if rec.getMessage().startswith("readiness:")]
    assert len(readiness) == 1  # logged when the PACS stops answering, not on every poll
    assert f"{SECRET_AE}@127.0.0.1:{port}" in readiness[0]


async def test_readyz_details_setting_shows_them(gateway: GatewayFactory) -> None:
    port = free_port()
    settings = gateway_settings(peer_config(port, ae_title=SECRET_AE), readyz_details=True)
    async with gateway(settings) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    state = r.json()["pacs"]["demo"]
    assert state["error"] == "PACS demo is unavailable"
    assert f"{SECRET_AE}@127.0.0.1:{port}" in state["detail"]


async def test_permanent_rejection_is_502_without_the_ae_title(
        gateway: GatewayFactory, scripted_scp: Any) -> None:
    def nothing(event: Any, scp: ScriptedScp) -> Any:
        yield 0x0000, None

    scp = scripted_scp(nothing, ae_title="PICKY", require_called_aet=True)
    settings = gateway_settings(peer_config(scp.port, ae_title=SECRET_AE))
    async with gateway(settings) as client:
        r = await client.get("/dicomweb/studies")
        ready = await client.get("/readyz")
    assert r.status_code == 502
    assert r.json()["00000902"]["Value"] == ["PACS demo refused the association"]
    assert not _leaks(r.text, scp.port)
    assert ready.status_code == 503 and not _leaks(ready.text, scp.port)


