"""STOW-RS (PS3.18 10.5): Store Instances, ``POST /studies`` and ``POST /studies/{study}`` with a
``multipart/related; type="application/dicom"`` body, read as a stream and stored by C-STORE;
answered with the Store Instances Response Module (PS3.18 Annex I).

Mounted only while ``read_only`` is off (it is on by default): otherwise a POST to these paths
is answered by the router with 405 and the methods the resource does serve (app.api.problems
says why), so that 403 keeps its meaning of "you may not" for the authorisation of a writable
gateway. The OpenAPI contract is generated with them (scripts/gen-openapi).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app.api.deps import DicomWebRequest, RequestDep
from app.api.params import COMMON_ERRORS, StudyUID, errors
from app.api.warning import warning_value
from app.dicomweb.dicomjson import dataset_to_json, encode_json
from app.dicomweb.dicomxml import dataset_to_xml
from app.dicomweb.mediatypes import DICOM, DICOM_JSON, DICOM_XML, Offer
from app.dicomweb.multipart import parse_content_type
from app.dicomweb.refs import check_uid
from app.dicomweb.stow import store_response
from app.errors import (
    BadRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)

router = APIRouter(tags=["STOW-RS"])

#: The representations of the response (PS3.18 10.5.3): DICOM JSON by default, or DICOM XML.
STORE_OFFERS: tuple[Offer, ...] = (Offer(DICOM_JSON), Offer(DICOM_XML))
STORE_BODY = 'multipart/related; type="application/dicom"'  # the request body stored
MULTIPART_RELATED = "multipart/related"
MAX_WARNINGS = 10  # failures explained in Warning headers; the rest are counted

_MODULE = {"description": "The Store Instances Response Module (PS3.18 Annex I)",
           "content": {DICOM_JSON: {}, DICOM_XML: {}}}
STORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {**_MODULE, "description": "Every instance stored: the Store Instances Response "
                                    "Module (PS3.18 Annex I)"},
    202: {**_MODULE, "description": "Some instances stored, others failed or were stored with "
                                    "warnings (FailedSOPSequence, WarningReason)"},
    409: {**_MODULE, "description": "No instance stored: each was refused (by the PACS, or "
                                    "its study is not the one the URL names)"},
    **errors({
        **COMMON_ERRORS,
        400: "Malformed UID, multipart body or Content-Type, or no part was a DICOM instance "
             "(the Store Instances Response Module once the body was read)",
        405: "STOW-RS is off (read_only); Allow names the methods that are",
        406: "No acceptable response media type",
        413: "The body exceeds stow_max_request_bytes (Content-Length or as read)",
        415: 'Not multipart/related; type="application/dicom" (metadata and bulk data '
             "STOW is not supported), or a Content-Encoding other than identity",
        502: "The PACS failed every store (association refused or aborted)",
        503: "The PACS is unreachable or busy (Retry-After)",
        504: "The PACS did not answer in time",
    }),
}


def _check_content_type(value: str | None) -> str:
    """The request's Content-Type if it is a STOW-RS instances body; 415 otherwise."""
    if not value:
        raise UnsupportedMediaType('a STOW-RS request needs Content-Type: multipart/related; '
                                   'type="application/dicom"')
    media_type, params = parse_content_type(value)
    if media_type != MULTIPART_RELATED:
        raise UnsupportedMediaType(f'{media_type!r} is not supported: send multipart/related; '
                                   'type="application/dicom" (one Part-10 instance per part)')
    part_type = params.get("type")
    if part_type is not None and part_type.strip().lower() != DICOM:
        raise UnsupportedMediaType(
            f"multipart/related of type {part_type!r} is not supported: this gateway stores "
            'Part-10 instances (type="application/dicom"); metadata with bulk data '
            "(application/dicom+json or +xml) is not accepted")
    return value


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that goes away midway is a BadRequest, so the
    store still reports (and the cache forgets) what was stored before."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before the end of the body"
                         ) from None


async def _store(req: DicomWebRequest, study: str | None) -> Response:
    request, services = req.request, req.services
    settings = services.settings
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    name = req.pacs
    chosen = req.acceptable(STORE_OFFERS)
    if chosen is None:
        raise NotAcceptable(f"the store response is {DICOM_JSON} or {DICOM_XML}; cannot "
                            f"produce {req.accept_header!r}")
    content_type = _check_content_type(request.headers.get("content-type"))
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported for STOW-RS")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.stow_max_request_bytes:
        raise PayloadTooLarge(f"the request body ({length} bytes) exceeds "
                              f"stow_max_request_bytes ({settings.stow_max_request_bytes})")
    outcome = await services.store(name).store_instances(_body(request), content_type, study)
    module = store_response(outcome.stored, outcome.failed, req.base_url, study)
    texts = [f.explanation for f in outcome.failed[:MAX_WARNINGS]]
    if len(outcome.failed) > MAX_WARNINGS:
        texts.append(f"and {len(outcome.failed) - MAX_WARNINGS} more failures")
    headers: dict[str, str] = {}
    for error in (outcome.halted, outcome.upstream):
        if error is not None:
            texts.insert(0, error.message)
            headers.update(error.headers)
    if chosen.offer.content_type == DICOM_XML:
        response = Response(dataset_to_xml(module), status_code=outcome.http_status,
                            media_type=DICOM_XML, headers=headers)
    else:
        response = Response(encode_json(dataset_to_json(module)),
                            status_code=outcome.http_status, media_type=DICOM_JSON,
                            headers=headers)
    for text in texts:
        response.headers.append("Warning", warning_value(req.base_url, text))
    return response


@router.post("/studies", responses=STORE_RESPONSES, summary="Store instances")
async def store_instances(req: RequestDep) -> Response:
    """Store Instances (PS3.18 10.5): every instance of the body, of any study."""
    return await _store(req, None)


@router.post("/studies/{study}", responses=STORE_RESPONSES,
             summary="Store instances of one study")
async def store_study_instances(req: RequestDep, study: StudyUID) -> Response:
    """Store Instances into one study: an instance of another study fails (A900)."""
    return await _store(req, study)
