"""The cache admin endpoints (issue #10 item 10): a bearer token required (compared in constant
time), no foreign Origin, JSON bodies only, so a cross-site form POST cannot clear the cache; and
the `cache --url` command sends the token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.settings import ConfigurationError

from .conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DICOM_JSON = "application/dicom+json"


@pytest.fixture
async def admin_client(gateway: GatewayFactory, sample_pacs: DemoPacs) -> Any:
    settings = gateway_settings(peer_config(sample_pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN)
    async with gateway(settings) as client:
        yield client


def _problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(DICOM_JSON)
    text: str = r.json()["00000902"]["Value"][0]
    return text


def test_enabling_admin_without_a_token_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="admin_token"):
        gateway_settings(peer_config(104), cache_admin_enabled=True)
    with pytest.raises(ConfigurationError, match="admin_token"):
        gateway_settings(peer_config(104), cache_admin_enabled=True, admin_token="short")


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
])
async def test_requests_without_the_token_are_401(admin_client: httpx.AsyncClient,
                                                  headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/cache/stats"), ("POST", "/admin/cache/clear"),
                         ("POST", "/admin/cache/evict")):
        r = await admin_client.request(method, path, headers=headers)
        _problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_the_token_is_compared_in_constant_time(
        admin_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.api.admin as admin

    compared: list[tuple[bytes, bytes]] = []

    real = admin.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin, "hmac", _Hmac(recording))
    await admin_client.get("/admin/cache/stats", headers={"Authorization": "Bearer nope"})
    assert compared == [(b"nope", TOKEN.encode())]


class _Hmac:
    """Stands in for the hmac module, recording compare_digest calls."""

    def __init__(self, compare: Any) -> None:
        self.compare_digest = compare


async def test_with_the_token_the_endpoints_work(admin_client: httpx.AsyncClient,
                                                 samples: list[Dataset]) -> None:
    study = str(samples[0].StudyInstanceUID)
    await admin_client.get(f"/dicomweb/studies/{study}/metadata")
    stats = await admin_client.get("/admin/cache/stats", headers=AUTH)
    assert stats.status_code == 200 and stats.json()["backend"] == "memory"
    evicted = await admin_client.post("/admin/cache/evict", headers=AUTH, json={"study": study})
    assert evicted.status_code == 200 and evicted.json()["removed"] >= 1
    cleared = await admin_client.post("/admin/cache/clear", headers=AUTH)
    assert cleared.status_code == 200
    cleared = await admin_client.post("/admin/cache/clear", headers=AUTH, json={})
    assert cleared.status_code == 200


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400), ({"study": "1.2.x"}, 400), ({"study": "1.2.3", "pacs": "nope"}, 404),
    ({"study": "1.2.3", "unknown": 1}, 400), ({"study": "1" * 100}, 400), (["1.2.3"], 400),
])
async def test_evict_bodies_are_validated(admin_client: httpx.AsyncClient, body: Any,
                                          status: int) -> None:
    _problem(await admin_client.post("/admin/cache/evict", headers=AUTH, json=body), status)


async def test_malformed_or_huge_json_is_400(admin_client: httpx.AsyncClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    _problem(await admin_client.post("/admin/cache/evict", headers=headers, content=b"{"), 400)
    huge = json.dumps({"study": "1." + "2" * 10_000}).encode()
    _problem(await admin_client.post("/admin/cache/evict", headers=headers, content=huge), 400)


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", None,
])
async def test_form_posts_are_refused(admin_client: httpx.AsyncClient,
                                      content_type: str | None) -> None:
    """What an HTML form on another site can send without a CORS preflight."""
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    for path in ("/admin/cache/evict", "/admin/cache/clear"):
        r = await admin_client.post(path, headers=headers, content=b"study=1.2.3")
        _problem(r, 415)


async def test_cross_site_form_post_without_token_does_nothing(
        admin_client: httpx.AsyncClient) -> None:
    r = await admin_client.post("/admin/cache/clear", content=b"x=1", headers={
        "Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (401, 403)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://gw.test.evil.example",
                                    "null", "http://gw.test:8080"])
async def test_a_foreign_origin_is_403_even_with_the_token(admin_client: httpx.AsyncClient,
                                                           origin: str) -> None:
    for method, path in (("GET", "/admin/cache/stats"), ("POST", "/admin/cache/clear")):
        r = await admin_client.request(method, path, headers={**AUTH, "Origin": origin})
        _problem(r, 403)


async def test_the_gateways_own_origin_is_fine(admin_client: httpx.AsyncClient) -> None:
    r = await admin_client.post("/admin/cache/clear", headers={**AUTH, "Origin": "http://gw.test"})
    assert r.status_code == 200


async def test_admin_off_is_404_whatever_the_token(gateway: GatewayFactory,
                                                   sample_pacs: DemoPacs) -> None:
    settings = gateway_settings(peer_config(sample_pacs.port), admin_token=TOKEN)
    async with gateway(settings) as client:
        _problem(await client.get("/admin/cache/stats", headers=AUTH), 404)


async def test_cache_cli_sends_the_token(sample_pacs: DemoPacs, samples: list[Dataset],
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli
    from tests.support.gateway_server import GatewayServer

    settings = gateway_settings(peer_config(sample_pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN)
    with GatewayServer(settings) as server:
        monkeypatch.setenv("DWG_ADMIN_TOKEN", TOKEN)
        study = str(samples[0].StudyInstanceUID)
        assert await asyncio.to_thread(cli.main, ["cache", "stats", "--url", server.url]) == 0
        assert json.loads(capsys.readouterr().out)["backend"] == "memory"
        code = await asyncio.to_thread(cli.main, ["cache", "evict", "--study", study,
                                                  "--url", server.url])
        assert code == 0 and "removed" in capsys.readouterr().out
        monkeypatch.setenv("DWG_ADMIN_TOKEN", "another-token-0123456789")
        assert await asyncio.to_thread(cli.main, ["cache", "clear", "--url", server.url]) == 1
        capsys.readouterr()
        monkeypatch.delenv("DWG_ADMIN_TOKEN")
        assert await asyncio.to_thread(cli.main, ["cache", "clear", "--url", server.url]) == 2
        assert "admin_token" in capsys.readouterr().err
