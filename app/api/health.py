"""Liveness and readiness: /healthz answers while the process runs; /readyz C-ECHOes each PACS."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse

from app.api.params import COMMON_ERRORS, errors
from app.api.state import ServicesDep
from app.errors import GatewayError
from app.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", responses=errors(COMMON_ERRORS))
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: C-ECHO every configured PACS",
            responses={503: {"description": "A PACS does not answer C-ECHO (same body)",
                             "content": {"application/json": {}}},
                       **errors(COMMON_ERRORS)})
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when every PACS answers C-ECHO, else 503 with what failed; the cache's state too,
    and the operation each PACS is retrieved with (``retrieve``: C-GET or C-MOVE).

    Each failure is told to clients in general terms ("PACS main is unavailable"); its detail
    (AE title, host, port, the reason) goes to the log when a PACS stops answering, and into the
    answer only with the ``readyz_details`` setting."""
    peers: dict[str, dict[str, object]] = {}
    ready = True
    failing: set[str] = getattr(request.app.state, "readyz_failing", set())
    for peer in services.settings.pacs:
        try:
            rtt = await services.echo(peer.name)
            peers[peer.name] = {"status": "ok", "echo_ms": round(rtt * 1000, 1)}
            if peer.name in failing:
                failing.discard(peer.name)
                log.warning("readiness: PACS %s answers C-ECHO again", peer.name)
        except GatewayError as exc:
            ready = False
            peers[peer.name] = {"status": "unavailable", "error": exc.message}
            if services.settings.readyz_details:
                peers[peer.name]["detail"] = exc.detail
            if peer.name not in failing:
                failing.add(peer.name)
                log.warning("readiness: %s", exc.detail)
    for name, report in peers.items():  # how each PACS is retrieved from (learned for "auto")
        report["retrieve"] = services.retrieve_operation(name)
    request.app.state.readyz_failing = failing
    cache = await services.cache_health()
    # A degraded cache still serves (pass-through): reported, but the gateway stays ready.
    status = "ok" if ready and cache["status"] != "degraded" else "degraded"
    return JSONResponse({"status": status, "pacs": peers, "cache": cache},
                        status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
            responses=errors(COMMON_ERRORS))
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Counters and gauges in the Prometheus text format."""
    return PlainTextResponse(services.metrics.render(), media_type=CONTENT_TYPE)
