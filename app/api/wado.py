"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed as they arrive.

Headers are sent once the first instance is in hand, so a missing resource or a failing PACS is
answered with a precise status; after that a failure can only end the stream, which is then cut
short without its closing delimiter so the client sees the truncation (PS3.18 8.6.1.2).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from starlette.responses import Response, StreamingResponse

from app.api.compression import body_encoder, choose_coding, coded_etag, encoded_headers
from app.api.deps import DicomWebRequest, RequestDep
from app.api.params import (
    COMMON_ERRORS,
    BulkDataReference,
    FrameList,
    InstanceUID,
    SeriesUID,
    StudyUID,
    errors,
)
from app.api.streaming import stream_parts
from app.dicomweb.dicomxml import dataset_to_xml
from app.dicomweb.mediatypes import (
    AS_STORED,
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    METADATA_OFFERS,
    ZIP,
    Negotiated,
    Offer,
    frame_offers,
    instance_offers,
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
from app.dicomweb.refs import (
    SeriesRef,
    instance_ref,
    level_and_uid,
    parse_frame_list,
    series_ref,
    study_ref,
)
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
from app.errors import GatewayError, NotAcceptable
from app.services.pacs_retrieval import Ref
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


def _negotiate(req: DicomWebRequest, offers: tuple[Offer, ...]) -> Negotiated:
    """Choose a representation from the ``accept`` query parameter or the Accept header."""
    chosen = req.acceptable(offers)
    if chosen is None:
        raise NotAcceptable("none of the requested media types can be produced: "
                            f"{req.accept_header!r}")
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


T = TypeVar("T")


async def _peek(items: AsyncIterator[T]) -> T:
    """The first item, so that errors before it become proper HTTP statuses."""
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        raise GatewayError("the PACS sent nothing") from None


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


def _syntax_preferences(req: DicomWebRequest, chosen: Negotiated) -> list[str | None]:
    """Every acceptable syntax for the chosen container's application/dicom parts (or ZIP
    members), best first: the choice is made per part (PS3.18 8.7.8), so an instance that
    cannot be had in the first falls back to the next. None stands for the default (Explicit
    VR LE), ``*`` for as stored."""
    container = chosen.offer.media_type
    offers = [o for o in instance_representations() if o.media_type == container]
    preferences: list[str | None] = [_wanted_syntax(chosen)]
    for media_range in req.accept:
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
    level, uid = level_and_uid(ref)
    return f"{level}-{uid}.zip"


def _zip_stream(name: str, ref: Ref, first: WireInstance,
                instances: AsyncIterator[WireInstance],
                headers: dict[str, str]) -> StreamingResponse:
    """The instances as one ZIP archive, each member written as its instance arrives; the
    central directory closes it, so a retrieval cut short leaves a visibly broken archive."""
    archive = ZipStream()

    def render(item: WireInstance) -> list[bytes]:
        return [archive.add(zip_member_name(item), item.data)]

    disposition = {"Content-Disposition": f'attachment; filename="{_download_name(ref)}"'}
    return stream_parts(name, first, instances, render, archive.finish, ZIP,
                   f"ZIP retrieval of {ref}", {**headers, **disposition})


async def _retrieve(req: DicomWebRequest, ref: Ref) -> Response:
    name = req.pacs
    chosen = _negotiate(req, instance_representations())
    wanted = _syntax_preferences(req, chosen)
    headers, unchanged = await req.validators(ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = req.base_url
    instances = req.services.wado(name).instances(ref, wanted)
    first = await _peek(instances)
    if chosen.offer.media_type == ZIP:
        return _zip_stream(name, ref, first, instances, headers)
    boundary = new_boundary()

    def render(item: WireInstance) -> list[bytes]:
        # Each part is complete on the wire (header, body, CRLF) before the next is rendered.
        header = part_header(
            f"{DICOM}; transfer-syntax={item.transfer_syntax}",
            content_location=instance_url(base, ref.study_uid, item.series_uid,
                                          item.sop_instance_uid),
            content_length=len(item.data), boundary=boundary)
        return [header, item.data, part_trailer()]

    return stream_parts(name, first, instances, render, closing_delimiter(boundary),
                   multipart_content_type(DICOM, boundary), f"retrieval of {ref}", headers)


@router.get("/studies/{study}", responses=INSTANCE_RESPONSES, summary="Retrieve a study")
async def retrieve_study(req: RequestDep, study: StudyUID) -> Response:
    """Study instances as multipart/related application/dicom (PS3.18 10.4.1.1.1), or as one
    ZIP archive of Part-10 files with ``Accept: application/zip`` (Supplement 211)."""
    return await _retrieve(req, study_ref(study))


@router.get("/studies/{study}/series/{series}", responses=INSTANCE_RESPONSES,
            summary="Retrieve a series")
async def retrieve_series(req: RequestDep, study: StudyUID, series: SeriesUID) -> Response:
    """Series instances (retrieved at SERIES level, not the whole study)."""
    return await _retrieve(req, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}",
            responses=INSTANCE_RESPONSES, summary="Retrieve an instance")
async def retrieve_instance(req: RequestDep, study: StudyUID, series: SeriesUID,
                            instance: InstanceUID) -> Response:
    """One instance (retrieved at IMAGE level)."""
    return await _retrieve(req, instance_ref(study, series, instance))


# -- metadata ----------------------------------------------------------------------------------


async def _metadata(req: DicomWebRequest, ref: Ref) -> Response:
    name = req.pacs
    chosen = _negotiate(req, METADATA_OFFERS)
    headers, unchanged = await req.validators(ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = req.base_url
    wado = req.services.wado(name)
    if chosen.offer.part_type == DICOM_XML:
        datasets = wado.metadata_datasets(ref, base)
        first = await _peek(datasets)
        boundary = new_boundary()

        def render_xml(item: MetadataItem) -> list[bytes]:
            xml = dataset_to_xml(item.dataset, bulk_data_uri=bulk_uri_minter(item.instance_url))
            return [part_header(DICOM_XML, content_length=len(xml), boundary=boundary), xml,
                    part_trailer()]

        return stream_parts(name, first, datasets, render_xml, closing_delimiter(boundary),
                       multipart_content_type(DICOM_XML, boundary), f"metadata of {ref}",
                       headers)
    if isinstance(ref, SeriesRef):
        encoded = await _encoded_series_metadata(req, ref, headers)
        if encoded is not None:
            return encoded
    objects = wado.metadata_json(ref, base)
    first_json = await _peek(objects)
    state = {"first": True}

    def render_json(item: bytes) -> list[bytes]:
        lead = b"[" if state["first"] else b","
        state["first"] = False
        return [lead, item]

    return stream_parts(name, first_json, objects, render_json, b"]",
                   "application/dicom+json",
                   f"metadata of {ref}", headers)


async def _encoded_series_metadata(req: DicomWebRequest, ref: SeriesRef,
                                   headers: dict[str, str]) -> Response | None:
    """A warm series' JSON metadata compressed once and sent as stored, when the client
    accepts a content coding: None to stream it instead (not warm, no coding wanted, or
    compression off). The stored body is named by the base URL, the coding and the ETag, so a
    client gets its own URLs and a changed series is encoded anew."""
    settings = req.services.settings
    coding = choose_coding(req.request.headers.get("accept-encoding"))
    etag = headers.get("ETag")
    if not settings.compress_responses or coding is None or etag is None:
        return None
    variant = hashlib.sha256("\x1f".join((req.base_url, coding, etag)).encode()).hexdigest()

    body = await req.services.wado(req.pacs).encoded_series_metadata(
        ref, req.base_url, variant, body_encoder(coding))
    if body is None:
        return None
    sent = {**headers, "ETag": coded_etag(etag, coding), **encoded_headers(coding)}
    return Response(body, media_type=DICOM_JSON, headers=sent)


@router.get("/studies/{study}/metadata", responses=RETRIEVE_RESPONSES,
            summary="Retrieve study metadata")
async def retrieve_study_metadata(req: RequestDep, study: StudyUID) -> Response:
    """Every instance's attributes, bulk data replaced by BulkDataURIs (PS3.18 10.4.1.1.2)."""
    return await _metadata(req, study_ref(study))


@router.get("/studies/{study}/series/{series}/metadata", responses=RETRIEVE_RESPONSES,
            summary="Retrieve series metadata")
async def retrieve_series_metadata(req: RequestDep, study: StudyUID,
                                   series: SeriesUID) -> Response:
    """Series metadata."""
    return await _metadata(req, series_ref(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            responses=RETRIEVE_RESPONSES, summary="Retrieve instance metadata")
async def retrieve_instance_metadata(req: RequestDep, study: StudyUID, series: SeriesUID,
                                     instance: InstanceUID) -> Response:
    """Instance metadata."""
    return await _metadata(req, instance_ref(study, series, instance))


# -- frames and bulk data ------------------------------------------------------------------------

def _part_type(media_type: str, transfer_syntax: str) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}"


def _frame_stream(pacs: str, first: Frame, rest: AsyncIterator[Frame],
                  location: Callable[[Frame], str], what: str,
                  headers: dict[str, str]) -> StreamingResponse:
    """Frames (or bulk data values) as multipart/related, one part sent as each is made."""
    boundary = new_boundary()

    def render(item: Frame) -> list[bytes]:
        header = part_header(_part_type(item.media_type, item.transfer_syntax),
                             content_location=location(item), content_length=len(item.data),
                             boundary=boundary)
        return [header, item.data, part_trailer()]

    return stream_parts(pacs, first, rest, render, closing_delimiter(boundary),
                   multipart_content_type(first.media_type, boundary), what, headers)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            responses=RETRIEVE_RESPONSES, summary="Retrieve frames")
async def retrieve_frames(req: RequestDep, study: StudyUID, series: SeriesUID,
                          instance: InstanceUID, frames: FrameList) -> Response:
    """Pixel data of the listed frames, one part per frame (PS3.18 10.4.1.1.3)."""
    ref = instance_ref(study, series, instance)
    numbers = parse_frame_list(frames, req.services.settings.max_frames_per_request)
    name = req.pacs
    chosen = _negotiate(req, frame_offers(FRAME_MEDIA_TYPE))
    wanted = _pixel_syntax(chosen)
    headers, unchanged = await req.validators(ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    base = req.base_url
    parts = req.services.wado(name).frames(ref, numbers, wanted)
    first = await _peek(parts)
    location = instance_url(base, study, series, instance) + "/frames/"
    return _frame_stream(name, first, parts, lambda f: f"{location}{f.number}",
                         f"frames of {ref}", headers)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{reference}",
            responses=RETRIEVE_RESPONSES, summary="Retrieve bulk data")
async def retrieve_bulkdata(req: RequestDep, study: StudyUID, series: SeriesUID,
                            instance: InstanceUID, reference: BulkDataReference) -> Response:
    """The value of one bulk data element, as minted in a BulkDataURI (PS3.18 10.4.1.1.5)."""
    ref = instance_ref(study, series, instance)
    name = req.pacs
    chosen = _negotiate(req, frame_offers(FRAME_MEDIA_TYPE))
    wanted = _pixel_syntax(chosen)
    headers, unchanged = await req.validators(ref, _representation(chosen))
    if unchanged is not None:
        return unchanged
    values = req.services.wado(name).bulkdata(ref, reference, wanted)
    first = await _peek(values)
    location = str(req.request.url.remove_query_params("accept"))
    return _frame_stream(name, first, values, lambda _: location,
                         f"bulk data of {ref}", headers)
