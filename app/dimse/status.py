"""DIMSE status codes (PS3.7 Annex C, PS3.4 C.4) and their single mapping to gateway errors."""

from __future__ import annotations

from enum import StrEnum

from app.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    UpstreamError,
    UpstreamNotSupported,
    UpstreamUnavailable,
)


class Category(StrEnum):
    """The category of a DIMSE status (PS3.7 C.1.2)."""

    SUCCESS = "Success"
    PENDING = "Pending"
    CANCEL = "Cancel"
    WARNING = "Warning"
    FAILURE = "Failure"


def category(status: int) -> Category:
    """Classify a status code; unknown codes are failures (PS3.7 C.1.2)."""
    if status == 0x0000:
        return Category.SUCCESS
    if status in (0xFF00, 0xFF01):
        return Category.PENDING
    if status == 0xFE00:
        return Category.CANCEL
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return Category.WARNING
    return Category.FAILURE


def _failure(status: int, operation: str, comment: str | None,
             specific: dict[int, tuple[type[GatewayError], str]]) -> GatewayError:
    """The error for a failed final status: the operation's own readings of some statuses
    (``specific``), then those every operation shares (out of resources, SOP class not
    supported), else a plain 502."""
    text = f"{operation} failed with status 0x{status:04X}"
    if comment:
        text += f": {comment}"
    readings: dict[int, tuple[type[GatewayError], str]] = {
        **dict.fromkeys((0xA700, 0xA701, 0xA702), (UpstreamUnavailable,
                                                    " (PACS out of resources)")),
        **dict.fromkeys((0x0122, 0x0112), (UpstreamNotSupported, " (SOP class not supported)")),
        **specific,
    }
    kind, reason = readings.get(status, (UpstreamError, ""))
    return kind(text + reason, dimse_status=status)


def find_failure(
    status: int, operation: str = "C-FIND", comment: str | None = None
) -> GatewayError:
    """The error to raise for a failed C-FIND final status (PS3.4 C.4.1.1.4)."""
    return _failure(status, operation, comment, {
        0xA900: (BadRequest,
                 " (identifier does not match SOP class: a query key the PACS refuses)"),
        0xFE00: (UpstreamError, " (cancelled by the PACS)"),
    })


def retrieve_failure(
    status: int, operation: str, comment: str | None = None
) -> GatewayError:
    """The error to raise for a failed C-GET/C-MOVE final status with nothing received."""
    return _failure(status, operation, comment, {
        0xA801: (UpstreamError, " (move destination unknown to the PACS)"),
    })


def nothing_found(what: str, dimse_status: int | None = None) -> NotFound:
    """The error for a resource the PACS does not have (no C-FIND match, or a retrieval that
    ended 0000 with zero sub-operations)."""
    return NotFound(f"{what} not found on the PACS", dimse_status=dimse_status)


# Association failures: the client learns which PACS failed and how, never its AE title, host
# or port (those go to the logs through ``detail``).


def unavailable(peer_name: str, detail: str) -> UpstreamUnavailable:
    """503 for a PACS that cannot be reached or turned the association down for now."""
    return UpstreamUnavailable(f"PACS {peer_name} is unavailable", detail=detail)


def refused(peer_name: str, detail: str) -> UpstreamError:
    """502 for a PACS that rejected the association permanently (e.g. an unknown AE title)."""
    return UpstreamError(f"PACS {peer_name} refused the association", detail=detail)


class ContextsRejected(UpstreamError):
    """502: the PACS accepted none of the presentation contexts proposed (a type of its own so
    that the services can tell "refuses this service" from other association failures)."""


def no_contexts(peer_name: str, detail: str) -> ContextsRejected:
    """502 for a PACS that accepted none of the proposed presentation contexts."""
    return ContextsRejected(
        f"PACS {peer_name} accepted none of the proposed presentation contexts", detail=detail)
