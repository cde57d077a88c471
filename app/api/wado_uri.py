"""WADO-URI (PS3.18 chapter 9): ``GET .../wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``.

``contentType=application/dicom`` returns the instance as one Part-10 body (Explicit VR Little
Endian unless ``transferSyntax`` names another syntax the gateway can produce); ``image/jpeg``
(the default), ``image/png`` or ``image/gif`` return it rendered, with ``frameNumber``, ``rows``,
``columns``, ``region``, ``windowCenter``/``windowWidth`` and ``imageQuality``. Parameter names
are case-sensitive, as the standard requires. Served under the DICOMweb prefix and, for legacy
clients, at ``/wado`` (default PACS).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.api.baseurl import request_origin
from app.api.deps import RequestDep
from app.api.params import COMMON_ERRORS, UID_SCHEMA, errors
from app.api.warning import warning_value
from app.dicomweb.mediatypes import AS_STORED, DICOM, Offer, accept_ranges, negotiate, parse_accept
from app.dicomweb.refs import InstanceRef, is_valid_uid
from app.dicomweb.render import (
    GIF,
    JPEG,
    MAX_OUTPUT_SIDE,
    PNG,
    RenderParameterError,
    RenderParams,
    Viewport,
    Window,
    check_window,
    parse_quality,
    parse_region,
)
from app.dicomweb.transfer_syntax import ALL_KNOWN, EXPLICIT_VR_LITTLE_ENDIAN, NOT_ON_THE_WIRE
from app.errors import BadRequest, NotAcceptable, NotFound
from app.services.registry import Services
from app.services.rendering import FrameNotFound, render_instance
from app.services.wado import WireInstance

router = APIRouter(tags=["WADO-URI"])

#: WADO-URI representations, default first (PS3.18 9.3: no contentType and */* -> image/jpeg).
URI_OFFERS: tuple[Offer, ...] = (Offer(JPEG), Offer(DICOM), Offer(PNG), Offer(GIF))
RENDERED_ONLY = ("frameNumber", "rows", "columns", "region", "windowCenter", "windowWidth",
                 "imageQuality", "annotation", "imageAnnotation", "presentationUID",
                 "presentationSeriesUID")
DICOM_ONLY = ("transferSyntax", "anonymize")
ANNOTATION_WARNING = "The annotation parameter is not supported. No annotations were applied."

URI_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The instance (application/dicom) or the rendered image",
          "content": {"application/dicom": {}, "image/jpeg": {}, "image/png": {},
                      "image/gif": {}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **errors({
        **COMMON_ERRORS,
        400: "Missing or invalid parameter (requestType, UIDs, frameNumber, region, "
             "windowCenter/windowWidth, ...)",
        404: "No such instance",
        406: "contentType or transferSyntax that cannot be produced, or an Accept without any "
             "media type",
    501: "The PACS does not support the SOP class or operation needed",
    502: "The PACS failed the operation",
    503: "The PACS is unreachable or busy (Retry-After)",
    504: "The PACS did not answer in time",
    }),
}


def _param(request: Request, name: str) -> str | None:
    """A parameter by its exact (case-sensitive) name; repeated with different values: 400."""
    values = request.query_params.getlist(name)
    if len(set(values)) > 1:
        raise BadRequest(f"{name} is given more than once")
    return values[0] if values else None


def _uid(value: str | None, name: str) -> str:
    if not value:
        raise BadRequest(f"{name} is required (PS3.18 9.4.2)")
    if not is_valid_uid(value):
        raise BadRequest(f"{name} {value!r} is not a valid DICOM UID")
    return value


def _positive(request: Request, name: str, limit: int | None = None) -> int | None:
    text = _param(request, name)
    if text is None:
        return None
    digits = text.strip().lstrip("0")
    if not (text.strip().isascii() and text.strip().isdigit()) or not digits:
        raise BadRequest(f"{name} {text[:20]!r} is not a positive integer")
    if len(digits) > 9:  # far beyond any frame count or image side; int() stays cheap
        raise BadRequest(f"{name} is too large")
    if limit is not None and int(digits) > limit:
        raise BadRequest(f"{name} must be at most {limit}")
    return int(digits)


def _float(request: Request, name: str) -> float | None:
    text = _param(request, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be finite")
    return value


def choose_content_type(request: Request, content_type: str | None) -> str:
    """From ``contentType`` (a list of media types, media-type parameters forbidden, PS3.18
    9.1.3), else from the Accept header, else image/jpeg; 406 when none can be produced."""
    if content_type is not None:
        ranges = parse_accept(content_type)
        if any(set(r.params) - {"q"} for r in ranges):
            raise BadRequest("contentType must not carry media type parameters (PS3.18 9.1.3)")
        chosen = negotiate(ranges, URI_OFFERS) if ranges else None
        if chosen is None:
            raise NotAcceptable(f"contentType {content_type!r} cannot be produced; offered: "
                                "application/dicom, image/jpeg, image/png, image/gif")
        return chosen.offer.media_type
    header = request.headers.get("accept")
    chosen = negotiate(accept_ranges(header), URI_OFFERS)
    if chosen is None:
        raise NotAcceptable(f"none of the accepted media types can be produced: {header!r}")
    return chosen.offer.media_type


def _present(request: Request, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in request.query_params]


def _syntax_preferences(request: Request) -> list[str | None]:
    """Explicit VR LE by default (as stored if it cannot be decompressed); else exactly the
    ``transferSyntax`` asked for: 400 if it is no UID, 406 if the gateway cannot produce it."""
    wanted = _param(request, "transferSyntax")
    if wanted is None:
        return [EXPLICIT_VR_LITTLE_ENDIAN, AS_STORED]
    wanted = wanted.strip()
    if wanted == AS_STORED:
        return [AS_STORED]
    if not is_valid_uid(wanted):
        raise BadRequest(f"transferSyntax {wanted!r} is not a valid UID")
    if wanted in NOT_ON_THE_WIRE or wanted not in ALL_KNOWN:
        raise NotAcceptable(f"transfer syntax {wanted} is not supported")
    return [wanted]


def _render_params(request: Request, media_type: str) -> RenderParams:
    if _present(request, ("presentationUID", "presentationSeriesUID")):
        raise BadRequest("presentation states (presentationUID) are not supported")
    center, width = _float(request, "windowCenter"), _float(request, "windowWidth")
    if (center is None) != (width is None):
        raise BadRequest("windowCenter and windowWidth must be given together")
    rows = _positive(request, "rows", MAX_OUTPUT_SIDE)
    columns = _positive(request, "columns", MAX_OUTPUT_SIDE)
    try:
        window = check_window(Window(center, width)) if center is not None and width is not None \
            else None
        region_text = _param(request, "region")
        quality_text = _param(request, "imageQuality")
        return RenderParams(
            media_type=media_type,
            quality=parse_quality(quality_text) if quality_text is not None else None,
            window=window,
            region=parse_region(region_text) if region_text is not None else None,
            viewport=Viewport(columns, rows) if rows or columns else None,
        )
    except RenderParameterError as exc:
        raise BadRequest(str(exc)) from None


def _location(request: Request, services: Services) -> str:
    origin = request_origin(request, services.settings)
    query = request.url.query
    return f"{origin}{request.url.path}" + (f"?{query}" if query else "")


@router.get("/wado", responses=URI_RESPONSES, summary="WADO-URI retrieve")
async def retrieve_wado_uri(
    req: RequestDep,
    request_type: str | None = Query(None, alias="requestType", description="Must be WADO"),
    study_uid: str | None = Query(None, alias="studyUID", json_schema_extra=UID_SCHEMA),
    series_uid: str | None = Query(None, alias="seriesUID", json_schema_extra=UID_SCHEMA),
    object_uid: str | None = Query(None, alias="objectUID", json_schema_extra=UID_SCHEMA),
    content_type: str | None = Query(None, alias="contentType",
                                     description="application/dicom, image/jpeg (default), "
                                                 "image/png or image/gif"),
) -> Response:
    """One instance by its three UIDs (PS3.18 9): Part-10 or a rendered image."""
    request, services = req.request, req.services
    if request_type != "WADO":
        raise BadRequest("requestType=WADO is required (PS3.18 9.4.1)")
    ref = InstanceRef(_uid(study_uid, "studyUID"), _uid(series_uid, "seriesUID"),
                      _uid(object_uid, "objectUID"))
    name = req.pacs
    media_type = choose_content_type(request, content_type)
    if media_type == DICOM:
        misplaced = _present(request, RENDERED_ONLY)
        if misplaced:
            raise BadRequest(f"{', '.join(misplaced)}: only for rendered content types")
        if (_param(request, "anonymize") or "no").lower() == "yes":
            raise BadRequest("anonymize=yes is not supported: the gateway does not de-identify")
        preferences = _syntax_preferences(request)
    else:
        misplaced = _present(request, DICOM_ONLY)
        if misplaced:
            raise BadRequest(f"{', '.join(misplaced)}: only for contentType=application/dicom")
        params = _render_params(request, media_type)
        frame = _positive(request, "frameNumber")
    headers, unchanged = await req.validators(
        ref, media_type, str(sorted(request.query_params.multi_items())))
    if unchanged is not None:
        return unchanged
    headers["Content-Location"] = _location(request, services)
    wado = services.wado(name)
    if media_type == DICOM:
        wire: WireInstance | None = None
        async for candidate in wado.instances(ref, preferences):
            wire = candidate  # one instance: read to the end so the retrieval completes
        if wire is None:
            raise NotFound("the PACS sent no instance")
        return Response(wire.data, media_type=DICOM, headers=headers)
    received = await wado.instance(ref)
    try:
        data = await render_instance(received, [frame] if frame else None, params)
    except FrameNotFound as exc:
        raise BadRequest(f"frameNumber: {exc.message}") from None
    response = Response(data, media_type=media_type, headers=headers)
    if _present(request, ("annotation", "imageAnnotation")):
        base = _location(request, services).split("?")[0]
        response.headers.append("Warning", warning_value(base, ANNOTATION_WARNING))
    return response
