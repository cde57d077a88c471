"""Application factory: create_app(settings) wires settings, DIMSE clients and routes; nothing is
created at import time, so tests and the demo can run several gateways in one process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from app import __version__
from app.api import admin, health, qido, rendered, wado, wado_uri
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
from app.api.streaming import install_cut_short_filter
from app.cache.factory import build_backend
from app.dimse.client import DimseClients
from app.metrics import Metrics
from app.services.move_relay import MoveRelay
from app.services.registry import Services
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)


def pacs_path_parameter(
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway app for ``settings`` (read from the environment when omitted)."""
    settings = settings or load_settings()
    logging.getLogger("app").setLevel(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        backend = build_backend(settings, lambda: metrics.inc("cache_errors_total"))
        relay = MoveRelay(backend)
        dimse = DimseClients(settings, on_unrouted=relay.forward)
        await dimse.start()
        relay.attach(dimse.router, asyncio.get_running_loop())
        services = Services(settings, dimse, metrics, backend, relay)
        await services.cache_health()  # an unreachable Redis is reported from the start
        app.state.services = services
        log.info("gateway %s up; PACS: %s", settings.ae_title,
                 ", ".join(f"{p.name}={p.ae_title}@{p.host}:{p.port}" for p in settings.pacs))
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="DICOMweb gateway",
        version=__version__,
        description=(
            "QIDO-RS and WADO-RS in front of a DIMSE-only PACS (C-FIND, C-GET, C-MOVE). "
            "See docs/conformance.md for what each resource supports."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_cut_short_filter()
    if settings.compress_responses:
        # Innermost of the middlewares: DICOM JSON/XML bodies leave gzip- or br-encoded.
        app.add_middleware(CompressionMiddleware, min_bytes=settings.compress_min_bytes)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Type", "Content-Location", "Warning", "ETag"],
        )
    # A request naming a malformed or unlisted host is answered 400 before anything.
    app.add_middleware(TrustedHostMiddleware, settings=settings)
    # Outermost: "//" in the path is collapsed before anything looks at it (routes, CORS).
    app.add_middleware(EmptySegmentsMiddleware)
    app.include_router(health.router, generate_unique_id_function=operation_id())
    if settings.cache_admin_enabled:
        app.include_router(admin.router, generate_unique_id_function=operation_id())
        app.include_router(admin.prefetch_router, generate_unique_id_function=operation_id())
    dicomweb_routers = (qido.router, wado.router, rendered.router, wado_uri.router)
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
    app.openapi = _published(app.openapi)  # type: ignore[method-assign]
    return app


def _published(generate: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The document as published: FastAPI's 422 for routes with parameters removed (invalid
    parameters are answered 400, app.api.problems), the error body schema added."""

    def openapi() -> dict[str, Any]:
        schema = generate()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
        return schema

    return openapi
