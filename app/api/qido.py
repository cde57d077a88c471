"""QIDO-RS (PS3.18 10.6): the six search resources, answered as DICOM JSON or DICOM XML."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from app.api.compression import body_encoder, choose_coding, encoded_headers
from app.api.deps import DicomWebRequest, RequestDep
from app.api.params import COMMON_ERRORS, SeriesUID, StudyUID, errors
from app.api.warning import ignored_parameters_text, warning_value
from app.dicomweb.attributes import QueryLevel
from app.dicomweb.dicomxml import dataset_to_xml
from app.dicomweb.mediatypes import DICOM_JSON, DICOM_XML, QIDO_OFFERS, negotiate
from app.dicomweb.multipart import encode_multipart, multipart_content_type, new_boundary
from app.dicomweb.refs import check_uid
from app.dicomweb.search import SearchQuery, parse_search
from app.dicomweb.tags import SERIES_INSTANCE_UID, SERIES_RELATED_INSTANCES, STUDY_INSTANCE_UID
from app.errors import NotAcceptable
from app.services.search_result import SearchResult

router = APIRouter(tags=["QIDO-RS"])


FUZZY_WARNING = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
)
MORE_WARNING = "There are additional results that can be requested."
EMPTY_VALUE_WARNING = (
    "The emptyvaluematching parameter is not supported. Only literal matching has been performed."
)
MULTIPLE_VALUE_WARNING = (
    "The multiplevaluematching parameter is not supported. "
    "Only literal matching has been performed."
)

SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Matches, as a DICOM JSON array (or multipart DICOM XML)",
        "content": {"application/dicom+json": {}, "multipart/related": {}},
    },
    204: {"description": "No matches"},
    **errors({
        **COMMON_ERRORS,
        400: "Invalid query parameter value or UID, or the PACS refused a matching key (A900)",
        406: "No acceptable media type, or an Accept without any media type",
    501: "The PACS does not support the SOP class or operation needed",
    502: "The PACS failed the operation",
    503: "The PACS is unreachable or busy (Retry-After)",
    504: "The PACS did not answer in time",
    }),
}


async def _search(
    req: DicomWebRequest,
    level: QueryLevel,
    *,
    study: str | None = None,
    series: str | None = None,
    relational: bool = False,
) -> Response:
    request, services = req.request, req.services
    name = req.pacs
    # require_accept_header is for WADO-RS: a search without Accept is answered in DICOM JSON.
    negotiated = negotiate(req.accept, QIDO_OFFERS)
    if negotiated is None:
        raise NotAcceptable(
            f"cannot produce any of {req.accept_header!r}; QIDO-RS offers application/dicom+json "
            'and multipart/related; type="application/dicom+xml"'
        )
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    settings = services.settings
    query = parse_search(
        request.query_params.multi_items(),
        level=level,
        study_uid=study,
        series_uid=series,
        relational=relational,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    base = req.base_url
    result = await services.searcher(name).search(query, base)
    if level == QueryLevel.STUDY and len(result):
        found = [str(uid) for uid in result.first_values(STUDY_INSTANCE_UID) if uid]
        services.prefetch_studies(name, found)
        if _names_studies(query):
            services.prefetch_looked_up(name, found)
    if level == QueryLevel.SERIES and study is not None and len(result):
        services.prefetch_series(name, study, [
            (str(uid), _count(count)) for uid, count in zip(
                result.first_values(SERIES_INSTANCE_UID),
                result.first_values(SERIES_RELATED_INSTANCES), strict=True) if uid])
    warnings = list(result.warnings)
    if query.fuzzy:
        warnings.append(FUZZY_WARNING)
    if query.empty_value_matching:
        warnings.append(EMPTY_VALUE_WARNING)
    if query.multiple_value_matching:
        warnings.append(MULTIPLE_VALUE_WARNING)
    if result.more:
        warnings.append(MORE_WARNING)
    if query.ignored:
        warnings.append(ignored_parameters_text(query.ignored))
    headers = [("Warning", warning_value(base, w)) for w in warnings]
    if not len(result):
        response = Response(status_code=204)
    elif negotiated.offer.part_type == DICOM_XML:
        boundary = new_boundary()
        body = encode_multipart([(dataset_to_xml(ds), DICOM_XML) for ds in result.datasets],
                                boundary)
        response = Response(body, media_type=multipart_content_type(DICOM_XML, boundary))
    else:
        response = await _json_response(req, result)
    for key, value in headers:
        response.headers.append(key, value)
    return response


async def _json_response(req: DicomWebRequest, result: SearchResult) -> Response:
    """The results as DICOM JSON, in the content coding the client accepts when they are worth
    compressing: encoded here rather than by the middleware, so that identical searches
    answered from one stored result compress it once (SearchResult.encoded_body)."""
    settings = req.services.settings
    body = result.json_body()
    coding = (choose_coding(req.request.headers.get("accept-encoding"))
              if settings.compress_responses else None)
    if coding is None or len(body) < settings.compress_min_bytes:
        return Response(body, media_type=DICOM_JSON)
    return Response(await result.encoded_body(coding, body_encoder(coding)),
                    media_type=DICOM_JSON, headers=encoded_headers(coding))


def _names_studies(query: SearchQuery) -> bool:
    """Whether a study search asks for given StudyInstanceUIDs (a viewer opening a study)."""
    return any(key.path.tags == (STUDY_INSTANCE_UID,) and not key.is_universal
               and not any("*" in v or "?" in v for v in key.values) for key in query.matches)


def _count(value: Any) -> int | None:
    """An integer attribute's value in a search result, None when absent or not a number."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@router.get("/studies", responses=SEARCH_RESPONSES, summary="Search for studies")
async def search_for_studies(req: RequestDep) -> Response:
    """All Studies (PS3.18 10.6.1, hierarchical, STUDY level)."""
    return await _search(req, QueryLevel.STUDY)


@router.get("/studies/{study}/series", responses=SEARCH_RESPONSES,
            summary="Search for a study's series")
async def search_for_study_series(req: RequestDep, study: StudyUID) -> Response:
    """Study's Series (hierarchical, SERIES level)."""
    return await _search(req, QueryLevel.SERIES, study=study)


@router.get("/studies/{study}/series/{series}/instances", responses=SEARCH_RESPONSES,
            summary="Search for a series' instances")
async def search_for_series_instances(
    req: RequestDep, study: StudyUID, series: SeriesUID
) -> Response:
    """Study Series' Instances (hierarchical, IMAGE level)."""
    return await _search(req, QueryLevel.IMAGE, study=study, series=series)


@router.get("/studies/{study}/instances", responses=SEARCH_RESPONSES,
            summary="Search for a study's instances")
async def search_for_study_instances(req: RequestDep, study: StudyUID) -> Response:
    """Study's Instances (relational, IMAGE level, with series attributes)."""
    return await _search(req, QueryLevel.IMAGE, study=study, relational=True)


@router.get("/series", responses=SEARCH_RESPONSES, summary="Search for series")
async def search_for_series(req: RequestDep) -> Response:
    """All Series (relational, SERIES level, with study attributes)."""
    return await _search(req, QueryLevel.SERIES, relational=True)


@router.get("/instances", responses=SEARCH_RESPONSES, summary="Search for instances")
async def search_for_instances(req: RequestDep) -> Response:
    """All Instances (relational, IMAGE level, with study and series attributes)."""
    return await _search(req, QueryLevel.IMAGE, relational=True)
