"""Application factory: create_app(settings) wires settings, DIMSE clients and routes; nothing is
created at import time, so tests and the demo can run several gateways in one process."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from app import __version__
from app.api import admin, health, qido, rendered, stow, wado, wado_uri
from app.api.access import Access, classify
from app.api.audit import AuditMiddleware
from app.api.authorization import (
    AUTH_ERRORS,
    SECURITY_REQUIREMENT,
    SECURITY_SCHEMES,
    AuthorizationMiddleware,
    Authorizer,
)
from app.api.baseurl import TrustedHostMiddleware
from app.api.capabilities import capabilities_router
from app.api.compression import CompressionMiddleware
from app.api.params import (
    ERROR_SCHEMA,
    ERROR_SCHEMA_NAME,
    NAMED_PACS_ERRORS,
    PACS_NAME_PATTERN,
    errors,
)
from app.api.paths import EmptySegmentsMiddleware
from app.api.problems import install_error_handlers
from app.api.request_metrics import RequestMetricsMiddleware
from app.api.streaming import install_cut_short_filter
from app.cache.budget import RedisAssociationBudget
from app.cache.factory import build_backend
from app.dimse.client import DimseClients
from app.metrics import Metrics
from app.services.audit import AuditTrail
from app.services.move_relay import MoveRelay
from app.services.registry import Services
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)


async def pacs_path_parameter(
    pacs: Annotated[str, Path(description="Name of a configured PACS (settings: pacs[].name)",
                              json_schema_extra={"pattern": PACS_NAME_PATTERN})],
) -> str:
    """Declares the ``{pacs}`` path parameter of the named-PACS routes in OpenAPI; the QIDO
    handlers read it from the path and answer 404 for an unknown name."""
    return pacs


def operation_id(suffix: str = "") -> Callable[[APIRoute], str]:
    """OpenAPI operationIds named after the handler (the PS3.18 transaction name), with
    ``suffix`` telling apart routes mounted twice (default PACS and named PACS)."""

    def generate(route: APIRoute) -> str:
        return route.name + suffix

    return generate


def association_budget(settings: Settings) -> RedisAssociationBudget | None:
    """The budget that makes ``max_associations`` hold across workers and replicas (Redis), or
    None where each process keeps to its own limit."""
    if not settings.shared_association_budget or settings.redis_url is None:
        return None
    return RedisAssociationBudget(settings.redis_url, cluster=settings.redis_cluster,
                                  lease_ttl=settings.association_lease_ttl)


def create_server_app(settings: Settings | None = None) -> FastAPI:
    """``create_app`` for a server process (``serve``, ``demo``, each ``--workers`` worker):
    then everything made so far (modules, pydicom's data dictionary, the app itself, some
    115,000 objects) is moved out of the garbage collector's sight (``gc.freeze``). They live
    as long as the process anyway, and each full collection walked them all: 170-200 ms
    pauses of the event loop, measured under ten concurrent searches, 11 ms once frozen."""
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway app for ``settings`` (read from the environment when omitted)."""
    settings = settings or load_settings()
    logging.getLogger("app").setLevel(settings.log_level)
    trail = (AuditTrail(source_id=settings.ae_title, path=settings.audit_log,
                        syslog=settings.audit_syslog,
                        syslog_transport=settings.audit_syslog_transport)
             if settings.audit_log or settings.audit_syslog else None)
    authorizer = Authorizer(settings) if settings.auth_enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if trail is not None:
            trail.start()  # an audit log that cannot be opened fails the start-up
        if authorizer is not None:
            await authorizer.warm_up()
        metrics = Metrics()
        await metrics.start()
        backend = build_backend(settings, lambda: metrics.inc("cache_errors_total"))
        relay = MoveRelay(backend)
        budget = association_budget(settings)
        if budget is not None:
            metrics.gauge("dimse_association_budget_up", lambda: 1.0 if budget.up else 0.0)
        dimse = DimseClients(settings, on_unrouted=relay.forward, budget=budget,
                             metrics=metrics)
        await dimse.start()
        relay.attach(dimse.router)
        services = Services(settings, dimse, metrics, backend, relay)
        await services.cache_health()  # an unreachable Redis is reported from the start
        app.state.services = services
        log.info("gateway %s up; PACS: %s", settings.ae_title,
                 ", ".join(f"{p.name}={p.ae_title}@{p.host}:{p.port}" for p in settings.pacs))
        try:
            yield
        finally:
            await services.close()
            if trail is not None:
                trail.close()
            if budget is not None:
                await budget.aclose()
            await metrics.close()

    app = FastAPI(
        title="DICOMweb gateway",
        version=__version__,
        description=(
            "QIDO-RS, WADO-RS and STOW-RS in front of a DIMSE-only PACS (C-FIND, C-GET, "
            "C-MOVE, C-STORE). "
            "See docs/conformance.md for what each resource supports."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.state.read_only = settings.read_only  # a POST to a Store path then says why it is 405
    install_cut_short_filter()
    if settings.compress_responses:
        # Innermost of the middlewares: DICOM JSON/XML bodies leave gzip- or br-encoded.
        app.add_middleware(CompressionMiddleware, min_bytes=settings.compress_min_bytes)
    if authorizer is not None:
        # Before routing, inside CORS: a preflight is answered without a credential, and a
        # 401 or 403 still carries the CORS headers a browser needs to read it.
        app.add_middleware(AuthorizationMiddleware, settings=settings, authorizer=authorizer)
    if trail is not None:
        # Outside authorization (refusals are events) and compression (bytes as sent).
        app.add_middleware(AuditMiddleware, settings=settings, trail=trail)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "HEAD", "OPTIONS"] + ([] if settings.read_only else ["POST"]),
            allow_headers=["*"],  # the requested ones are echoed: Authorization included
            expose_headers=["Content-Type", "Content-Location", "Warning", "ETag",
                            "WWW-Authenticate"],
        )
    # A request naming a malformed or unlisted host is answered 400 before anything.
    app.add_middleware(TrustedHostMiddleware, settings=settings)
    # Every request, whatever answers it, is timed and counted per route template.
    app.add_middleware(RequestMetricsMiddleware)
    # Outermost: "//" in the path is collapsed before anything looks at it (routes, CORS).
    app.add_middleware(EmptySegmentsMiddleware)
    app.include_router(health.router, generate_unique_id_function=operation_id())
    if settings.cache_admin_enabled:
        app.include_router(admin.router, generate_unique_id_function=operation_id())
        app.include_router(admin.prefetch_router, generate_unique_id_function=operation_id())
    dicomweb_routers: tuple[APIRouter, ...] = (qido.router, wado.router, rendered.router,
                                               wado_uri.router)
    if not settings.read_only:  # STOW-RS; off, a POST there is a 405 (app.api.problems)
        dicomweb_routers += (stow.router,)
    served = [r for router in dicomweb_routers for r in router.routes if isinstance(r, APIRoute)]
    # OPTIONS on the service root and on each resource: the Capabilities Description (PS3.18
    # 8.9), described from the very routes mounted here.
    for router in (*dicomweb_routers, capabilities_router(served, settings)):
        app.include_router(router, prefix=settings.dicomweb_prefix,
                           generate_unique_id_function=operation_id())
        app.include_router(router, prefix="/pacs/{pacs}" + settings.dicomweb_prefix,
                           dependencies=[Depends(pacs_path_parameter)],
                           responses=errors(NAMED_PACS_ERRORS),
                           generate_unique_id_function=operation_id("_on_pacs"))
    if settings.dicomweb_prefix:
        # Legacy WADO-URI clients expect {host}/wado (default PACS).
        app.include_router(wado_uri.router, generate_unique_id_function=operation_id("_at_root"))
    app.openapi = _published(app.openapi, settings.dicomweb_prefix)  # type: ignore[method-assign]
    return app


def _published(generate: Callable[[], dict[str, Any]],
               prefix: str) -> Callable[[], dict[str, Any]]:
    """The document as published: FastAPI's 422 for routes with parameters removed (invalid
    parameters are answered 400, app.api.problems), the error body schema added, and each
    operation's security as it is with authorization on (app.api.authorization)."""

    def openapi() -> dict[str, Any]:
        schema = generate()
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                operation.get("responses", {}).pop("422", None)
                _secure(operation, classify(method, path, "", prefix))
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
        components["securitySchemes"] = SECURITY_SCHEMES
        return schema

    return openapi


def _secure(operation: dict[str, Any], access: Access) -> None:
    """An operation's security requirement and its 401/403 answers: none for what stays open,
    optional for /metrics (``auth_metrics_open``), a bearer token or an API key otherwise."""
    if access.kind == "open":
        operation["security"] = []
        return
    operation["security"] = ([{}] if access.kind == "metrics" else []) + SECURITY_REQUIREMENT
    responses = operation.setdefault("responses", {})
    for status, response in errors(AUTH_ERRORS).items():
        if str(status) in responses:  # the admin routes' own 401/403: both reasons
            responses[str(status)]["description"] += "; " + response["description"]
        else:
            responses[str(status)] = response
