"""Cache management over HTTP (enabled by the cache_admin_enabled setting): stats, evict, clear."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse

from app.api.state import ServicesDep
from app.dicomweb.refs import check_uid
from app.errors import BadRequest, NotFound

router = APIRouter(prefix="/admin/cache", tags=["admin"])


@router.get("/stats", summary="Cache statistics")
async def cache_stats(services: ServicesDep) -> JSONResponse:
    """Backend, size and hit figures, and whether the shared backend answers."""
    if services.backend is None:
        return JSONResponse({"backend": "none"})
    stats = await services.backend.stats()
    stats["fills_in_progress"] = services.flights.running if services.flights else 0
    return JSONResponse(stats)


@router.post("/evict", summary="Evict a study or series from the cache")
async def cache_evict(services: ServicesDep, study: str | None = Query(None),
                      series: str | None = Query(None),
                      pacs: str | None = Query(None)) -> JSONResponse:
    """Remove one study's (or series') instances, metadata and indexes."""
    if not study and not series:
        raise BadRequest("give study=<StudyInstanceUID> or series=<SeriesInstanceUID>")
    try:
        cache = services.cache(pacs)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    if cache is None:
        return JSONResponse({"removed": 0, "backend": "none"})
    removed = 0
    if study:
        removed += await cache.evict_study(check_uid(study, "study"))
    if series:
        removed += await cache.evict_series(check_uid(series, "series"))
    return JSONResponse({"removed": removed})


@router.post("/clear", summary="Clear the whole cache")
async def cache_clear(services: ServicesDep) -> JSONResponse:
    """Remove every key the gateway stored."""
    if services.backend is None:
        return JSONResponse({"removed": 0, "backend": "none"})
    return JSONResponse({"removed": await services.backend.clear()})
