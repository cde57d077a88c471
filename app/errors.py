"""One error hierarchy for the whole gateway and its single mapping to an HTTP status.

Every layer raises these; only ``app.api`` turns them into responses (a DICOM JSON status report
body), so a failure anywhere is answered with a precise status instead of a 500.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an HTTP status, a human message and, where known, the DIMSE status behind it.

    ``message`` is what the client is told; ``detail`` (default: the message) is what the logs
    get, and may name what clients must not learn, such as a PACS's AE title, host and port."""

    http_status: int = 500
    title: str = "Internal Server Error"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        dimse_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or message)
        self.message = message
        self.detail = detail or message
        self.dimse_status = dimse_status
        self.headers = dict(headers or {})


class BadRequest(GatewayError):
    """The request is malformed: a bad UID, parameter value or frame list (400)."""

    http_status = 400
    title = "Bad Request"


class Unauthorized(GatewayError):
    """The request lacks valid credentials for a protected resource (401)."""

    http_status = 401
    title = "Unauthorized"

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="dicomweb-gateway admin"')


class Forbidden(GatewayError):
    """The request is refused whatever its credentials, e.g. from a foreign Origin (403)."""

    http_status = 403
    title = "Forbidden"


class NotFound(GatewayError):
    """The requested study, series or instance does not exist on the PACS (404)."""

    http_status = 404
    title = "Not Found"


class Conflict(GatewayError):
    """The request conflicts with the current state, e.g. a prefetch run already running (409)."""

    http_status = 409
    title = "Conflict"


class NotAcceptable(GatewayError):
    """No representation the client accepts can be produced (406)."""

    http_status = 406
    title = "Not Acceptable"


class UnsupportedMediaType(GatewayError):
    """The request body has a content type the resource does not take (415)."""

    http_status = 415
    title = "Unsupported Media Type"


class PayloadTooLarge(GatewayError):
    """The search or retrieval is too broad to serve (413)."""

    http_status = 413
    title = "Payload Too Large"


class UpstreamNotSupported(GatewayError):
    """The PACS does not support the SOP class or operation needed (501)."""

    http_status = 501
    title = "Not Implemented"


class UpstreamError(GatewayError):
    """The PACS answered with a failure the client cannot fix (502)."""

    http_status = 502
    title = "Bad Gateway"


class UpstreamUnavailable(GatewayError):
    """The PACS is unreachable, busy or rejected the association (503, with Retry-After)."""

    http_status = 503
    title = "Service Unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("Retry-After", str(retry_after))


class UpstreamTimeout(GatewayError):
    """The PACS did not answer within the configured DIMSE or overall timeout (504)."""

    http_status = 504
    title = "Gateway Timeout"
