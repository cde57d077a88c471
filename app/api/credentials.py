"""Who a request's credential names and what it may do: OAuth 2.0 bearer tokens (JWTs of an
OIDC issuer, verified with PyJWT against the issuer's JWKS) and static API keys (configured by
their SHA-256 hash, compared in constant time). Neither knows about HTTP responses: a refused
credential is a ``Refusal`` that app.api.authorization turns into 401, 403 or 503.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from app.api.jwks import IssuerUnavailable, JwksCache, signing_key
from app.settings import ApiKey, Settings

ADMIN_TOKEN_SUBJECT = "admin-token"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name for the audit trail, how it authenticated, the
    actions it is granted and the PACS it may reach (None: every PACS)."""

    subject: str
    kind: Literal["token", "api-key", "admin-token"]
    actions: frozenset[str]
    pacs: frozenset[str] | None = None

    def reaches(self, pacs: str) -> bool:
        """Whether the PACS of that name is open to this caller."""
        return self.pacs is None or pacs in self.pacs or "*" in self.pacs


class Refusal(Exception):  # noqa: N818 - an outcome of checking a credential
    """A credential refused: ``status`` 401 (missing or invalid), 403 (valid, but not for
    this) or 503 (the issuer's keys cannot be had); ``error`` is RFC 6750's code, if any."""

    def __init__(self, status: int, description: str, error: str | None = None, *,
                 principal: Principal | None = None, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.error = error
        self.principal = principal
        self.scope = scope


def invalid(description: str) -> Refusal:
    """401 invalid_token (RFC 6750 3.1)."""
    return Refusal(401, description, "invalid_token")


class TokenVerifier:
    """Checks bearer JWTs: signature by a key of the issuer's JWKS with an allowed
    asymmetric algorithm, ``iss``, ``aud``, ``exp`` (required) and ``nbf`` within the clock
    skew; the granted actions come from the scope claims."""

    def __init__(self, settings: Settings, jwks: JwksCache) -> None:
        assert settings.auth_issuer is not None
        self._issuer = settings.auth_issuer
        self._audience = list(settings.auth_audience)
        self._algorithms = set(settings.auth_algorithms)
        self._leeway = settings.auth_clock_skew
        self._scope_claims = list(settings.auth_scope_claims)
        self._action_scopes = {action: set(scopes)
                               for action, scopes in settings.auth_action_scopes.items()}
        self._pacs_claim = settings.auth_pacs_claim
        self.jwks = jwks

    async def verify(self, token: str) -> Principal:
        """The Principal the token names; Refusal(401) for any token not to be trusted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise invalid(f"token algorithm {str(algorithm)[:20]!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid("token key id is not a string")
        try:
            jwk = await self.jwks.key(kid)
        except IssuerUnavailable as exc:
            raise Refusal(503, f"the token issuer's keys cannot be fetched: {exc}") from None
        if jwk is None:
            raise invalid(f"token signed with a key the issuer does not publish "
                          f"(kid {str(kid)[:64]!r})")
        try:
            key = signing_key(jwk, algorithm)
        except ValueError as exc:
            raise invalid(f"token key does not fit its algorithm: {exc}") from None
        claims = self._decode(token, key, algorithm)
        subject = _first_string(claims, ("sub", "client_id", "azp")) or "unknown"
        return Principal(subject, "token", self._actions(claims), self._pacs(claims))

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        """The verified claims; each rejection named."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[algorithm], audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True})
        except jwt.ExpiredSignatureError:
            raise invalid("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise invalid("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise invalid("the token is not issued for this audience") from None
        except jwt.InvalidIssuerError:
            raise invalid("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise invalid("the token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise invalid(f"the token is invalid: {type(exc).__name__}") from None
        return claims

    def _actions(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The actions whose scopes (or roles) the token carries."""
        granted: set[str] = set()
        for claim in self._scope_claims:
            granted.update(_words(_claim(claims, claim)))
        return frozenset(action for action, scopes in self._action_scopes.items()
                         if scopes & granted)

    def _pacs(self, claims: Mapping[str, Any]) -> frozenset[str] | None:
        """The PACS the token's PACS claim lists (none when the claim is missing); None when
        no PACS claim is configured."""
        if self._pacs_claim is None:
            return None
        return frozenset(_words(_claim(claims, self._pacs_claim)))


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _words(value: Any) -> list[str]:
    """A space-separated string claim (OAuth ``scope``) or a list of strings (``roles``)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _first_string(claims: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value[:256]
    return None


def api_key_digest(salt: str, key: str) -> bytes:
    """SHA-256 of the salt followed by the key, both UTF-8: what ``api_keys[].sha256`` holds."""
    return hashlib.sha256(salt.encode("utf-8") + key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """The configured API keys; a presented key is hashed (with each key's salt) and compared
    with every configured hash in constant time, without stopping at the first match."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [(key, bytes.fromhex(key.sha256)) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def find(self, presented: str) -> Principal | None:
        """The Principal of the key, or None for a key that is not configured."""
        found: ApiKey | None = None
        for key, digest in self._keys:
            if hmac.compare_digest(api_key_digest(key.salt, presented), digest) and found is None:
                found = key
        if found is None:
            return None
        return Principal(found.name, "api-key", frozenset(found.actions),
                         frozenset(found.pacs) if found.pacs is not None else None)
