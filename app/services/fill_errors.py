"""The error a single-flight fill reported, rebuilt for every request that followed it (possibly
in another process): the same HTTP status, DIMSE status and message."""

from __future__ import annotations

from app.cache.singleflight import FillEvent
from app.errors import (
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
    UpstreamError,
    UpstreamNotSupported,
    UpstreamTimeout,
    UpstreamUnavailable,
)

_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest, 404: NotFound, 406: NotAcceptable, 501: UpstreamNotSupported,
    503: UpstreamUnavailable, 504: UpstreamTimeout,
}


def error_from_event(event: FillEvent) -> GatewayError:
    """Rebuild the error a fill reported (possibly in another process)."""
    kind = _ERRORS.get(event.http_status, UpstreamError)
    return kind(event.message or "retrieval failed", dimse_status=event.dimse_status)


def failure_event(exc: GatewayError) -> FillEvent:
    """The final event announcing ``exc`` to the followers of a fill."""
    return FillEvent("failed", http_status=exc.http_status, dimse_status=exc.dimse_status,
                     message=exc.message)
