"""The Retrieve Capabilities transaction (PS3.18 8.9, Annex H): ``OPTIONS`` on the service root,
or on any DICOMweb resource under it, answers a WADL document describing what this gateway
serves there, with an ``Allow`` header.

The document is built from what the gateway actually serves, so it cannot drift: the resource
tree and each method's id, title, path parameters and statuses come from the FastAPI routes
themselves, and the media types (with the transfer syntaxes the installed codecs can produce)
from the same negotiation tables the handlers use. CORS preflight requests never get here: the
CORS middleware, when configured, answers them first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.responses import Response

from app.api.deps import RequestDep
from app.api.params import COMMON_ERRORS, errors
from app.api.rendered import RENDERED_QUERY_PARAMETERS, THUMBNAIL_QUERY_PARAMETERS
from app.api.stow import STORE_BODY, STORE_OFFERS
from app.api.wado import instance_representations
from app.api.wado_uri import DICOM_ONLY, RENDERED_ONLY, URI_OFFERS
from app.dicomweb.mediatypes import (
    METADATA_OFFERS,
    QIDO_OFFERS,
    Offer,
    frame_offers,
)
from app.dicomweb.refs import check_uid
from app.dicomweb.render import RENDERED_OFFERS
from app.dicomweb.search import CONTROL_PARAMETERS
from app.dicomweb.transfer_syntax import FRAME_MEDIA_TYPE
from app.dicomweb.wadl import (
    WADL_MEDIA_TYPE,
    WadlMethod,
    WadlParam,
    WadlResource,
    render_wadl,
)
from app.errors import NotAcceptable
from app.settings import Settings

#: Representations of the Capabilities Description. PS3.18 Annex H defines it as a WADL
#: document only (the 2014-2017 editions also let a client ask for ``application/json`` without
#: defining that encoding; the current text has no JSON form), so XML it is; plain XML types are
#: accepted as aliases and answered as WADL.
CAPABILITIES_OFFERS: tuple[Offer, ...] = (
    Offer(WADL_MEDIA_TYPE), Offer("application/xml"), Offer("text/xml"))

_UID_PARAMETERS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
                   "instance": "SOPInstanceUID"}


@dataclass(frozen=True)
class Representations:
    """What a route answers with and which query parameters it reads."""

    offers: Callable[[], Sequence[Offer]]
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()  # request body media types (STOW-RS)


def _qido() -> Representations:
    # {attributeID} stands for every matching key: a keyword, a tag or a dotted sequence path.
    return Representations(lambda: QIDO_OFFERS,
                           ("{attributeID}", *sorted(CONTROL_PARAMETERS)))


def _frames() -> Sequence[Offer]:
    return frame_offers(FRAME_MEDIA_TYPE)


def _uri_parameters(route: APIRoute) -> tuple[str, ...]:
    declared = [p.alias for p in route.dependant.query_params]
    return tuple(dict.fromkeys([*declared, "charset", *DICOM_ONLY, *RENDERED_ONLY]))


#: Every DICOMweb route by handler name (its transaction name). A test checks that every GET
#: route the gateway serves under the service root has an entry.
REPRESENTATIONS: dict[str, Representations] = {
    **{name: _qido() for name in (
        "search_for_studies", "search_for_study_series", "search_for_series_instances",
        "search_for_study_instances", "search_for_series", "search_for_instances")},
    **{name: Representations(instance_representations, ("accept",)) for name in (
        "retrieve_study", "retrieve_series", "retrieve_instance")},
    **{name: Representations(lambda: METADATA_OFFERS, ("accept", "charset")) for name in (
        "retrieve_study_metadata", "retrieve_series_metadata", "retrieve_instance_metadata")},
    "retrieve_frames": Representations(_frames, ("accept",)),
    "retrieve_bulkdata": Representations(_frames, ("accept",)),
    **{name: Representations(lambda: RENDERED_OFFERS, RENDERED_QUERY_PARAMETERS) for name in (
        "retrieve_rendered_study", "retrieve_rendered_series", "retrieve_rendered_instance",
        "retrieve_rendered_frames")},
    **{name: Representations(lambda: RENDERED_OFFERS, THUMBNAIL_QUERY_PARAMETERS) for name in (
        "retrieve_study_thumbnail", "retrieve_series_thumbnail", "retrieve_instance_thumbnail",
        "retrieve_frame_thumbnail")},
    "retrieve_wado_uri": Representations(lambda: URI_OFFERS),
    **{name: Representations(lambda: STORE_OFFERS, body=(STORE_BODY,)) for name in (
        "store_instances", "store_study_instances")},
}
#: The methods the Capabilities Description describes (OPTIONS is the transaction itself).
DESCRIBED_METHODS = ("GET", "POST")


def accept_value(offer: Offer) -> str:
    """An offer as a client would ask for it in Accept, its transfer syntax included."""
    if offer.transfer_syntax:
        return f"{offer.content_type}; transfer-syntax={offer.transfer_syntax}"
    return offer.content_type


def accept_options(offers: Sequence[Offer]) -> list[str]:
    """The Accept values a client may send: each offer (the default first), and
    ``transfer-syntax=*`` (as stored) once for each container that takes a transfer syntax,
    after that container's offers."""
    options: list[str] = []
    for index, offer in enumerate(offers):
        options.append(accept_value(offer))
        following = offers[index + 1] if index + 1 < len(offers) else None
        if offer.transfer_syntax and (following is None
                                      or following.content_type != offer.content_type):
            options.append(f"{offer.content_type}; transfer-syntax=*")
    return options


def _method(route: APIRoute, settings: Settings) -> WadlMethod:
    served = REPRESENTATIONS[route.name]
    offers = list(served.offers())
    options = accept_options(offers)
    default = None if settings.require_accept_header or not offers else accept_value(offers[0])
    accept = WadlParam("Accept", "header", required=default is None, default=default,
                       options=tuple(options))
    query = route.dependant.query_params
    names = _uri_parameters(route) if route.name == "retrieve_wado_uri" else served.query
    required = {p.alias for p in query if p.field_info.is_required()}
    params = [accept] + [WadlParam(name, "query", required=name in required,
                                   repeating=name in ("{attributeID}", "includefield"))
                         for name in names]
    statuses = sorted(int(code) for code in route.responses if str(code).isdigit())
    media_types = tuple(dict.fromkeys(o.content_type for o in offers))
    return WadlMethod(name=_described(route), id=route.name, title=route.summary or route.name,
                      params=tuple(params), representations=media_types,
                      success=tuple(s for s in statuses if s < 400) or (200,),
                      failures=tuple(s for s in statuses if s >= 400),
                      request_representations=served.body)


def _described(route: APIRoute) -> str:
    """The method of ``route`` the description names (GET before POST)."""
    return next(m for m in DESCRIBED_METHODS if m in (route.methods or ()))


@dataclass
class _Node:
    """One path segment of the served resource tree."""

    segment: str
    routes: list[APIRoute] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(routes: Sequence[APIRoute]) -> _Node:
    root = _Node("")
    for route in routes:
        node = root
        for segment in route.path.strip("/").split("/"):
            node = node.children.setdefault(segment, _Node(segment))
        node.routes.append(route)
    return root


def _template_params(segment: str, routes: Sequence[APIRoute]) -> list[WadlParam]:
    if not (segment.startswith("{") and segment.endswith("}")):
        return []
    name = segment[1:-1]
    doc = None
    for route in routes:
        for param in route.dependant.path_params:
            if param.name == name and param.field_info.description:
                doc = param.field_info.description
    return [WadlParam(name, "template", required=True, doc=doc)]


def _resource(node: _Node, path: str, routes: Sequence[APIRoute],
              settings: Settings) -> WadlResource:
    segments = path.split("/")
    params = [p for segment in segments for p in _template_params(segment, routes)]
    return WadlResource(
        path=path, params=params,
        methods=[_method(r, settings) for r in node.routes
                 if set(DESCRIBED_METHODS) & set(r.methods or ())],
        children=[_resource(child, child.segment, routes, settings)
                  for child in node.children.values()])


def describe(routes: Sequence[APIRoute], target: str, settings: Settings) -> list[WadlResource]:
    """The resource elements for ``target`` (a route template relative to the service root,
    ``""`` for the root itself): the whole tree for the root, else that resource with its
    methods and every child resource below it."""
    root = _tree(routes)
    if not target.strip("/"):
        return [_resource(child, child.segment, routes, settings)
                for child in root.children.values()]
    node = root
    for segment in target.strip("/").split("/"):
        node = node.children[segment]
    return [_resource(node, target.strip("/"), routes, settings)]


def allowed_methods(routes: Sequence[APIRoute], target: str) -> list[str]:
    """The methods of a resource: those of its routes, then OPTIONS (this transaction)."""
    methods = {m for r in routes if r.path.strip("/") == target.strip("/")
               for m in r.methods or ()}
    return sorted(methods) + ["OPTIONS"]


CAPABILITIES_RESPONSES = {
    200: {"description": "The Capabilities Description: a WADL document (PS3.18 Annex H)",
          "content": {WADL_MEDIA_TYPE: {}}},
    **errors({**COMMON_ERRORS, 406: "An Accept that names no WADL or XML media type"}),
}


def capabilities_router(routes: Sequence[APIRoute], settings: Settings) -> APIRouter:
    """OPTIONS routes for the service root and for every path of ``routes`` (the DICOMweb
    routes, relative to the service root). Only the root's is in the OpenAPI document: the
    others are the same transaction on each resource."""
    router = APIRouter(tags=["Capabilities"])
    served = [r for r in routes if set(DESCRIBED_METHODS) & set(r.methods or ())]

    def endpoint(target: str) -> Callable[..., object]:
        async def retrieve_capabilities(req: RequestDep) -> Response:
            """The Capabilities Description of the service, or of one resource and its
            children (PS3.18 8.9), as WADL."""
            req.pacs  # noqa: B018 - an unknown PACS is 404, as everywhere
            for param, value in req.request.path_params.items():
                if param in _UID_PARAMETERS:
                    check_uid(value, _UID_PARAMETERS[param])
            if req.acceptable(CAPABILITIES_OFFERS) is None:
                raise NotAcceptable(f"the Capabilities Description is WADL ({WADL_MEDIA_TYPE});"
                                    f" cannot produce {req.accept_header!r}")
            base = req.base_url + "/"
            body = render_wadl(base, describe(served, target, req.services.settings))
            return Response(body, media_type=WADL_MEDIA_TYPE,
                            headers={"Allow": ", ".join(allowed_methods(served, target))})

        return retrieve_capabilities

    roots = ["", "/"] if settings.dicomweb_prefix else ["/"]
    for index, path in enumerate(roots):
        router.add_api_route(path, endpoint(""), methods=["OPTIONS"], include_in_schema=index == 0,
                             name="retrieve_capabilities", summary="Retrieve capabilities",
                             responses=CAPABILITIES_RESPONSES)
    for path in dict.fromkeys(r.path for r in served):
        router.add_api_route(path, endpoint(path), methods=["OPTIONS"], include_in_schema=False,
                             name="retrieve_resource_capabilities",
                             responses=CAPABILITIES_RESPONSES)
    return router


__all__ = ["CAPABILITIES_OFFERS", "REPRESENTATIONS", "capabilities_router", "describe"]
