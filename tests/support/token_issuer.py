"""A real OpenID Connect token issuer for the tests: an HTTP server on 127.0.0.1 serving its
discovery document and JWKS, with RSA and EC signing keys generated for the run, that mints
tokens the way an identity provider would (and, on request, the broken ones it never would).
Keys can be rotated while it runs; it counts the JWKS requests it answers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "dicomweb-gateway"
REALM = "/realms/test"  # the issuer identifier has a path, as Keycloak's do


@dataclass
class SigningKey:
    """A private key, its key id and algorithm; ``public_jwk`` is what the JWKS publishes."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def generate(cls, algorithm: str) -> SigningKey:
        if algorithm.startswith("ES"):
            private: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}", algorithm, private)

    @property
    def public_jwk(self) -> dict[str, Any]:
        codec = ECAlgorithm if self.algorithm.startswith("ES") else RSAAlgorithm
        jwk: dict[str, Any] = json.loads(codec.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return jwk

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class TokenIssuer:
    """The issuer's state; ``url`` is its issuer identifier (``iss``)."""

    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    jwks_requests: int = 0
    discovery_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self, algorithm: str = "RS256") -> SigningKey:
        """The published key for ``algorithm``."""
        return next(k for k in self.keys if k.algorithm == algorithm)

    def rotate(self) -> list[SigningKey]:
        """Replace every key with a new one of the same algorithm (new key ids)."""
        with self.lock:
            self.keys = [SigningKey.generate(k.algorithm) for k in self.keys]
            return list(self.keys)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Standard claims of a valid token (five minutes), overridden; None removes one."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.url, "aud": AUDIENCE, "sub": "user-1",
                                  "iat": now, "nbf": now, "exp": now + 300,
                                  "scope": "openid dicomweb.search dicomweb.retrieve"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, algorithm: str = "RS256", *, key: SigningKey | None = None,
              kid: str | None = None, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A token signed by the issuer's key for ``algorithm`` (or ``key``)."""
        signer = key or self.key(algorithm)
        header = {"kid": kid or signer.kid, **(headers or {})}
        return jwt.encode(self.claims(**claims), signer.private, algorithm=signer.algorithm,
                          headers=header)


def _handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.removeprefix(REALM)
            if path == "/.well-known/openid-configuration":
                with issuer.lock:
                    issuer.discovery_requests += 1
                body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks",
                        "authorization_endpoint": f"{issuer.url}/authorize",
                        "token_endpoint": f"{issuer.url}/token",
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
            elif path == "/jwks":
                with issuer.lock:
                    issuer.jwks_requests += 1
                    body = {"keys": [k.public_jwk for k in issuer.keys]}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


class RunningIssuer:
    """``with RunningIssuer() as issuer``: the issuer listening on 127.0.0.1 (free port)."""

    def __init__(self, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> None:
        self.issuer = TokenIssuer(keys=[SigningKey.generate(a) for a in algorithms])
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.issuer))
        self._server.daemon_threads = True
        self.issuer.url = f"http://127.0.0.1:{self._server.server_address[1]}{REALM}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenIssuer:
        self._thread.start()
        return self.issuer

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
