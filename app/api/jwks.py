"""The token issuer's signing keys: its JWKS, found through OpenID Connect discovery
(``{issuer}/.well-known/openid-configuration`` -> ``jwks_uri``) unless configured, fetched with
httpx, cached for ``auth_jwks_cache_ttl`` and fetched again when that passes (key rotation) or
when a token names a key id the cache does not hold (at most once per
``auth_jwks_min_refresh_interval``, so tokens with made-up key ids cannot make the gateway
hammer the issuer). A failed refresh keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)
MAX_DOCUMENT_BYTES = 1 << 20  # a discovery document or JWKS is a few kilobytes


class IssuerUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be fetched and no keys are known."""


class JwksCache:
    """The signing keys of one issuer, by key id, fetched when needed (see module)."""

    def __init__(self, issuer: str, *, jwks_url: str | None = None, ttl: float = 3600.0,
                 min_refresh_interval: float = 30.0, timeout: float = 5.0) -> None:
        self.issuer = issuer
        self._jwks_url = jwks_url
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._fetched_at: float | None = None  # monotonic time of the last fetch that succeeded
        self._tried_at: float | None = None  # of the last attempt, successful or not
        self._lock: asyncio.Lock | None = None

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK for ``kid`` (a JWKS of one signing key also serves a token without kid), or
        None when the issuer does not publish it. Raises IssuerUnavailable when no key at all
        could ever be fetched."""
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            # First use, or the cached keys expired (rotation).
            await self._refresh(min(self._ttl, self._min_interval))
        if not self._keys:
            raise IssuerUnavailable(f"no signing keys of {self.issuer} could be fetched")
        found = self._lookup(kid)
        if found is None:
            await self._refresh(self._min_interval)  # an unknown kid: keys rotated early?
            found = self._lookup(kid)
        return found

    async def load(self) -> None:
        """Fetch the keys now (at start-up); IssuerUnavailable when none could be."""
        await self._refresh(0.0)
        if not self._keys:
            raise IssuerUnavailable(f"no signing keys of {self.issuer} could be fetched")

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self, interval: float) -> None:
        """Fetch the JWKS once however many requests want it (single flight), unless the last
        attempt was less than ``interval`` seconds ago."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        tried = self._tried_at
        async with self._lock:
            if self._tried_at != tried:  # another request refreshed while this one waited
                return
            if self._tried_at is not None and time.monotonic() - self._tried_at < interval:
                return
            self._tried_at = time.monotonic()
            try:
                keys = await self._fetch()
            except IssuerUnavailable as exc:
                log.warning("token issuer keys not fetched%s: %s",
                            ", the known ones stay" if self._keys else "", exc)
                return
            self._keys, self._fetched_at = keys, time.monotonic()

    async def _fetch(self) -> dict[str | None, dict[str, Any]]:
        """The issuer's signing keys by key id."""
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            url = self._jwks_url or await self._discover(client)
            document = await _get_json(client, url)
        keys: dict[str | None, dict[str, Any]] = {}
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            if jwk.get("kty") not in ("RSA", "EC", "OKP") or "d" in jwk:
                continue  # symmetric keys are never accepted; private parts never belong here
            keys[jwk.get("kid")] = jwk
        if not keys:
            raise IssuerUnavailable(f"{url} lists no signing key")
        log.info("token issuer %s: %d signing key(s) fetched from %s", self.issuer, len(keys),
                 url)
        return keys

    async def _discover(self, client: httpx.AsyncClient) -> str:
        """``jwks_uri`` of the issuer's discovery document, whose ``issuer`` must be ours."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await _get_json(client, url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise IssuerUnavailable(f"{url} names another issuer than {self.issuer}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IssuerUnavailable(f"{url} has no jwks_uri")
        return jwks_uri


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    """A small JSON document; IssuerUnavailable for anything else."""
    try:
        response = await client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise IssuerUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise IssuerUnavailable(f"{url} answered HTTP {response.status_code}")
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return response.json()
    except ValueError:
        raise IssuerUnavailable(f"{url} did not answer JSON") from None


def signing_key(jwk: dict[str, Any], algorithm: str) -> Any:
    """The public key of ``jwk`` for ``algorithm``; ValueError when the JWK is of another
    algorithm or key type (an RSA key never verifies an ES256 token, nor the reverse)."""
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise ValueError(f"key is for {declared}, the token says {algorithm}")
    try:
        return jwt.PyJWK(jwk, algorithm=algorithm).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError) as exc:
        raise ValueError(f"key does not fit {algorithm}: {exc}") from None
