"""QIDO-RS (PS3.18 10.6): the six search resources, answered as DICOM JSON or DICOM XML."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydicom.dataset import Dataset
from starlette.responses import Response

from app.api.baseurl import request_origin
from app.api.params import COMMON_ERRORS, SeriesUID, StudyUID, errors
from app.api.state import ServicesDep
from app.api.warning import ignored_parameters_text, warning_value
from app.dicomweb.attributes import QueryLevel
from app.dicomweb.dicomjson import dataset_to_json, encode_json
from app.dicomweb.dicomxml import dataset_to_xml
from app.dicomweb.mediatypes import DICOM_XML, QIDO_OFFERS, accept_ranges, negotiate
from app.dicomweb.multipart import encode_multipart, multipart_content_type, new_boundary
from app.dicomweb.refs import check_uid
from app.dicomweb.search import SearchQuery, parse_search
from app.errors import NotAcceptable, NotFound
from app.services.registry import Services

STUDY_INSTANCE_UID = 0x0020000D

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


def service_base_url(request: Request, services: Services) -> str:
    """The DICOMweb service root for this request's PACS, as the client sees it."""
    settings = services.settings
    origin = request_origin(request, settings)
    pacs = request.path_params.get("pacs")
    if pacs:
        return f"{origin}/pacs/{pacs}{settings.dicomweb_prefix}"
    return f"{origin}{settings.dicomweb_prefix}"


def peer_name(request: Request, services: Services) -> str:
    """The PACS named in the path, or the default one; 404 for an unknown name."""
    try:
        return services.peer(request.path_params.get("pacs")).name
    except LookupError as exc:
        raise NotFound(str(exc)) from None


async def _search(
    request: Request,
    services: Services,
    level: QueryLevel,
    *,
    study: str | None = None,
    series: str | None = None,
    relational: bool = False,
) -> Response:
    name = peer_name(request, services)
    accept_values = request.query_params.getlist("accept")
    accept_header = ", ".join(accept_values) if accept_values else request.headers.get("accept")
    negotiated = negotiate(accept_ranges(accept_header), QIDO_OFFERS)
    if negotiated is None:
        raise NotAcceptable(
            f"cannot produce any of {accept_header!r}; QIDO-RS offers application/dicom+json "
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
    base = service_base_url(request, services)
    result = await services.query(name).search(query, base)
    if level == QueryLevel.STUDY and result.datasets:
        found = [str(ds.StudyInstanceUID) for ds in result.datasets if "StudyInstanceUID" in ds]
        services.prefetch_studies(name, found)
        if _names_studies(query):
            services.prefetch_looked_up(name, found)
    if level == QueryLevel.SERIES and study is not None and result.datasets:
        services.prefetch_series(name, study, [
            (str(ds.SeriesInstanceUID), _count(ds, "NumberOfSeriesRelatedInstances"))
            for ds in result.datasets if "SeriesInstanceUID" in ds])
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
    if not result.datasets:
        response = Response(status_code=204)
    elif negotiated.offer.part_type == DICOM_XML:
        boundary = new_boundary()
        body = encode_multipart([(dataset_to_xml(ds), DICOM_XML) for ds in result.datasets],
                                boundary)
        response = Response(body, media_type=multipart_content_type(DICOM_XML, boundary))
    else:
        body = encode_json([dataset_to_json(ds) for ds in result.datasets])
        response = Response(body, media_type="application/dicom+json")
    for key, value in headers:
        response.headers.append(key, value)
    return response


def _names_studies(query: SearchQuery) -> bool:
    """Whether a study search asks for given StudyInstanceUIDs (a viewer opening a study)."""
    return any(key.path.tags == (STUDY_INSTANCE_UID,) and not key.is_universal
               and not any("*" in v or "?" in v for v in key.values) for key in query.matches)


def _count(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute of a search result, None when absent or not a number."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@router.get("/studies", responses=SEARCH_RESPONSES, summary="Search for studies")
async def search_for_studies(request: Request, services: ServicesDep) -> Response:
    """All Studies (PS3.18 10.6.1, hierarchical, STUDY level)."""
    return await _search(request, services, QueryLevel.STUDY)


@router.get("/studies/{study}/series", responses=SEARCH_RESPONSES,
            summary="Search for a study's series")
async def search_for_study_series(
    request: Request, services: ServicesDep, study: StudyUID
) -> Response:
    """Study's Series (hierarchical, SERIES level)."""
    return await _search(request, services, QueryLevel.SERIES, study=study)


@router.get("/studies/{study}/series/{series}/instances", responses=SEARCH_RESPONSES,
            summary="Search for a series' instances")
async def search_for_series_instances(
    request: Request, services: ServicesDep, study: StudyUID, series: SeriesUID
) -> Response:
    """Study Series' Instances (hierarchical, IMAGE level)."""
    return await _search(request, services, QueryLevel.IMAGE, study=study, series=series)


@router.get("/studies/{study}/instances", responses=SEARCH_RESPONSES,
            summary="Search for a study's instances")
async def search_for_study_instances(
    request: Request, services: ServicesDep, study: StudyUID
) -> Response:
    """Study's Instances (relational, IMAGE level, with series attributes)."""
    return await _search(request, services, QueryLevel.IMAGE, study=study, relational=True)


@router.get("/series", responses=SEARCH_RESPONSES, summary="Search for series")
async def search_for_series(request: Request, services: ServicesDep) -> Response:
    """All Series (relational, SERIES level, with study attributes)."""
    return await _search(request, services, QueryLevel.SERIES, relational=True)


@router.get("/instances", responses=SEARCH_RESPONSES, summary="Search for instances")
async def search_for_instances(request: Request, services: ServicesDep) -> Response:
    """All Instances (relational, IMAGE level, with study and series attributes)."""
    return await _search(request, services, QueryLevel.IMAGE, relational=True)
