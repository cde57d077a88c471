"""Cache management over HTTP (enabled by the cache_admin_enabled setting): stats, evict, clear.

Every admin request must carry ``Authorization: Bearer {admin_token}`` (compared in constant
time) or, with authorization on (``auth_enabled``), any credential granted the ``admin`` action
(app.api.authorization checked it before the route), must not come from a foreign
``Origin`` (a browser page elsewhere), and a POST takes a JSON body or none: form content
types, which a cross-site HTML form can send without a CORS preflight, are refused.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from app.api.authorization import PRINCIPAL_KEY
from app.api.baseurl import request_origin
from app.api.credentials import ADMIN_TOKEN_SUBJECT, Principal
from app.api.params import COMMON_ERRORS, errors
from app.api.state import ServicesDep
from app.dicomweb.refs import check_uid
from app.errors import BadRequest, Forbidden, NotFound, Unauthorized, UnsupportedMediaType
from app.services.worklist_prefetch import PrefetchRequest

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="The admin_token setting")
MAX_BODY = 4096  # an evict request is a few UIDs
MAX_PREFETCH_BODY = 1 << 20  # a worklist of a few thousand StudyInstanceUIDs


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower case."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """403 for a foreign Origin, 401 without the admin token, 415 for a non-JSON body."""
    settings = request.app.state.services.settings
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() != _origin_of(request_origin(request, settings)):
        log.warning("admin request from foreign Origin %r refused", origin[:100])
        raise Forbidden("admin requests from another origin are refused")
    principal = request.scope.get(PRINCIPAL_KEY)
    if not (isinstance(principal, Principal) and "admin" in principal.actions):
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        given = credentials.credentials if credentials is not None else ""
        if not token or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            log.warning("admin request without a valid token refused (%s %s)", request.method,
                        request.url.path)
            raise Unauthorized("the admin endpoints need Authorization: Bearer {admin_token}")
        # Named in the audit trail as the admin token.
        request.scope[PRINCIPAL_KEY] = Principal(ADMIN_TOKEN_SUBJECT, "admin-token",
                                                 frozenset({"admin"}))
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        has_body = (request.headers.get("content-length", "0") not in ("", "0")
                    or "transfer-encoding" in request.headers)
        if has_body and content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType("admin requests take a JSON body (application/json)")


router = APIRouter(prefix="/admin/cache", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=errors({**COMMON_ERRORS, 401: "Missing or wrong admin token",
                                     403: "Request from a foreign Origin"}))


class EvictRequest(BaseModel):
    """What to evict: a study, a series, or both, from one PACS's cache."""

    model_config = ConfigDict(extra="forbid")

    study: str | None = Field(None, max_length=64, description="StudyInstanceUID")
    series: str | None = Field(None, max_length=64, description="SeriesInstanceUID")
    pacs: str | None = Field(None, max_length=64, description="PACS name (default: the default)")


async def _json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 400 when malformed or too large."""
    raw = await request.body()
    if len(raw) > limit:
        raise BadRequest(f"admin request body larger than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("admin request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("admin request body must be a JSON object")
    return value


@router.get("/stats", summary="Cache statistics")
async def cache_stats(services: ServicesDep) -> JSONResponse:
    """Backend, size and hit figures, and whether the shared backend answers."""
    if services.backend is None:
        return JSONResponse({"backend": "none"})
    stats = await services.backend.stats()
    stats["fills_in_progress"] = services.flights.running if services.flights else 0
    return JSONResponse(stats)


_EVICT_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": EvictRequest.model_json_schema()}}}}


@router.post("/evict", summary="Evict a study or series from the cache",
             openapi_extra=_EVICT_BODY,
             responses=errors({400: "Neither study nor series, or a malformed UID or body",
                               404: "Unknown PACS name",
                               415: "A body that is not application/json"}))
async def cache_evict(request: Request, services: ServicesDep) -> JSONResponse:
    """Remove one study's (or series') instances, metadata and indexes."""
    # Read here, after require_admin: an unauthenticated request never has its body parsed.
    try:
        wanted = EvictRequest.model_validate(await _json_body(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"admin request body: {where}: {first['msg']}") from None
    if not wanted.study and not wanted.series:
        raise BadRequest('give {"study": StudyInstanceUID} or {"series": SeriesInstanceUID}')
    try:
        cache = services.cache(wanted.pacs)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    if cache is None:
        return JSONResponse({"removed": 0, "backend": "none"})
    removed = 0
    if wanted.study:
        removed += await cache.evict_study(check_uid(wanted.study, "study"))
    if wanted.series:
        removed += await cache.evict_series(check_uid(wanted.series, "series"))
    log.info("admin: evicted %d keys (study %s, series %s)", removed, wanted.study,
             wanted.series)
    return JSONResponse({"removed": removed})


@router.post("/clear", summary="Clear the whole cache",
             responses=errors({415: "A body that is not application/json"}))
async def cache_clear(services: ServicesDep) -> JSONResponse:
    """Remove every key the gateway stored."""
    if services.backend is None:
        return JSONResponse({"removed": 0, "backend": "none"})
    removed = await services.backend.clear()
    log.info("admin: cleared the cache (%d keys)", removed)
    return JSONResponse({"removed": removed})


prefetch_router = APIRouter(
    prefix="/admin/prefetch", tags=["admin"], dependencies=[Depends(require_admin)],
    responses=errors({**COMMON_ERRORS, 401: "Missing or wrong admin token",
                      403: "Request from a foreign Origin"}))


class PrefetchBody(BaseModel):
    """A worklist to prefetch: a QIDO-style study query or StudyInstanceUIDs, and bounds."""

    model_config = ConfigDict(extra="forbid")

    query: dict[str, str | int | list[str]] | None = Field(
        None, description="study-level QIDO-RS query parameters, e.g. "
                          '{"StudyDate": "today", "ModalitiesInStudy": "CT"}; relative dates '
                          "(today, yesterday, today-N, ranges of them) are resolved")
    studies: list[str] | None = Field(None, max_length=10_000,
                                      description="StudyInstanceUIDs to prefetch")
    max_studies: int | None = Field(None, description="at most this many studies (default 50)")
    max_bytes: int | None = Field(None, description="start no series once this many bytes "
                                                    "were filled (default: no limit)")
    concurrency: int | None = Field(None, description="series retrieved at once: the "
                                                      "association budget (default 1)")
    pacs: str | None = Field(None, max_length=64, description="PACS name (default: the default)")


_PREFETCH_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PrefetchBody.model_json_schema()}}}}


@prefetch_router.post("", summary="Start prefetching a worklist into the cache",
                      status_code=202, openapi_extra=_PREFETCH_BODY,
                      responses=errors({400: "Neither or both of query and studies, a bad "
                                             "query, UID or limit, or a malformed body",
                                        404: "Unknown PACS name",
                                        409: "A prefetch is already running, or caching is off",
                                        415: "A body that is not application/json"}))
async def start_prefetch(request: Request, services: ServicesDep) -> JSONResponse:
    """Resolve the studies and fill the cache with them in the background; 202 with the run's
    progress (poll ``GET /admin/prefetch``)."""
    try:
        body = PrefetchBody.model_validate(await _json_body(request, MAX_PREFETCH_BODY))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"admin request body: {where}: {first['msg']}") from None
    wanted = PrefetchRequest.of(body.query, body.studies, max_studies=body.max_studies,
                                max_bytes=body.max_bytes, concurrency=body.concurrency,
                                pacs=body.pacs)
    try:
        progress = services.worklist.start(wanted)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    # Parameter names only: values such as PatientName are patient data.
    log.info("admin: worklist prefetch %d started (%d studies listed, query on %s)",
             progress.run, len(wanted.studies), sorted({name for name, _ in wanted.query}))
    return JSONResponse(progress.as_json(), status_code=202)


@prefetch_router.get("", summary="Progress of the current or last worklist prefetch")
async def prefetch_progress(services: ServicesDep) -> JSONResponse:
    """Studies and series done and total, bytes, rate and ETA; ``{"state": "idle"}`` before the
    first run."""
    progress = services.worklist.progress
    return JSONResponse(progress.as_json() if progress is not None else {"state": "idle"})
