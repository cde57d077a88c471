"""Per-route HTTP metrics: latency by route template, method and status, and response bytes,
recorded by an ASGI middleware (streamed responses are timed until their last byte)."""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"  # one label for every path no route serves (no per-path cardinality)


def route_template(scope: Scope) -> str:
    """The full path template of the route that served the request
    (``/pacs/{pacs}/dicomweb/studies/{study}``), or ``unmatched``."""
    found = _template(scope)
    if found is None:  # an inner middleware routed a copy of the scope: match again
        router = getattr(scope.get("app"), "router", None)
        for candidate in getattr(router, "routes", ()):
            match, child = candidate.matches(scope)
            if match == Match.FULL:
                found = _template({**scope, **child})
                break
    return found or UNMATCHED


def _template(scope: Scope) -> str | None:
    """The template FastAPI routed ``scope`` by: its effective route (included routers keep
    their own relative paths in ``route``), else the route's own path."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path", None) or getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else None


class RequestMetricsMiddleware:
    """Observes each HTTP request in the app's metrics (``app.state.services.metrics``, once the
    lifespan has created them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers when the app fails before starting a response
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self._record(scope, status, sent, time.perf_counter() - start)

    @staticmethod
    def _record(scope: Scope, status: int, sent: int, elapsed: float) -> None:
        services: Any = getattr(getattr(scope.get("app"), "state", None), "services", None)
        metrics = getattr(services, "metrics", None)
        if metrics is None:
            return
        route, method = route_template(scope), str(scope.get("method", ""))
        metrics.observe("http_request_duration_seconds", elapsed, route=route, method=method,
                        status=str(status))
        if sent:
            metrics.inc("http_response_bytes_total", sent, route=route, method=method)
