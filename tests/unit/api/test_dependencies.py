"""Every route handler and dependency of the app is a coroutine: FastAPI runs plain functions
(and classes) in its thread pool, a thread hop per request that waits on a busy event loop and
on the GIL (10 identical concurrent searches saw some requests reach their handler 200 ms late).
And a server process's app has its start-up objects frozen out of the garbage collector."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.main import create_app
from app.settings import load_settings


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The APIRoutes of an app, through included routers whatever their wrapping."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if inner is not None and hasattr(inner, "routes"):
            yield from api_routes(list(inner.routes))


def calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield from calls(sub)
        if sub.call is not None:
            yield sub.call


def runs_on_the_loop(call: Any) -> bool:
    if inspect.isclass(call):
        return False
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = getattr(call, "__call__", None)  # noqa: B004 - instances such as HTTPBearer
    return inspect.iscoroutinefunction(method)


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    settings = load_settings(pacs=[{"name": "demo", "ae_title": "DEMO", "host": "127.0.0.1",
                                    "port": 11112}], storage_scp_enabled=False,
                             read_only=False, cache_admin_enabled=True, admin_token="t" * 32)
    app = create_app(settings)
    routes = list(api_routes(list(app.routes)))
    assert len(routes) > 30  # every DICOMweb resource, not an empty walk
    offenders = sorted({f"{route.path}: {getattr(call, '__qualname__', repr(call))}"
                        for route in routes
                        for call in [route.endpoint, *calls(route.dependant)]
                        if not runs_on_the_loop(call)})
    assert offenders == []


def test_a_server_app_freezes_what_start_up_made() -> None:
    import gc

    from app.main import create_server_app

    settings = load_settings(pacs=[{"name": "demo", "ae_title": "DEMO", "host": "127.0.0.1",
                                    "port": 11112}], storage_scp_enabled=False)
    try:
        create_server_app(settings)
        assert gc.get_freeze_count() > 10_000  # modules, pydicom's dictionary, the app
    finally:
        gc.unfreeze()
