"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed as they arrive.

Headers are sent once the first instance is in hand, so a missing resource or a failing PACS is
answered with a precise status; after that a failure can only end the stream, which is then cut
short without its closing delimiter so the client sees the truncation (PS3.18 8.6.1.2).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from app.api.conditional import (
    IMMUTABLE,
    REVALIDATE,
    caching_headers,
    etag_for,
    not_modified,
)
from app.api.params import (
    COMMON_ERRORS,
    BulkDataReference,
    FrameList,
    InstanceUID,
    SeriesUID,
    StudyUID,
    errors,
)
from app.api.qido import peer_name, service_base_url
from app.api.state import ServicesDep
from app.api.streaming import TruncatableStreamingResponse, rendered_parts
from app.dicomweb.dicomxml import dataset_to_xml
from app.dicomweb.mediatypes import (
    AS_STORED,
    DICOM,
    DICOM_XML,
    METADATA_OFFERS,
    ZIP,
    Negotiated,
    Offer,
    accept_ranges,
    frame_offers,
    instance_offers,
    negotiate,
    parse_accept,
    zip_offers,
)
from app.dicomweb.multipart import (
    closing_delimiter,
    multipart_content_type,
    new_boundary,
    part_header,
    part_trailer,
)
from app.dicomweb.pixels import Frame
from app.dicomweb.refs import InstanceRef, SeriesRef, instance_ref, series_ref, study_ref
from app.dicomweb.transfer_syntax import (
    ALL_KNOWN,
    FRAME_MEDIA_TYPE,
    NOT_ON_THE_WIRE,
    UNCOMPRESSED,
    decodable,
    encodable,
)
from app.dicomweb.urls import instance_url
from app.dicomweb.ziparchive import ZipStream
from app.errors import BadRequest, GatewayError, NotAcceptable
from app.services.registry import Services
from app.services.retrieve import Ref
from app.services.wado import MetadataItem, WireInstance, bulk_uri_minter

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])

RETRIEVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The resource, streamed as it arrives", "content": {
        "multipart/related": {}, "application/dicom+json": {}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **errors({
        **COMMON_ERRORS,
        400: "Malformed UID, frame list (or a frame listed twice, or too many) or bulk data "
             "reference",
        404: "No such study, series, instance, frame or bulk data element",
        406: "No acceptable media type or transfer syntax, or an Accept without any media type",
    501: "The PACS does not support the SOP class or operation needed",
    502: "The PACS failed the operation",
    503: "The PACS is unreachable or busy (Retry-After)",
    504: "The PACS did not answer in time",
    }),
}


#: The study, series and instance resources: multipart/related, or a ZIP archive.
INSTANCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RETRIEVE_RESPONSES,
    200: {"description": "The instances, streamed as they arrive: multipart/related "
                         "application/dicom, or (Accept: application/zip) one ZIP archive of "
                         "Part-10 files, with Content-Disposition: attachment",
          "content": {"multipart/related": {}, "application/zip": {}}},
}


def requestable_syntaxes() -> list[str]:
    """Syntaxes a client may ask instances in: those the gateway can pass on or produce."""
    return sorted(ts for ts in ALL_KNOWN if ts not in NOT_ON_THE_WIRE and (
        ts in UNCOMPRESSED or decodable(ts) or encodable(ts)))


def _negotiate(request: Request, services: Services, offers: tuple[Offer, ...]) -> Negotiated:
    """Choose a representation from the ``accept`` query parameter or the Accept header."""
    accept_values = request.query_params.getlist("accept")
    header = ", ".join(accept_values) if accept_values else request.headers.get("accept")
    chosen = negotiate(accept_ranges(header), offers)
    if chosen is None or (chosen.defaulted and services.settings.require_accept_header):
        raise NotAcceptable(f"none of the requested media types can be produced: {header!r}")
    return chosen


def _wanted_syntax(chosen: Negotiated) -> str | None:
    """The transfer syntax asked for: a UID, ``*`` (as stored) or None (the default)."""
    if chosen.transfer_syntax == AS_STORED:
        return AS_STORED
    if chosen.transfer_syntax:
        return chosen.offer.transfer_syntax
    return None


def _pixel_syntax(chosen: Negotiated) -> str | None:
    """For frames and bulk data: ``*`` (as stored) or the chosen offer's syntax."""
    if chosen.transfer_syntax == AS_STORED:
        return AS_STORED
    return chosen.offer.transfer_syntax


async def _peek(items: AsyncIterator[object]) -> object:
    """The first item, so that errors before it become proper HTTP statuses."""
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        raise GatewayError("the PACS sent nothing") from None


def _stream(pacs: str, first: object, rest: AsyncIterator[object],
            render: Callable[[object], list[bytes]], closing: bytes | Callable[[], bytes],
            media_type: str, what: str,
            headers: dict[str, str] | None = None) -> StreamingResponse:
    """A streaming response writing ``first`` then ``rest`` through ``render``; a failure after
    the headers ends it without ``closing``, logged once (app.api.streaming)."""
    return TruncatableStreamingResponse(rendered_parts(first, rest, render), closing, what=what,
                                        pacs=pacs, media_type=media_type, headers=headers)


async def _validators(request: Request, services: Services, name: str, ref: Ref,
                      representation: str) -> tuple[dict[str, str], Response | None]:
    """Caching headers for ``ref`` in ``representation``, and a 304 if the client has it.

    An instance never changes (its UID names one immutable object), so instance-level
    resources get a long-lived strong ETag without any lookup; a series or study gets one only
    when the cache knows its complete content."""
    if isinstance(ref, InstanceRef):
        etag: str | None = etag_for(request.url.path, representation)
        policy = IMMUTABLE
    else:
        members = await services.retrieve(name).content_signature(ref)
        etag = etag_for(request.url.path, representation, *members) if members else None
        policy = REVALIDATE
    if etag is not None:
        unchanged = not_modified(request, etag, policy)
        if unchanged is not None:
            return {}, unchanged
    return caching_headers(etag, policy), None


def _representation(chosen: Negotiated) -> str:
    offer = chosen.offer
    return f"{offer.media_type};{offer.part_type};{offer.transfer_syntax};{chosen.transfer_syntax}"


# -- instances ---------------------------------------------------------------------------------


def instance_representations() -> tuple[Offer, ...]:
    """Every representation of the study, series and instance resources: multipart/related
    application/dicom first (the default), then a ZIP archive (Supplement 211), each in every
    syntax the gateway can produce."""
    syntaxes = requestable_syntaxes()
    return instance_offers(syntaxes) + zip_offers(syntaxes)


def _syntax_preferences(request: Request, chosen: Negotiated) -> list[str | None]:
    """Every acceptable syntax for the chosen container's application/dicom parts (or ZIP
    members), best first: the choice is made per part (PS3.18 8.7.8), so an instance that
    cannot be had in the first falls back to the next. None stands for the default (Explicit
    VR LE), ``*`` for as stored."""
    container = chosen.offer.media_type
    offers = [o for o in instance_representations() if o.media_type == container]
    accept_values = request.query_params.getlist("accept")
    header = ", ".join(accept_values) if accept_values else request.headers.get("accept")
    preferences: list[str | None] = [_wanted_syntax(chosen)]
    for media_range in parse_accept(header):
        if media_range.q <= 0 or not any(media_range.matches_offer(o) for o in offers):
            continue
        syntax = media_range.transfer_syntax
        wanted = AS_STORED if syntax == AS_STORED else syntax if syntax else None
        if wanted not in preferences:
            preferences.append(wanted)
    return preferences


def zip_member_name(item: WireInstance) -> str:
    """``{SeriesInstanceUID}/{SOPInstanceUID}.dcm``: UIDs are digits and dots (checked on the
    way in), so every name is safe to unpack anywhere; ``.dcm`` is the extension Supplement 211
    gives Part-10 members."""
    return f"{item.series_uid or 'series'}/{item.sop_instance_uid}.dcm"


def _download_name(ref: Ref) -> str:
    """The file name offered to a browser: the resource's level and UID."""
    if isinstance(ref, InstanceRef):
        return f"instance-{ref.sop_instance_uid}.zip"
    if isinstance(ref, SeriesRef):
        return f"series-{ref.series_uid}.zip"
    return f"study-{ref.study_uid}.zip"


def _zip_stream(name: str, ref: Ref, first: object, instances: AsyncIterator[object],
                headers: dict[str, str]) -> StreamingResponse:
    """The instances as one ZIP archive, each member written as its instance arrives; the
    central directory closes it, so a retrieval cut short leaves a visibly broken archive."""
    archive = ZipStream()

    def render(item: object) -> list[bytes]:
        assert isinstance(item, WireInstance)
        return [archive.add(zip_member_name(item), item.data)]

    disposition = {"Content-Disposition": f'attachment; filename="{_download_name(ref)}"'}
    return _stream(name, first, instances, render, archive.finish, ZIP,
                   f"ZIP retrieval of {ref}", {**headers, **disposition})


async def _retrieve(request: Request, services: Services, ref: Ref) -> Response:
    name = peer_name(request, services)
    chosen = _negotiate(request, services, instance_representations())
    wanted = _syntax_preferences(request, chosen)
    headers, unchanged = await _validators(request, services, name, ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = service_base_url(request, services)
    instances = services.retrieve(name).instances(ref, wanted)
    first = await _peek(instances)
    if chosen.offer.media_type == ZIP:
        return _zip_stream(name, ref, first, instances, headers)
    boundary = new_boundary()

    def render(item: object) -> list[bytes]:
        # Each part is complete on the wire (header, body, CRLF) before the next is rendered.
        assert isinstance(item, WireInstance)
        header = part_header(
            f"{DICOM}; transfer-syntax={item.transfer_syntax}",
            content_location=instance_url(base, ref.study_uid, item.series_uid,
                                          item.sop_instance_uid),
            content_length=len(item.data), boundary=boundary)
        return [header, item.data, part_trailer()]

    return _stream(name, first, instances, render, closing_delimiter(boundary),
                   multipart_content_type(DICOM, boundary), f"retrieval of {ref}", headers)


@router.get("/studies/{study}", responses=INSTANCE_RESPONSES, summary="Retrieve a study")
async def retrieve_study(request: Request, services: ServicesDep, study: StudyUID) -> Response:
    """Study instances as multipart/related application/dicom (PS3.18 10.4.1.1.1), or as one
    ZIP archive of Part-10 files with ``Accept: application/zip`` (Supplement 211)."""
    return await _retrieve(request, services, study_ref(study))


@router.get("/studies/{study}/series/{series}", responses=INSTANCE_RESPONSES,
            summary="Retrieve a series")
async def retrieve_series(request: Request, services: ServicesDep, study: StudyUID,
                          series: SeriesUID) -> Response:
    """Series instances (retrieved at SERIES level, not the whole study)."""
    return await _retrieve(request, services, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}",
            responses=INSTANCE_RESPONSES, summary="Retrieve an instance")
async def retrieve_instance(request: Request, services: ServicesDep, study: StudyUID,
                            series: SeriesUID, instance: InstanceUID) -> Response:
    """One instance (retrieved at IMAGE level)."""
    return await _retrieve(request, services, instance_ref(study, series, instance))


# -- metadata ----------------------------------------------------------------------------------


async def _metadata(request: Request, services: Services, ref: Ref) -> Response:
    name = peer_name(request, services)
    chosen = _negotiate(request, services, METADATA_OFFERS)
    headers, unchanged = await _validators(request, services, name, ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = service_base_url(request, services)
    wado = services.retrieve(name)
    if chosen.offer.part_type == DICOM_XML:
        datasets = wado.metadata_datasets(ref, base)
        first = await _peek(datasets)
        boundary = new_boundary()

        def render_xml(item: object) -> list[bytes]:
            assert isinstance(item, MetadataItem)
            xml = dataset_to_xml(item.dataset, bulk_data_uri=bulk_uri_minter(item.instance_url))
            return [part_header(DICOM_XML, content_length=len(xml), boundary=boundary), xml,
                    part_trailer()]

        return _stream(name, first, datasets, render_xml, closing_delimiter(boundary),
                       multipart_content_type(DICOM_XML, boundary), f"metadata of {ref}",
                       headers)
    objects = wado.metadata_json(ref, base)
    first_json = await _peek(objects)
    state = {"first": True}

    def render_json(item: object) -> list[bytes]:
        assert isinstance(item, bytes)
        lead = b"[" if state["first"] else b","
        state["first"] = False
        return [lead, item]

    return _stream(name, first_json, objects, render_json, b"]",
                   "application/dicom+json",
                   f"metadata of {ref}", headers)


@router.get("/studies/{study}/metadata", responses=RETRIEVE_RESPONSES,
            summary="Retrieve study metadata")
async def retrieve_study_metadata(request: Request, services: ServicesDep,
                                  study: StudyUID) -> Response:
    """Every instance's attributes, bulk data replaced by BulkDataURIs (PS3.18 10.4.1.1.2)."""
    return await _metadata(request, services, study_ref(study))


@router.get("/studies/{study}/series/{series}/metadata", responses=RETRIEVE_RESPONSES,
            summary="Retrieve series metadata")
async def retrieve_series_metadata(request: Request, services: ServicesDep, study: StudyUID,
                                   series: SeriesUID) -> Response:
    """Series metadata."""
    return await _metadata(request, services, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            responses=RETRIEVE_RESPONSES, summary="Retrieve instance metadata")
async def retrieve_instance_metadata(request: Request, services: ServicesDep, study: StudyUID,
                                     series: SeriesUID, instance: InstanceUID) -> Response:
    """Instance metadata."""
    return await _metadata(request, services, instance_ref(study, series, instance))


# -- frames and bulk data ------------------------------------------------------------------------

_FRAME_LIST = re.compile(r"^\s*[0-9]+\s*(,\s*[0-9]+\s*)*$")
_MAX_FRAME_DIGITS = 9  # no instance has a billion frames; keeps int() far from its limits


def parse_frame_list(text: str, max_frames: int) -> list[int]:
    """1-based frame numbers from ``1,3,5`` (PS3.18 10.4.1.1.3): 400 for anything else, for a
    number listed twice, and for more than ``max_frames`` numbers (each listed frame is a part
    of the response: without these limits a short URL asks for any amount of data)."""
    if not _FRAME_LIST.match(text):
        raise BadRequest(f"frame list {text[:100]!r} is not a comma-separated list of frame "
                         "numbers")
    items = [n.strip() for n in text.split(",")]
    if len(items) > max_frames:
        raise BadRequest(f"frame list names {len(items)} frames; at most {max_frames} may be "
                         "asked for at once (max_frames_per_request)")
    if any(len(n.lstrip("0")) > _MAX_FRAME_DIGITS for n in items):
        raise BadRequest("frame list: a frame number is out of range")
    numbers = [int(n.lstrip("0") or "0") for n in items]
    if any(n < 1 for n in numbers):
        raise BadRequest(f"frame list {text[:100]!r}: frame numbers start at 1")
    if len(set(numbers)) != len(numbers):
        twice = next(n for n in numbers if numbers.count(n) > 1)
        raise BadRequest(f"frame list: frame {twice} is listed more than once")
    return numbers


def _part_type(media_type: str, transfer_syntax: str) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}"


def _frame_stream(pacs: str, first: Frame, rest: AsyncIterator[Frame],
                  location: Callable[[Frame], str], what: str,
                  headers: dict[str, str]) -> StreamingResponse:
    """Frames (or bulk data values) as multipart/related, one part sent as each is made."""
    boundary = new_boundary()

    def render(item: object) -> list[bytes]:
        assert isinstance(item, Frame)
        header = part_header(_part_type(item.media_type, item.transfer_syntax),
                             content_location=location(item), content_length=len(item.data),
                             boundary=boundary)
        return [header, item.data, part_trailer()]

    return _stream(pacs, first, rest, render, closing_delimiter(boundary),  # type: ignore[arg-type]
                   multipart_content_type(first.media_type, boundary), what, headers)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            responses=RETRIEVE_RESPONSES, summary="Retrieve frames")
async def retrieve_frames(request: Request, services: ServicesDep, study: StudyUID,
                          series: SeriesUID, instance: InstanceUID, frames: FrameList) -> Response:
    """Pixel data of the listed frames, one part per frame (PS3.18 10.4.1.1.3)."""
    ref = instance_ref(study, series, instance)
    numbers = parse_frame_list(frames, services.settings.max_frames_per_request)
    name = peer_name(request, services)
    chosen = _negotiate(request, services, frame_offers(FRAME_MEDIA_TYPE))
    wanted = _pixel_syntax(chosen)
    headers, unchanged = await _validators(request, services, name, ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = service_base_url(request, services)
    parts = services.retrieve(name).frames(ref, numbers, wanted)
    first = await _peek(parts)
    assert isinstance(first, Frame)
    location = instance_url(base, study, series, instance) + "/frames/"
    return _frame_stream(name, first, parts, lambda f: f"{location}{f.number}",
                         f"frames of {ref}", headers)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{reference}",
            responses=RETRIEVE_RESPONSES, summary="Retrieve bulk data")
async def retrieve_bulkdata(request: Request, services: ServicesDep, study: StudyUID,
                            series: SeriesUID, instance: InstanceUID,
                            reference: BulkDataReference) -> Response:
    """The value of one bulk data element, as minted in a BulkDataURI (PS3.18 10.4.1.1.5)."""
    ref = instance_ref(study, series, instance)
    name = peer_name(request, services)
    chosen = _negotiate(request, services, frame_offers(FRAME_MEDIA_TYPE))
    wanted = _pixel_syntax(chosen)
    headers, unchanged = await _validators(request, services, name, ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    values = services.retrieve(name).bulkdata(ref, reference, wanted)
    first = await _peek(values)
    assert isinstance(first, Frame)
    location = str(request.url.remove_query_params("accept"))
    return _frame_stream(name, first, values, lambda _: location,
                         f"bulk data of {ref}", headers)
