"""Authorization (the ``auth_enabled`` setting): every request's credential is checked before
any route runs, against the action the request performs (app.api.access) and the PACS it
reaches. A request without a credential, or with one that is not valid, is answered 401 with an
RFC 6750 ``WWW-Authenticate: Bearer`` challenge; a valid credential without the right is 403
``insufficient_scope``. Both carry the gateway's DICOM JSON error body.

It is one ASGI middleware rather than a dependency of each route so that nothing is mounted
unprotected by mistake: a route added later falls under the rule of its method and path
(``POST`` on the DICOMweb routes is ``store``), and a path no rule names still needs a valid
credential. OPTIONS (CORS preflight, the Capabilities Description), /healthz, /readyz and the
API description stay open; /metrics is open unless ``auth_metrics_open`` is false.
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.access import Access, classify
from app.api.credentials import (
    ADMIN_TOKEN_SUBJECT,
    ApiKeys,
    Principal,
    Refusal,
    TokenVerifier,
    invalid,
)
from app.api.jwks import IssuerUnavailable, JwksCache
from app.api.problems import problem
from app.settings import Settings

log = logging.getLogger(__name__)
#: Keys of the ASGI scope where the request's Access, Principal and Refusal are left for the
#: routes (the admin guard) and the audit trail.
ACCESS_KEY = "dwg.access"
PRINCIPAL_KEY = "dwg.principal"
REFUSAL_KEY = "dwg.refusal"
#: How the published OpenAPI document describes the credentials (app.main).
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "With auth_enabled: an OAuth 2.0 access token (JWT) of the auth_issuer "
                       "OIDC provider, for the auth_audience; its scopes (auth_scope_claims, "
                       "mapped by auth_action_scopes; dicomweb.search, dicomweb.retrieve, "
                       "dicomweb.store, dicomweb.admin by default) grant the actions. On "
                       "/admin/*, the admin_token is accepted too.",
    },
    "apiKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "With auth_enabled: a static API key (api_keys, configured by its "
                       "SHA-256 hash), also accepted as Authorization: ApiKey {key}.",
    },
}
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{"bearerToken": []}, {"apiKey": []}]
AUTH_ERRORS = {
    401: "Authorization on (auth_enabled): no credential, or one that is not valid "
         "(WWW-Authenticate: Bearer, with error=\"invalid_token\" for a refused one)",
    403: "Authorization on: a valid credential not granted this action or PACS "
         "(WWW-Authenticate: Bearer error=\"insufficient_scope\")",
}
_UNQUOTABLE = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')  # RFC 6750 3: no " or \


def access_of(scope: Scope, prefix: str) -> Access:
    """The request's Access, classified once and remembered in the scope."""
    access = scope.get(ACCESS_KEY)
    if not isinstance(access, Access):
        query = scope.get("query_string", b"").decode("latin-1")
        access = classify(scope.get("method", "GET"), scope.get("path", ""), query, prefix)
        scope[ACCESS_KEY] = access
    return access


class Authorizer:
    """Decides whether a credential may perform an Access (see module)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens: TokenVerifier | None = None
        if settings.auth_issuer:
            jwks = JwksCache(settings.auth_issuer, jwks_url=settings.auth_jwks_url,
                             ttl=settings.auth_jwks_cache_ttl,
                             min_refresh_interval=settings.auth_jwks_min_refresh_interval,
                             timeout=settings.auth_http_timeout)
            self.tokens = TokenVerifier(settings, jwks)
        self.api_keys = ApiKeys(settings.api_keys)
        self._default_pacs = settings.peer().name if settings.pacs else None

    async def warm_up(self) -> None:
        """Fetch the issuer's keys at start-up, so that a wrong ``auth_issuer`` shows in the
        log at once and the first request does not wait; a failure is only logged (the
        issuer may come up later)."""
        if self.tokens is None:
            return
        try:
            await self.tokens.jwks.load()
        except IssuerUnavailable as exc:
            log.warning("authorization: %s; requests with tokens are answered 503 until they "
                        "can be fetched", exc)

    async def authorize(self, access: Access, headers: Headers) -> Principal | None:
        """The caller, or None where no credential is needed; Refusal otherwise."""
        if access.kind == "open" or (access.kind == "metrics"
                                     and self.settings.auth_metrics_open):
            return None
        principal = await self.authenticate(headers, access)
        needed = "admin" if access.kind == "metrics" else access.action
        if needed is not None and needed not in principal.actions:
            scopes = " ".join(_scopes_of(self.settings, needed))
            raise Refusal(403, f"this credential is not granted the {needed} action",
                          "insufficient_scope", principal=principal, scope=scopes or None)
        pacs = access.pacs or self._default_pacs
        if access.names_pacs and pacs is not None and not principal.reaches(pacs):
            raise Refusal(403, f"this credential is not granted PACS {pacs[:64]!r}",
                          "insufficient_scope", principal=principal)
        return principal

    async def authenticate(self, headers: Headers, access: Access) -> Principal:
        """The Principal of the request's credential: ``Authorization: Bearer`` (a JWT, or
        the admin token on /admin/*), ``Authorization: ApiKey`` or ``X-API-Key``."""
        api_key = headers.get("x-api-key")
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            value = value.strip()
            if scheme.lower() == "bearer" and value:
                admin = self._admin_token_principal(value, access)
                if admin is not None:
                    return admin
                if self.tokens is None:
                    raise invalid("bearer tokens are not accepted here (no auth_issuer); "
                                  "use an API key")
                return await self.tokens.verify(value)
            if scheme.lower() == "apikey" and value:
                api_key = value
            elif api_key is None:
                raise invalid(f"the Authorization scheme {scheme[:20]!r} is not accepted")
        if api_key is not None:
            principal = self.api_keys.find(api_key.strip())
            if principal is None:
                raise invalid("the API key is not valid")
            return principal
        raise Refusal(401, "this resource needs a credential (Authorization: Bearer {token}"
                           + (", or an API key" if self.api_keys else "") + ")")

    def _admin_token_principal(self, value: str, access: Access) -> Principal | None:
        """The admin token (``admin_token``) keeps opening the admin endpoints."""
        token = self.settings.admin_token
        if access.kind != "admin" or token is None:
            return None
        if not hmac.compare_digest(value.encode("utf-8", "surrogateescape"),
                                   token.get_secret_value().encode("utf-8")):
            return None
        return Principal(ADMIN_TOKEN_SUBJECT, "admin-token", frozenset({"admin"}))


def _scopes_of(settings: Settings, action: str) -> list[str]:
    """The scopes that grant ``action``, named in a 403's challenge."""
    return next((scopes for name, scopes in settings.auth_action_scopes.items()
                 if name == action), [])


def challenge(scheme: str, realm: str, refusal: Refusal | None = None) -> str:
    """An RFC 6750 challenge: realm, and for a refused credential error, error_description
    (and scope for insufficient_scope)."""
    params = [f'realm="{realm}"']
    if refusal is not None and refusal.error is not None:
        params.append(f'error="{refusal.error}"')
        params.append(f'error_description="{_UNQUOTABLE.sub("", refusal.description)[:200]}"')
        if refusal.scope:
            params.append(f'scope="{_UNQUOTABLE.sub("", refusal.scope)}"')
    return f"{scheme} " + ", ".join(params)


def refusal_response(refusal: Refusal, realm: str, *, api_keys: bool) -> Response:
    """The 401, 403 or 503 answering a refused credential, with its challenge(s)."""
    if refusal.status == 503:
        return problem(503, refusal.description, headers={"Retry-After": "30"})
    response = problem(refusal.status, refusal.description)
    response.headers.append("WWW-Authenticate", challenge("Bearer", realm, refusal))
    if api_keys and refusal.status == 401:
        response.headers.append("WWW-Authenticate", challenge("ApiKey", realm))
    return response


class AuthorizationMiddleware:
    """Checks each HTTP request's credential before routing (see module)."""

    def __init__(self, app: ASGIApp, settings: Settings, authorizer: Authorizer) -> None:
        self.app = app
        self.settings = settings
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = access_of(scope, self.settings.dicomweb_prefix)
        try:
            principal = await self.authorizer.authorize(access, Headers(scope=scope))
        except Refusal as refusal:
            scope[REFUSAL_KEY] = refusal
            log.info("%s %s refused %d: %s", scope.get("method"), scope.get("path"),
                     refusal.status, refusal.description)
            response = refusal_response(refusal, self.settings.auth_realm,
                                        api_keys=bool(self.authorizer.api_keys))
            await response(scope, receive, send)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)
