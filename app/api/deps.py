"""The preamble every DICOMweb route shares, as one FastAPI dependency: which PACS the path
names, the service's base URL as the client sees it, the Accept ranges (the ``accept`` query
parameter or the Accept header, parsed once), negotiation against an offer table, and the
validators (ETag, Cache-Control) with the 304 they may answer.

Each part is computed when a handler first asks for it, and then remembered: a handler keeps
the order in which a request's faults are reported (a malformed UID is 400 before an unknown
PACS is 404, before an unacceptable Accept is 406), which eager dependencies would reorder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response

from app.api.baseurl import request_origin
from app.api.conditional import IMMUTABLE, REVALIDATE, caching_headers, etag_for, not_modified
from app.api.state import ServicesDep
from app.dicomweb.mediatypes import MediaRange, Negotiated, Offer, accept_ranges, negotiate
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.errors import NotFound

__all__ = ["DicomWebRequest", "RequestDep", "Validators"]

#: Caching headers for a response, or the 304 that answers the request instead.
Validators = tuple[dict[str, str], Response | None]


class DicomWebRequest:
    """One request to a DICOMweb resource, with what its handler needs to answer it."""

    def __init__(self, request: Request, services: ServicesDep) -> None:
        self.request = request
        self.services = services

    @cached_property
    def pacs(self) -> str:
        """The name of the PACS the path names, the default one, or ``FEDERATED`` for the
        unnamed root while ``federate`` is set; 404 for an unknown one."""
        try:
            return self.services.dicomweb_root(self.request.path_params.get("pacs"))
        except LookupError as exc:
            raise NotFound(str(exc)) from None

    @cached_property
    def base_url(self) -> str:
        """The DICOMweb service root for this request's PACS, as the client sees it."""
        settings = self.services.settings
        origin = request_origin(self.request, settings)
        pacs = self.request.path_params.get("pacs")
        if pacs:
            return f"{origin}/pacs/{pacs}{settings.dicomweb_prefix}"
        return f"{origin}{settings.dicomweb_prefix}"

    @cached_property
    def accept_header(self) -> str | None:
        """The ``accept`` query parameters, joined, or else the Accept header (a link cannot
        set headers, so the query parameter wins)."""
        values = self.request.query_params.getlist("accept")
        return ", ".join(values) if values else self.request.headers.get("accept")

    @cached_property
    def accept(self) -> list[MediaRange]:
        """The Accept ranges, best first; 406 for a header that names no media type at all."""
        return accept_ranges(self.accept_header)

    def acceptable(self, offers: Sequence[Offer]) -> Negotiated | None:
        """The offer the client prefers, or None when none is acceptable, or when none was asked
        for and the gateway is configured to require an Accept (``require_accept_header``)."""
        chosen = negotiate(self.accept, offers)
        if chosen is None or (chosen.defaulted and self.services.settings.require_accept_header):
            return None
        return chosen

    async def validators(self, ref: StudyRef | SeriesRef | InstanceRef, *representation: str,
                         stable: bool = True) -> Validators:
        """Caching headers for ``ref`` in ``representation``, and a 304 if the client has it.

        An instance never changes (its UID names one immutable object), so instance-level
        resources get a long-lived strong ETag without any lookup; a series or study gets one
        only when the cache knows its complete content, and only when ``stable`` (a choice
        among changing content, such as a study's thumbnail, is not). ``If-None-Match: *`` is
        not short-cut (``not_modified``): it is false for a resource that does not exist
        (RFC 9110 13.1.2), which only the retrieval can tell."""
        path = self.request.url.path
        etag: str | None = None
        if isinstance(ref, InstanceRef):
            etag, policy = etag_for(path, *representation), IMMUTABLE
        else:
            policy = REVALIDATE
            members = (await self.services.wado(self.pacs).content_signature(ref)
                       if stable else None)
            if members:
                etag = etag_for(path, *representation, *members)
        if etag is not None:
            unchanged = not_modified(self.request, etag, policy)
            if unchanged is not None:
                return {}, unchanged
        return caching_headers(etag, policy), None


async def dicomweb_request(request: Request, services: ServicesDep) -> DicomWebRequest:
    """The DicomWebRequest of a route, built on the event loop (FastAPI would build a class
    dependency in its thread pool: two thread hops per request, slow when the loop is busy)."""
    return DicomWebRequest(request, services)


RequestDep = Annotated[DicomWebRequest, Depends(dicomweb_request)]
