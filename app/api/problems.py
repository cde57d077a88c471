"""The single mapping from gateway errors to HTTP responses, with a DICOM JSON status body.

The body is a DICOM JSON object holding ErrorComment (0000,0902) and, when a DIMSE status caused
the error, Status (0000,0900): what a DICOMweb client can show, in the standard's own terms.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from app.api.streaming import ResponseCutShort
from app.dicomweb.mediatypes import DICOM_JSON
from app.errors import GatewayError

log = logging.getLogger(__name__)
#: Where the DIMSE status behind an error response is left in the ASGI scope (the audit trail
#: reports it as the DICOM outcome).
DIMSE_STATUS_KEY = "dwg.dimse_status"


def problem_body(message: str, dimse_status: int | None = None) -> bytes:
    """A DICOM JSON status report: ErrorComment and, if known, the DIMSE Status."""
    body: dict[str, object] = {"00000902": {"vr": "LO", "Value": [message]}}
    if dimse_status is not None:
        body["00000900"] = {"vr": "US", "Value": [dimse_status]}
    return json.dumps(dict(sorted(body.items())), ensure_ascii=False).encode("utf-8")


def problem(status: int, message: str, *, dimse_status: int | None = None,
            headers: dict[str, str] | None = None) -> Response:
    """An error response with a DICOM JSON body."""
    return Response(problem_body(message, dimse_status), status_code=status,
                    media_type=DICOM_JSON, headers=headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    level = logging.WARNING if exc.http_status >= 500 else logging.INFO
    log.log(level, "%s %s -> %d: %s", request.method, request.url.path, exc.http_status,
            exc.detail)
    if exc.dimse_status is not None:
        request.scope[DIMSE_STATUS_KEY] = exc.dimse_status
    return problem(exc.http_status, exc.message, dimse_status=exc.dimse_status,
                   headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
    return problem(400, f"invalid request: {where}: {first.get('msg', 'invalid value')}")


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path, for the Allow header of a 405 (RFC 9110
    15.5.6): the router's own 405 names only the first matching route's methods, and OPTIONS
    (the Capabilities transaction) is a route of its own."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


_STORE_PATH = re.compile(r"/studies(/[^/]+)?/?$")


def _turned_off(request: Request) -> str | None:
    """Why a POST to a Store resource has no route: STOW-RS is off (``read_only``); the
    routes are then not mounted, so the 405 and its Allow header come from the router."""
    if request.method == "POST" and getattr(request.app.state, "read_only", False) \
            and _STORE_PATH.search(request.url.path):
        return ("STOW-RS is turned off on this gateway (read_only): it stores nothing; "
                "see docs/operations.md")
    return None


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        message = _turned_off(request) or message
    return problem(exc.status_code, message, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ResponseCutShort):  # already logged; the headers are long gone
        return problem(500, "response cut short")
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, f"internal error: {type(exc).__name__}")


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on an app."""
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
