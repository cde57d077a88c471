"""Request path normalisation before routing: empty path segments (``//``) are collapsed, so a
client that joins URLs carelessly (``{root}/`` + ``/studies``) reaches the same resource."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

_SLASHES = re.compile(r"/{2,}")
_RAW_SLASHES = re.compile(rb"/{2,}")


class EmptySegmentsMiddleware:
    """Collapses runs of slashes in the HTTP request path (``path`` and ``raw_path``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope.get("path", ""):
            scope = dict(scope)
            scope["path"] = _SLASHES.sub("/", scope["path"])
            raw = scope.get("raw_path")
            if isinstance(raw, bytes):
                scope["raw_path"] = _RAW_SLASHES.sub(b"/", raw)
        await self.app(scope, receive, send)
