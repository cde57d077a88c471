"""Liveness and readiness: /healthz answers while the process runs; /readyz C-ECHOes each PACS."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, PlainTextResponse

from app.api.state import ServicesDep
from app.errors import GatewayError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: C-ECHO every configured PACS")
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when every PACS answers C-ECHO, else 503 with what failed; the cache's state too."""
    peers: dict[str, dict[str, object]] = {}
    ready = True
    for peer in services.settings.pacs:
        try:
            rtt = await services.echo(peer.name)
            peers[peer.name] = {"status": "ok", "echo_ms": round(rtt * 1000, 1)}
        except GatewayError as exc:
            ready = False
            peers[peer.name] = {"status": "unavailable", "error": exc.message}
    cache = await services.cache_health()
    # A degraded cache still serves (pass-through): reported, but the gateway stays ready.
    status = "ok" if ready and cache["status"] != "degraded" else "degraded"
    return JSONResponse({"status": status, "pacs": peers, "cache": cache},
                        status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Counters and gauges in the Prometheus text format."""
    return PlainTextResponse(services.metrics.render(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
