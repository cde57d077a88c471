"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.4 and 10.4.1.1.6, 8.3.5).

An instance (or one frame) is one image: image/jpeg by default, image/png or image/gif on
request. A study, a series or a list of several frames is ``multipart/related`` with one image
per part (each instance's first frame), streamed as the instances arrive. A thumbnail is a single
small image (fitting 128x128 unless a viewport is given) without annotations of any kind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from app.api.deps import DicomWebRequest, RequestDep, Validators
from app.api.params import (
    COMMON_ERRORS,
    FrameList,
    InstanceUID,
    SeriesUID,
    StudyUID,
    errors,
)
from app.api.streaming import stream_parts
from app.api.warning import warning_value
from app.dicomweb.mediatypes import MediaRange
from app.dicomweb.multipart import (
    closing_delimiter,
    multipart_content_type,
    new_boundary,
    part_header,
    part_trailer,
)
from app.dicomweb.refs import (
    InstanceRef,
    SeriesRef,
    StudyRef,
    instance_ref,
    parse_frame_list,
    series_ref,
    study_ref,
)
from app.dicomweb.render import (
    RenderParameterError,
    RenderParams,
    Viewport,
    is_dicom_media_range,
    negotiate_rendered,
    parse_quality,
    parse_viewport,
    parse_window,
)
from app.dicomweb.urls import instance_url
from app.errors import BadRequest, NotAcceptable
from app.services.rendering import RenderedImage, RenderService

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS rendered"])


THUMBNAIL_SIDE = 128
ANNOTATION_WARNING = "The annotation parameter is not supported. No annotations were applied."
ICC_WARNING = "Only iccprofile=no and iccprofile=yes are supported. No ICC profile was applied."
_ANNOTATIONS = {"patient", "technique"}
_ICC_VALUES = {"no", "yes", "srgb", "adobergb", "rommrgb"}
_RENDERED_MARKERS = ("image/", "video/", "text/html", "text/plain", "application/pdf")

RENDERED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The rendered image (or multipart/related images)", "content": {
        "image/jpeg": {}, "image/png": {}, "image/gif": {}, "multipart/related": {}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **errors({
        **COMMON_ERRORS,
        400: "Malformed UID, frame list or rendering parameter, or DICOM and rendered media "
             "types mixed in Accept",
        404: "No such study, series, instance or frame",
        406: "No acceptable rendered media type, nothing renderable, or an Accept without any "
             "media type",
    501: "The PACS does not support the SOP class or operation needed",
    502: "The PACS failed the operation",
    503: "The PACS is unreachable or busy (Retry-After)",
    504: "The PACS did not answer in time",
    }),
}


def _is_rendered_range(media_range: MediaRange) -> bool:
    if media_range.media_type == "multipart/related":
        kind = media_range.part_type or ""
    else:
        kind = media_range.media_type
    return any(kind.startswith(marker) for marker in _RENDERED_MARKERS)


def choose_rendered_type(req: DicomWebRequest) -> str:
    """The rendered media type from the ``accept`` parameter or Accept header (PS3.18 8.7.8):
    400 when DICOM and rendered types are mixed, 406 when none can be produced."""
    ranges = req.accept
    wanted = [r for r in ranges if r.q > 0]
    if any(is_dicom_media_range(r) for r in wanted) and any(_is_rendered_range(r) for r in wanted):
        raise BadRequest("DICOM and rendered media types cannot be mixed in one request "
                         "(PS3.18 8.7.8)")
    media_type, defaulted = negotiate_rendered(ranges)
    if media_type is None or (defaulted and req.services.settings.require_accept_header):
        raise NotAcceptable("none of the requested media types can be rendered: "
                            f"{req.accept_header!r}; "
                            "image/jpeg, image/png and image/gif are offered")
    return media_type


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1 and len(set(values)) > 1:
        raise BadRequest(f"{name} is given more than once")
    return values[0] if values else None


#: The query parameters rendered resources read (PS3.18 Table 8.3.5-1), and thumbnails; listed
#: in the Capabilities Description (app.api.capabilities).
RENDERED_QUERY_PARAMETERS = ("accept", "annotation", "quality", "viewport", "window", "iccprofile")
THUMBNAIL_QUERY_PARAMETERS = ("accept", "viewport")


def rendering_parameters(request: Request, media_type: str, *, thumbnail: bool = False
                         ) -> tuple[RenderParams, list[str]]:
    """RenderParams from the query (PS3.18 Table 8.3.5-1) and the Warning texts to send.

    Thumbnails take only ``viewport=vw,vh`` (default: fit 128x128, never enlarged); the other
    rendering parameters do not apply to them and are ignored."""
    warnings: list[str] = []
    try:
        viewport_text = _single(request, "viewport")
        if thumbnail:
            box = (parse_viewport(viewport_text, allow_source=False) if viewport_text
                   else Viewport(THUMBNAIL_SIDE, THUMBNAIL_SIDE, upscale=False))
            return RenderParams(media_type=media_type, viewport=box), warnings
        viewport = parse_viewport(viewport_text) if viewport_text else None
        window_text = _single(request, "window")
        quality_text = _single(request, "quality")
        params = RenderParams(
            media_type=media_type,
            quality=parse_quality(quality_text) if quality_text else None,
            window=parse_window(window_text) if window_text else None,
            viewport=viewport,
            embed_icc_profile=(_single(request, "iccprofile") or "no").lower() == "yes",
        )
    except RenderParameterError as exc:
        raise BadRequest(str(exc)) from None
    annotation = _single(request, "annotation")
    if annotation is not None:
        keywords = {k.strip().lower() for k in annotation.split(",")}
        if not keywords <= _ANNOTATIONS:
            raise BadRequest(f"annotation {annotation!r}: only patient and technique exist")
        warnings.append(ANNOTATION_WARNING)
    icc = (_single(request, "iccprofile") or "no").lower()
    if icc not in _ICC_VALUES:
        raise BadRequest(f"iccprofile {icc!r} is not one of {', '.join(sorted(_ICC_VALUES))}")
    if icc not in ("no", "yes"):
        warnings.append(ICC_WARNING)
    return params, warnings


def _representation(request: Request, media_type: str) -> str:
    """What distinguishes one rendering of a resource from another: type and parameters."""
    query = sorted((k, v) for k, v in request.query_params.multi_items() if k != "accept")
    return media_type + "?" + "&".join(f"{k}={v}" for k, v in query)


async def _caching(req: DicomWebRequest, ref: StudyRef | SeriesRef | InstanceRef,
                   media_type: str, *, stable: bool = True) -> Validators:
    """Validators of a rendering: an instance's never changes (strong ETag, immutable); a
    series' only while the cache knows its content; a study's (or a thumbnail chosen among
    changing content, ``stable`` False) is revalidated."""
    return await req.validators(ref, _representation(req.request, media_type), stable=stable)


def _warning_headers(base: str, warnings: list[str]) -> list[tuple[str, str]]:
    return [("Warning", warning_value(base, text)) for text in warnings]


def _image_response(image: RenderedImage, headers: dict[str, str],
                    warnings: list[tuple[str, str]]) -> Response:
    response = Response(image.data, media_type=image.media_type, headers=headers)
    for name, value in warnings:
        response.headers.append(name, value)
    return response


def _render_service(req: DicomWebRequest) -> RenderService:
    """The rendering service of the request's PACS; 404 for an unknown one. Routes ask for it
    first, so that an unknown PACS is reported before a fault of the Accept or parameters."""
    return RenderService(req.services.wado(req.pacs), req.services.searcher(req.pacs))


async def _multipart(first: RenderedImage, rest: AsyncGenerator[RenderedImage, None], base: str,
                     study: str, headers: dict[str, str], warnings: list[tuple[str, str]],
                     what: str, media_type: str, pacs: str) -> StreamingResponse:
    """Stream rendered images as multipart/related; a failure after the first part cuts the
    stream short without its closing delimiter (PS3.18 8.6.1.2), logged once."""
    boundary = new_boundary()

    def encode(item: RenderedImage) -> list[bytes]:
        location = instance_url(base, study, item.series_uid, item.sop_instance_uid)
        location += f"/frames/{item.frame}/rendered" if item.frame else "/rendered"
        return [part_header(item.media_type, content_location=location,
                            content_length=len(item.data), boundary=boundary)
                + item.data + part_trailer()]

    response = stream_parts(pacs, first, rest, encode, closing_delimiter(boundary),
                            multipart_content_type(media_type, boundary), what, headers)
    for name, value in warnings:
        response.headers.append(name, value)
    return response


async def _first(images: AsyncIterator[RenderedImage]) -> RenderedImage:
    try:
        return await images.__anext__()
    except StopAsyncIteration:
        raise NotAcceptable("nothing could be rendered") from None


async def _rendered_many(req: DicomWebRequest, ref: StudyRef | SeriesRef) -> Response:
    service = _render_service(req)
    media_type = choose_rendered_type(req)
    params, warnings = rendering_parameters(req.request, media_type)
    headers, unchanged = await _caching(req, ref, media_type)
    if unchanged is not None:
        return unchanged
    base = req.base_url
    images = service.rendered_instances(ref, params)
    first = await _first(images)
    return await _multipart(first, images, base, ref.study_uid, headers,
                            _warning_headers(base, warnings), f"rendering of {ref}", media_type,
                            req.pacs)


@router.get("/studies/{study}/rendered", responses=RENDERED_RESPONSES,
            summary="Retrieve a rendered study")
async def retrieve_rendered_study(req: RequestDep, study: StudyUID) -> Response:
    """Every image instance of the study rendered (first frame each), multipart/related."""
    return await _rendered_many(req, study_ref(study))


@router.get("/studies/{study}/series/{series}/rendered", responses=RENDERED_RESPONSES,
            summary="Retrieve a rendered series")
async def retrieve_rendered_series(req: RequestDep, study: StudyUID,
                                   series: SeriesUID) -> Response:
    """Every image instance of the series rendered (first frame each), multipart/related."""
    return await _rendered_many(req, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered",
            responses=RENDERED_RESPONSES, summary="Retrieve a rendered instance")
async def retrieve_rendered_instance(req: RequestDep, study: StudyUID, series: SeriesUID,
                                     instance: InstanceUID) -> Response:
    """The instance as one image: its first frame, or with image/gif every frame (animated)."""
    ref = instance_ref(study, series, instance)
    service = _render_service(req)
    media_type = choose_rendered_type(req)
    params, warnings = rendering_parameters(req.request, media_type)
    headers, unchanged = await _caching(req, ref, media_type)
    if unchanged is not None:
        return unchanged
    image = await service.rendered_instance(ref, params)
    base = req.base_url
    return _image_response(image, headers, _warning_headers(base, warnings))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            responses=RENDERED_RESPONSES, summary="Retrieve rendered frames")
async def retrieve_rendered_frames(req: RequestDep, study: StudyUID, series: SeriesUID,
                                   instance: InstanceUID, frames: FrameList) -> Response:
    """One frame as one image; several frames as multipart/related, one image per frame."""
    ref = instance_ref(study, series, instance)
    numbers = parse_frame_list(frames, req.services.settings.max_frames_per_request)
    service = _render_service(req)
    media_type = choose_rendered_type(req)
    params, warnings = rendering_parameters(req.request, media_type)
    headers, unchanged = await _caching(req, ref, media_type)
    if unchanged is not None:
        return unchanged
    base = req.base_url
    if len(numbers) == 1:
        image = await service.rendered_instance(ref, params, numbers)
        return _image_response(image, headers, _warning_headers(base, warnings))
    images = service.rendered_frames(ref, numbers, params)
    first = await _first(images)
    return await _multipart(first, images, base, study, headers,
                            _warning_headers(base, warnings), f"rendering of {ref}", media_type,
                            req.pacs)


# -- thumbnails ----------------------------------------------------------------------------------


async def _thumbnail(req: DicomWebRequest, ref: StudyRef | SeriesRef | InstanceRef) -> Response:
    service = _render_service(req)
    media_type = choose_rendered_type(req)
    params, _ = rendering_parameters(req.request, media_type, thumbnail=True)
    headers, unchanged = await _caching(req, ref, media_type, stable=False)
    if unchanged is not None:
        return unchanged
    image = await service.thumbnail(ref, params, req.base_url)
    return _image_response(image, headers, [])


@router.get("/studies/{study}/thumbnail", responses=RENDERED_RESPONSES,
            summary="Retrieve a study thumbnail")
async def retrieve_study_thumbnail(req: RequestDep, study: StudyUID) -> Response:
    """One small image: the middle instance of the study's first series holding images."""
    return await _thumbnail(req, study_ref(study))


@router.get("/studies/{study}/series/{series}/thumbnail", responses=RENDERED_RESPONSES,
            summary="Retrieve a series thumbnail")
async def retrieve_series_thumbnail(req: RequestDep, study: StudyUID,
                                    series: SeriesUID) -> Response:
    """One small image: the series' middle instance (by Instance Number)."""
    return await _thumbnail(req, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            responses=RENDERED_RESPONSES, summary="Retrieve an instance thumbnail")
async def retrieve_instance_thumbnail(req: RequestDep, study: StudyUID, series: SeriesUID,
                                      instance: InstanceUID) -> Response:
    """One small image of the instance (its middle frame)."""
    return await _thumbnail(req, instance_ref(study, series, instance))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
            responses=RENDERED_RESPONSES, summary="Retrieve a frame thumbnail")
async def retrieve_frame_thumbnail(req: RequestDep, study: StudyUID, series: SeriesUID,
                                   instance: InstanceUID, frames: FrameList) -> Response:
    """One small image of the first listed frame."""
    ref = instance_ref(study, series, instance)
    numbers = parse_frame_list(frames, req.services.settings.max_frames_per_request)
    service = _render_service(req)
    media_type = choose_rendered_type(req)
    params, _ = rendering_parameters(req.request, media_type, thumbnail=True)
    headers, unchanged = await _caching(req, ref, media_type)
    if unchanged is not None:
        return unchanged
    image = await service.rendered_instance(ref, params, numbers[:1])
    return _image_response(image, headers, [])
