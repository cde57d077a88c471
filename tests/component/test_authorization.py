"""Authorization (issue #11 item 1): OAuth 2.0 bearer JWTs from a real OIDC issuer the test
starts (discovery document and JWKS over HTTP on 127.0.0.1, RS256 and ES256 keys made for the
run), static API keys, scopes mapped to actions, per-PACS claims, RFC 6750 challenges, CORS
preflight, the admin token, and the endpoints left open; against the demo PACS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.settings import ConfigurationError
from tests.support.token_issuer import AUDIENCE, RunningIssuer, SigningKey, TokenIssuer

from .conftest import gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(90)

DICOM_JSON = "application/dicom+json"
SEARCH_AND_RETRIEVE = "openid dicomweb.search dicomweb.retrieve"
API_KEY = "k3y-for-the-ai-service-0123456789abcdef"
ADMIN_TOKEN = "s3cret-admin-token-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    with RunningIssuer() as running:
        yield running


@pytest.fixture
def uids(samples: list[Dataset]) -> tuple[str, str]:
    return str(samples[0].StudyInstanceUID), str(samples[0].SeriesInstanceUID)


def auth_settings(pacs: DemoPacs, issuer: TokenIssuer | None, **extra: Any) -> Any:
    """Gateway settings with authorization on, trusting ``issuer``."""
    oidc: dict[str, Any] = {}
    if issuer is not None:
        oidc = {"auth_issuer": issuer.url, "auth_audience": [AUDIENCE],
                "auth_jwks_min_refresh_interval": 0}
    peers = extra.pop("peers", None) or [peer_config(pacs.port)]
    return gateway_settings(*peers, auth_enabled=True, **{**oidc, **extra})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": DICOM_JSON}


def assert_refused(r: httpx.Response, status: int, error: str | None) -> str:
    """A DICOM JSON error with an RFC 6750 challenge; returns the challenge."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(DICOM_JSON)
    assert r.json()["00000902"]["Value"][0]
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="dicomweb-gateway"'), challenge
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge and "error_description=" in challenge
    return challenge


@pytest.fixture
async def client(sample_pacs: DemoPacs, issuer: TokenIssuer
                 ) -> AsyncIterator[httpx.AsyncClient]:
    async with open_app(auth_settings(sample_pacs, issuer)) as (client, _):
        yield client


async def test_off_by_default(sample_pacs: DemoPacs) -> None:
    async with open_app(gateway_settings(peer_config(sample_pacs.port))) as (client, _):
        r = await client.get("/dicomweb/studies", headers={"Accept": DICOM_JSON})
    assert r.status_code == 200 and len(r.json()) == 8


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_valid_token_searches_and_retrieves(
        client: httpx.AsyncClient, issuer: TokenIssuer, uids: tuple[str, str],
        algorithm: str) -> None:
    token = issuer.token(algorithm)
    r = await client.get("/dicomweb/studies", headers=bearer(token))
    assert r.status_code == 200 and len(r.json()) == 8
    study, series = uids
    r = await client.get(f"/dicomweb/studies/{study}/series/{series}/metadata",
                         headers=bearer(token))
    assert r.status_code == 200 and r.json()[0]["0020000D"]["Value"] == [study]
    r = await client.get(f"/dicomweb/studies/{study}/series/{series}", headers={
        "Authorization": f"Bearer {token}",
        "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200 and len(r.content) > 10_000


async def test_no_credential_is_401_without_an_error_code(client: httpx.AsyncClient) -> None:
    """RFC 6750 3.1: a request without any authentication information gets the challenge
    alone."""
    for path in ("/dicomweb/studies", "/pacs/demo/dicomweb/series", "/wado", "/nowhere"):
        assert_refused(await client.get(path), 401, None)


def _unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token (RFC 7519 6.1): no signature at all."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _hs256_with_public_key(issuer: TokenIssuer) -> str:
    """The classic key-confusion forgery: HS256 keyed with the issuer's public key."""
    import hmac

    rsa_key = issuer.key("RS256")
    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    signing_input = part({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}) + b"." + part(
        issuer.claims())
    mac = hmac.new(rsa_key.public_pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


BAD_TOKENS = {
    "expired": lambda i: i.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                 nbf=int(time.time()) - 7200),
    "not yet valid": lambda i: i.token(nbf=int(time.time()) + 3600),
    "wrong audience": lambda i: i.token(aud="another-service"),
    "wrong issuer": lambda i: i.token(iss="https://login.example.org/realms/test"),
    "no exp": lambda i: i.token(exp=None),
    "unknown kid": lambda i: i.token(key=SigningKey.generate("RS256")),
    "other key, known kid": lambda i: i.token(key=SigningKey.generate("RS256"),
                                              kid=i.key("RS256").kid),
    "ES256 header on the RSA key": lambda i: jwt.encode(
        i.claims(), SigningKey.generate("ES256").private, algorithm="ES256",
        headers={"kid": i.key("RS256").kid}),
    "alg none": lambda i: _unsigned(i.claims()),
    "HS256 with the public key": _hs256_with_public_key,
    "not a JWT": lambda i: "not-a-token",
    "tampered claims": lambda i: _tampered(i.token()),
}


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] += " dicomweb.admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_tokens_not_to_be_trusted_are_401(client: httpx.AsyncClient,
                                                issuer: TokenIssuer, case: str) -> None:
    token = BAD_TOKENS[case](issuer)
    r = await client.get("/dicomweb/studies", headers=bearer(token))
    assert_refused(r, 401, "invalid_token")


async def test_each_refusal_says_why(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    expected = {"expired": "expired", "wrong audience": "audience", "wrong issuer": "issuer",
                "alg none": "'none' is not allowed", "unknown kid": "does not publish",
                "other key, known kid": "signature does not verify",
                "not yet valid": "not valid yet"}
    for case, words in expected.items():
        r = await client.get("/dicomweb/studies", headers=bearer(BAD_TOKENS[case](issuer)))
        assert words in r.headers["www-authenticate"], (case, r.headers["www-authenticate"])


async def test_clock_skew_is_allowed_for(sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    just_expired = issuer.token(exp=int(time.time()) - 20)
    for skew, status in ((60, 200), (0, 401)):
        settings = auth_settings(sample_pacs, issuer, auth_clock_skew=skew)
        async with open_app(settings) as (client, _):
            r = await client.get("/dicomweb/studies", headers=bearer(just_expired))
        assert r.status_code == status, skew


async def test_a_token_without_the_scope_is_403(client: httpx.AsyncClient,
                                                issuer: TokenIssuer,
                                                uids: tuple[str, str]) -> None:
    r = await client.get("/dicomweb/studies", headers=bearer(issuer.token(scope="openid")))
    challenge = assert_refused(r, 403, "insufficient_scope")
    assert 'scope="dicomweb.search"' in challenge
    search_only = issuer.token(scope="dicomweb.search")
    assert (await client.get("/dicomweb/studies", headers=bearer(search_only))).status_code \
        == 200
    study, series = uids
    for path in (f"/dicomweb/studies/{study}/series/{series}/metadata",
                 f"/dicomweb/studies/{study}/thumbnail",
                 f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID=1.2"):
        r = await client.get(path, headers=bearer(search_only))
        assert 'scope="dicomweb.retrieve"' in assert_refused(r, 403, "insufficient_scope")


async def test_post_on_the_studies_routes_needs_the_store_action(
        client: httpx.AsyncClient, issuer: TokenIssuer, uids: tuple[str, str]) -> None:
    """STOW-RS (``POST .../studies[/{study}]``) falls under ``store`` by its method."""
    study, _ = uids
    reader = issuer.token(scope=SEARCH_AND_RETRIEVE)
    writer = issuer.token(scope="dicomweb.store")
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{study}",
                 "/pacs/demo/dicomweb/studies"):
        assert_refused(await client.post(path, content=b""), 401, None)
        r = await client.post(path, content=b"", headers=bearer(reader))
        assert 'scope="dicomweb.store"' in assert_refused(r, 403, "insufficient_scope")
        r = await client.post(path, content=b"", headers=bearer(writer))
        assert r.status_code not in (401, 403), r.text  # past authorization (no route yet: 405)


async def test_roles_from_a_list_claim_and_a_custom_mapping(
        sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    settings = auth_settings(sample_pacs, issuer,
                             auth_scope_claims=["scope", "realm_access.roles"],
                             auth_action_scopes={"search": ["radiologist", "dicom:read"],
                                                 "retrieve": ["radiologist"]})
    async with open_app(settings) as (client, _):
        roles = issuer.token(scope="openid", realm_access={"roles": ["radiologist"]})
        assert (await client.get("/dicomweb/series", headers=bearer(roles))).status_code == 200
        scoped = issuer.token(scope="openid dicom:read")
        assert (await client.get("/dicomweb/series", headers=bearer(scoped))).status_code == 200
        other = issuer.token(scope="openid", realm_access={"roles": ["clerk"]})
        assert_refused(await client.get("/dicomweb/series", headers=bearer(other)), 403,
                       "insufficient_scope")


async def test_key_rotation_is_followed(sample_pacs: DemoPacs) -> None:
    """The issuer swaps its keys: a token with a new kid makes the gateway fetch the JWKS
    again and is accepted; tokens of the retired keys are refused from then on."""
    with RunningIssuer(("RS256",)) as issuer:
        async with open_app(auth_settings(sample_pacs, issuer)) as (client, _):
            old = issuer.token()
            assert (await client.get("/dicomweb/studies", headers=bearer(old))).status_code \
                == 200
            assert issuer.jwks_requests == 1
            issuer.rotate()
            new = issuer.token()
            r = await client.get("/dicomweb/studies", headers=bearer(new))
            assert r.status_code == 200, r.headers.get("www-authenticate")
            assert issuer.jwks_requests == 2
            assert_refused(await client.get("/dicomweb/studies", headers=bearer(old)), 401,
                           "invalid_token")


async def test_unknown_kids_do_not_hammer_the_issuer(sample_pacs: DemoPacs) -> None:
    with RunningIssuer(("RS256",)) as issuer:
        settings = auth_settings(sample_pacs, issuer, auth_jwks_min_refresh_interval=60)
        async with open_app(settings) as (client, _):
            good = issuer.token()
            assert (await client.get("/dicomweb/studies", headers=bearer(good))).status_code \
                == 200
            for _ in range(5):
                forged = issuer.token(key=SigningKey.generate("RS256"))
                assert_refused(await client.get("/dicomweb/studies", headers=bearer(forged)),
                               401, "invalid_token")
            assert issuer.jwks_requests == 1  # the first fetch; the forgeries asked nothing
            assert issuer.discovery_requests == 1


async def test_the_keys_are_fetched_again_when_their_cache_expires(
        sample_pacs: DemoPacs) -> None:
    with RunningIssuer(("ES256",)) as issuer:
        settings = auth_settings(sample_pacs, issuer, auth_jwks_cache_ttl=2.0,
                                 auth_jwks_min_refresh_interval=60)
        async with open_app(settings) as (client, _):
            assert issuer.jwks_requests == 1  # fetched at start-up
            old = issuer.token("ES256")
            assert (await client.get("/dicomweb/studies", headers=bearer(old))).status_code \
                == 200
            fetched = issuer.jwks_requests
            issuer.rotate()
            await asyncio.sleep(2.1)
            # The old key is gone after the expiry refetch, without any unknown kid asking.
            assert_refused(await client.get("/dicomweb/studies", headers=bearer(old)), 401,
                           "invalid_token")
            assert issuer.jwks_requests == fetched + 1
            new = issuer.token("ES256")
            assert (await client.get("/dicomweb/studies", headers=bearer(new))).status_code \
                == 200
            assert issuer.jwks_requests == fetched + 1


async def test_an_unreachable_issuer_is_503(sample_pacs: DemoPacs,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with RunningIssuer(("RS256",)) as issuer:
        token = issuer.token()
    settings = auth_settings(sample_pacs, issuer)  # the issuer has stopped listening
    async with open_app(settings) as (client, _):
        assert any("requests with tokens are answered 503" in r.getMessage()
                   for r in caplog.records)  # said at start-up
        r = await client.get("/dicomweb/studies", headers=bearer(token))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "issuer" in r.json()["00000902"]["Value"][0]


def _api_key(name: str, key: str, actions: list[str], salt: str = "",
             **extra: Any) -> dict[str, Any]:
    digest = hashlib.sha256((salt + key).encode()).hexdigest()
    return {"name": name, "sha256": digest, "salt": salt, "actions": actions, **extra}


async def test_api_keys(sample_pacs: DemoPacs, uids: tuple[str, str]) -> None:
    keys = [_api_key("ai-service", API_KEY, ["search", "retrieve"]),
            _api_key("indexer", "another-key-0123456789abcdef", ["search"], salt="c0ffee")]
    study, series = uids
    async with open_app(auth_settings(sample_pacs, None, api_keys=keys)) as (client, _):
        for header in ({"X-API-Key": API_KEY}, {"Authorization": f"ApiKey {API_KEY}"}):
            r = await client.get(f"/dicomweb/studies/{study}/series/{series}/metadata",
                                 headers={**header, "Accept": DICOM_JSON})
            assert r.status_code == 200
        salted = {"X-API-Key": "another-key-0123456789abcdef"}
        assert (await client.get("/dicomweb/studies", headers=salted)).status_code == 200
        r = await client.get(f"/dicomweb/studies/{study}/series/{series}/metadata",
                             headers=salted)
        assert_refused(r, 403, "insufficient_scope")
        for wrong in ({"X-API-Key": API_KEY + "x"}, {"Authorization": "ApiKey nope"},
                      {"X-API-Key": hashlib.sha256(API_KEY.encode()).hexdigest()},
                      {"Authorization": f"Bearer {API_KEY}"}):
            assert_refused(await client.get("/dicomweb/studies", headers=wrong), 401,
                           "invalid_token")
        r = await client.get("/dicomweb/studies")
        assert_refused(r, 401, None)
        assert r.headers.get_list("www-authenticate")[1] == 'ApiKey realm="dicomweb-gateway"'


async def test_api_keys_are_configured_hashed_only() -> None:
    with pytest.raises(ConfigurationError, match="sha256"):
        gateway_settings(peer_config(104), auth_enabled=True,
                         api_keys=[{"name": "x", "sha256": API_KEY, "actions": ["search"]}])
    with pytest.raises(ConfigurationError, match="auth_enabled"):
        gateway_settings(peer_config(104), auth_enabled=True)
    with pytest.raises(ConfigurationError, match="HS256"):
        gateway_settings(peer_config(104), auth_algorithms=["RS256", "HS256"])
    with pytest.raises(ConfigurationError, match="none"):
        gateway_settings(peer_config(104), auth_algorithms=["none"])


async def test_per_pacs_claim(sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    """Two names for the demo PACS; a token's ``pacs`` claim opens only those it lists."""
    peers = [peer_config(sample_pacs.port, name="main"),
             peer_config(sample_pacs.port, name="research")]
    keys = [_api_key("research-bot", API_KEY, ["search"], pacs=["research"])]
    settings = auth_settings(sample_pacs, issuer, peers=peers, auth_pacs_claim="pacs",
                             api_keys=keys)
    async with open_app(settings) as (client, _):
        main_only = bearer(issuer.token(pacs=["main"]))
        assert (await client.get("/dicomweb/studies", headers=main_only)).status_code == 200
        r = await client.get("/pacs/main/dicomweb/studies", headers=main_only)
        assert r.status_code == 200
        r = await client.get("/pacs/research/dicomweb/studies", headers=main_only)
        assert "research" in assert_refused(r, 403, "insufficient_scope")
        everywhere = bearer(issuer.token(pacs="main research"))
        r = await client.get("/pacs/research/dicomweb/studies", headers=everywhere)
        assert r.status_code == 200
        no_claim = bearer(issuer.token())
        assert_refused(await client.get("/dicomweb/studies", headers=no_claim), 403,
                       "insufficient_scope")
        bot = {"X-API-Key": API_KEY}
        assert (await client.get("/pacs/research/dicomweb/studies",
                                 headers=bot)).status_code == 200
        assert_refused(await client.get("/dicomweb/studies", headers=bot), 403,
                       "insufficient_scope")


async def test_admin_token_and_admin_scope(sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    settings = auth_settings(sample_pacs, issuer, cache_admin_enabled=True,
                             admin_token=ADMIN_TOKEN)
    async with open_app(settings) as (client, _):
        r = await client.get("/admin/cache/stats",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200 and r.json()["backend"] == "memory"
        admin = issuer.token(scope="dicomweb.admin")
        r = await client.get("/admin/cache/stats", headers=bearer(admin))
        assert r.status_code == 200
        r = await client.post("/admin/cache/clear", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        reader = issuer.token()
        r = await client.get("/admin/cache/stats", headers=bearer(reader))
        assert 'scope="dicomweb.admin"' in assert_refused(r, 403, "insufficient_scope")
        assert_refused(await client.get("/admin/cache/stats"), 401, None)
        # The admin token opens the admin endpoints only.
        r = await client.get("/dicomweb/studies",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert_refused(r, 401, "invalid_token")
        # The foreign-Origin guard still holds for an admin credential.
        r = await client.get("/admin/cache/stats", headers={
            "Authorization": f"Bearer {admin}", "Origin": "https://elsewhere.example"})
        assert r.status_code == 403


async def test_admin_without_admin_token_when_auth_is_on(sample_pacs: DemoPacs,
                                                         issuer: TokenIssuer) -> None:
    settings = auth_settings(sample_pacs, issuer, cache_admin_enabled=True)
    async with open_app(settings) as (client, _):
        r = await client.get("/admin/prefetch",
                             headers=bearer(issuer.token(scope="dicomweb.admin")))
        assert r.status_code == 200 and r.json() == {"state": "idle"}
        assert_refused(await client.get("/admin/prefetch",
                                        headers={"Authorization": "Bearer not-the-admin-token"}),
                       401, "invalid_token")


async def test_cors_preflight_and_refusals_readable_by_browsers(
        sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    viewer = "https://viewer.example.org"
    settings = auth_settings(sample_pacs, issuer, cors_allow_origins=[viewer])
    async with open_app(settings) as (client, _):
        r = await client.options("/dicomweb/studies", headers={
            "Origin": viewer, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == viewer
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "GET" in r.headers["access-control-allow-methods"]
        r = await client.get("/dicomweb/studies", headers={"Origin": viewer})
        assert_refused(r, 401, None)
        assert r.headers["access-control-allow-origin"] == viewer
        assert "www-authenticate" in r.headers["access-control-expose-headers"].lower()
        r = await client.get("/dicomweb/studies",
                             headers={"Origin": viewer, **bearer(issuer.token())})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == viewer
        # OPTIONS without CORS headers is the Capabilities Description, open too.
        r = await client.options("/dicomweb")
        assert r.status_code == 200 and b"application" in r.content


async def test_operator_endpoints(sample_pacs: DemoPacs, issuer: TokenIssuer) -> None:
    async with open_app(auth_settings(sample_pacs, issuer)) as (client, _):
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path
    settings = auth_settings(sample_pacs, issuer, auth_metrics_open=False)
    async with open_app(settings) as (client, _):
        assert (await client.get("/healthz")).status_code == 200
        assert_refused(await client.get("/metrics"), 401, None)
        r = await client.get("/metrics", headers=bearer(issuer.token()))
        assert_refused(r, 403, "insufficient_scope")
        r = await client.get("/metrics", headers=bearer(issuer.token(scope="dicomweb.admin")))
        assert r.status_code == 200
