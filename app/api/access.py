"""What a request is, for authorization and the audit trail: the action it performs (search,
retrieve, store, admin), the PACS it reaches, and the study, series and instance UIDs its path
and query name. Decided from the method and path alone, before any route runs, so that a route
added later (STOW-RS's ``POST .../studies``) is covered by the rule for its method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from starlette.datastructures import QueryParams

#: Paths anyone may reach: liveness, readiness and the API description (no patient data).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json"})
METRICS_PATH = "/metrics"
_SEARCH_RESOURCES = frozenset({"studies", "series", "instances"})
_READ_METHODS = frozenset({"GET", "HEAD"})
#: WADO-URI's UID parameters (PS3.18 9.4), in study, series, instance order.
_URI_UIDS = ("studyUID", "seriesUID", "objectUID")


AccessKind = Literal["open", "metrics", "admin", "dicomweb", "other"]


@dataclass(frozen=True)
class Access:
    """One request, classified.

    ``action`` is None for what needs no credential (``open``); ``kind`` tells the rest apart:
    ``open``, ``metrics``, ``admin``, ``dicomweb`` (search, retrieve, store) or ``other`` (a path
    no rule names, which needs a valid credential but no particular action)."""

    kind: AccessKind
    action: str | None = None
    pacs: str | None = None  # the /pacs/{name} of the path; None for the default PACS
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    query_keys: tuple[str, ...] = field(default=())

    @property
    def names_pacs(self) -> bool:
        """Whether the request reaches a PACS (the default one when ``pacs`` is None)."""
        return self.kind == "dicomweb"


def classify(method: str, path: str, query: str, prefix: str) -> Access:
    """The Access of a request: ``prefix`` is the DICOMweb prefix (``/dicomweb`` or empty)."""
    method = method.upper()
    if method == "OPTIONS":  # CORS preflight and the Capabilities Description (PS3.18 8.9)
        return Access("open")
    if path in OPEN_PATHS:
        return Access("open")
    if path == METRICS_PATH:
        return Access("metrics")
    if path == "/admin" or path.startswith("/admin/"):
        return Access("admin", "admin")
    pacs = None
    rest = path
    if path.startswith("/pacs/"):
        name, _, tail = path[len("/pacs/"):].partition("/")
        pacs, rest = name, "/" + tail
    if rest == "/wado":  # WADO-URI, at the root or under the prefix
        return _wado_uri(method, pacs, QueryParams(query))
    if prefix and not (rest == prefix or rest.startswith(prefix + "/")):
        return Access("other")
    if pacs is None and not prefix and path in ("", "/"):
        return Access("other")
    return _dicomweb(method, pacs, rest[len(prefix):], QueryParams(query))


def _dicomweb(method: str, pacs: str | None, resource: str, query: QueryParams) -> Access:
    """A request below the DICOMweb service root: search, retrieve or (any writing method)
    store, with the UIDs its path names."""
    segments = [s for s in resource.split("/") if s]
    uids: dict[str, str] = {}
    for name, value in zip(segments, segments[1:], strict=False):
        if name in _SEARCH_RESOURCES and name not in uids:
            uids[name] = value
    studies = (uids["studies"],) if "studies" in uids else ()
    series = (uids["series"],) if "series" in uids else ()
    instances = (uids["instances"],) if "instances" in uids else ()
    if method not in _READ_METHODS:
        action = "store"
    elif segments and segments[-1] in _SEARCH_RESOURCES:
        action = "search"
    else:
        action = "retrieve"
    keys = tuple(sorted(set(query.keys()))) if action == "search" else ()
    return Access("dicomweb", action, pacs, studies, series, instances, keys)


def _wado_uri(method: str, pacs: str | None, query: QueryParams) -> Access:
    """WADO-URI: always a retrieval, its UIDs in the query."""
    action = "retrieve" if method in _READ_METHODS else "store"
    study, series, instance = (tuple(query.getlist(name)[:1]) for name in _URI_UIDS)
    return Access("dicomweb", action, pacs, study, series, instance)
