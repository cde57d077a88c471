"""Host header and forwarded headers against the demo PACS (issue #10, item 1): a malformed or
unlisted host is a 400 with a DICOM JSON body, never a 500, and never reaches a cached answer; a
cached answer is the same for every client except for its validated base URL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs

from .conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

DICOM_JSON = "application/dicom+json"
RETRIEVE_URL = "00081190"
ERROR_COMMENT = "00000902"
BAD_HOSTS = ["attacker.example\\", 'x"y', "a b", "evil.example/path", "user@evil.example",
             "evil.example:99999", "evil.example:8x", "[zz::1]", "é.example", "a;b", "%41"]


@pytest.fixture(scope="module")
def ct(samples: list[Dataset]) -> tuple[str, str]:
    """(study, series) of the sample series with the most instances."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    series = max(by_series.values(), key=len)
    return str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)


def assert_problem(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith(DICOM_JSON)
    assert response.json()[ERROR_COMMENT]["Value"][0]


def bulk_uris(obj: Any) -> list[str]:
    """Every BulkDataURI in a DICOM JSON value, at any depth."""
    if isinstance(obj, dict):
        found = [obj["BulkDataURI"]] if isinstance(obj.get("BulkDataURI"), str) else []
        return found + [u for v in obj.values() for u in bulk_uris(v)]
    if isinstance(obj, list):
        return [u for v in obj for u in bulk_uris(v)]
    return []


def retrieve_urls(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    return [o[RETRIEVE_URL]["Value"][0] for o in response.json()]


def settings(pacs: DemoPacs, **extra: Any) -> Any:
    return gateway_settings(peer_config(pacs.port), cache_backend="memory", **extra)


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_malformed_host_is_400_and_never_poisons_cached_metadata(
        gateway: GatewayFactory, sample_pacs: DemoPacs, ct: tuple[str, str], host: str) -> None:
    study, series = ct
    path = f"/dicomweb/studies/{study}/series/{series}/metadata"
    async with gateway(settings(sample_pacs)) as client:
        raw = {"Host": host.encode()}  # bytes: httpx sends non-ASCII as is
        assert_problem(await client.get(path, headers=raw))  # before any cache fill
        clean = await client.get(path)
        assert clean.status_code == 200
        assert_problem(await client.get(path, headers=raw))  # a cache hit now
        again = await client.get(path)
        assert again.status_code == 200
        uris = bulk_uris(again.json())
        assert uris and all(u.startswith("http://gw.test/dicomweb/studies/") for u in uris)
        assert again.json() == clean.json()


@pytest.mark.parametrize("host", ['x"y', "attacker.example\\"])
async def test_malformed_host_after_a_cached_search_is_400(
        gateway: GatewayFactory, sample_pacs: DemoPacs, host: str) -> None:
    async with gateway(settings(sample_pacs)) as client:
        first = await client.get("/dicomweb/studies")
        assert_problem(await client.get("/dicomweb/studies", headers={"Host": host}))
        urls = retrieve_urls(await client.get("/dicomweb/studies"))
        assert urls == retrieve_urls(first)
        assert all(u.startswith("http://gw.test/dicomweb/studies/") for u in urls)


async def test_cached_answers_differ_only_in_the_base_url(
        gateway: GatewayFactory, sample_pacs: DemoPacs, ct: tuple[str, str]) -> None:
    study, series = ct
    path = f"/dicomweb/studies/{study}/series/{series}/metadata"
    async with gateway(settings(sample_pacs)) as client:
        # the first client's host is part of the base URL; the text is never searched for it
        a = await client.get(path, headers={"Host": "dicomweb"})
        b = await client.get(path, headers={"Host": "other.example:8443"})
        assert a.status_code == b.status_code == 200
        assert b.text == a.text.replace("http://dicomweb/", "http://other.example:8443/")
        qa = await client.get("/dicomweb/studies", headers={"Host": "dicomweb"})
        qb = await client.get("/dicomweb/studies", headers={"Host": "[2001:db8::1]:80"})
        assert [u.replace("http://dicomweb/", "http://[2001:db8::1]:80/")
                for u in retrieve_urls(qa)] == retrieve_urls(qb)


async def test_allowed_hosts(gateway: GatewayFactory, sample_pacs: DemoPacs) -> None:
    config = settings(sample_pacs, allowed_hosts=["gw.test", "*.example.org", "10.1.2.3:8080"])
    async with gateway(config) as client:
        assert (await client.get("/dicomweb/studies")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        for host in ("pacs.example.org", "A.B.Example.ORG:443", "10.1.2.3:8080"):
            response = await client.get("/dicomweb/studies", headers={"Host": host})
            assert response.status_code == 200, host
            assert retrieve_urls(response)[0].startswith(f"http://{host.lower()}/dicomweb/")
        for host in ("example.org", "evil.example", "gw.test.evil.example", "evilexample.org",
                     "10.1.2.3", "10.1.2.3:8081"):
            assert_problem(await client.get("/dicomweb/studies", headers={"Host": host}))
        assert_problem(await client.get("/healthz", headers={"Host": "evil.example"}))
        # the host clients see behind a proxy is checked too
        assert_problem(await client.get("/dicomweb/studies",
                                        headers={"X-Forwarded-Host": "evil.example"}))
        assert_problem(await client.get("/dicomweb/studies",
                                        headers={"Forwarded": "host=evil.example"}))
        proxied = await client.get("/dicomweb/studies", headers={
            "Host": "gateway-internal", "X-Forwarded-Host": "www.example.org",
            "X-Forwarded-Proto": "https"})
        assert retrieve_urls(proxied)[0].startswith("https://www.example.org/dicomweb/")


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Host": "attacker.example\\"},
    {"X-Forwarded-Host": 'x"y'},
    {"X-Forwarded-Host": "evil.example/path?x="},
    {"X-Forwarded-Proto": "javascript"},
    {"X-Forwarded-Proto": 'https"'},
    {"X-Forwarded-Port": "80\\"},
    {"X-Forwarded-Prefix": '/a"b'},
    {"X-Forwarded-Prefix": "/a\\b"},
    {"Forwarded": 'host="x\\"y"'},
    {"Forwarded": "proto=ftp;host=gw.example.org"},
    {"Forwarded": "host=a\\b"},
])
async def test_malformed_forwarded_headers_are_400(
        gateway: GatewayFactory, sample_pacs: DemoPacs, ct: tuple[str, str],
        headers: dict[str, str]) -> None:
    study, series = ct
    path = f"/dicomweb/studies/{study}/series/{series}/metadata"
    async with gateway(settings(sample_pacs)) as client:
        assert (await client.get(path)).status_code == 200
        assert_problem(await client.get(path, headers=headers))
        assert_problem(await client.get("/dicomweb/studies", headers=headers))
        uris = bulk_uris((await client.get(path)).json())
        assert uris and all(u.startswith("http://gw.test/dicomweb/") for u in uris)


async def test_forwarded_headers_are_ignored_when_not_trusted(
        gateway: GatewayFactory, sample_pacs: DemoPacs) -> None:
    async with gateway(settings(sample_pacs, trust_forwarded_headers=False)) as client:
        response = await client.get("/dicomweb/studies",
                                    headers={"X-Forwarded-Host": 'x"y', "Forwarded": "host=a\\b"})
        assert retrieve_urls(response)[0].startswith("http://gw.test/dicomweb/")
