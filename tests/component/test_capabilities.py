"""The Retrieve Capabilities transaction (PS3.18 8.9, Annex H) over a real socket: OPTIONS on the
service root and on each resource answers WADL that names exactly the resources, methods and
media types the gateway serves; CORS preflights are still answered by the CORS layer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.capabilities import REPRESENTATIONS
from app.api.wado import instance_representations
from app.dicomweb.wadl import WADL_MEDIA_TYPE, WADL_NAMESPACE
from app.main import create_app
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

NS = {"w": WADL_NAMESPACE}
WADL = {"Accept": WADL_MEDIA_TYPE}
VIEWER = "http://viewer.test:3000"
# Nothing listens there: the Capabilities Description needs no PACS.
PEER = peer_settings("main", "PACS", "127.0.0.1", 9)


def _server(**settings: Any) -> GatewayServer:
    return GatewayServer(gateway_settings(PEER, **settings))


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayServer]:
    with _server(cors_allow_origins=[VIEWER]) as gateway:
        yield gateway


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def _wadl(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == WADL_MEDIA_TYPE
    root = ET.fromstring(response.content)
    assert root.tag == f"{{{WADL_NAMESPACE}}}application"
    assert len(root.findall("w:resources", NS)) == 1
    return root


def _methods(element: ET.Element, prefix: str = "") -> dict[str, ET.Element]:
    """Full path template -> GET method element, walking nested resources."""
    out: dict[str, ET.Element] = {}
    for resource in element.findall("w:resource", NS):
        path = f"{prefix}/{resource.get('path')}"
        for method in resource.findall("w:method[@name='GET']", NS):
            out[path] = method
        out.update(_methods(resource, path))
    return out


def _accept_options(method: ET.Element) -> list[str]:
    accept = method.find("w:request/w:param[@name='Accept']", NS)
    assert accept is not None and accept.get("style") == "header"
    return [o.get("value", "") for o in accept.findall("w:option", NS)]


def test_root_describes_every_dicomweb_route_and_nothing_else(http: httpx.Client,
                                                              server: GatewayServer) -> None:
    root = _wadl(http.options("/dicomweb", headers=WADL))
    resources = root.find("w:resources", NS)
    assert resources is not None
    assert resources.get("base") == f"{server.url}/dicomweb/"
    described = _methods(resources)
    # The same routes, from the other description the app makes of itself: its OpenAPI.
    document = create_app(server.settings).openapi()
    served = {path.removeprefix("/dicomweb") for path, item in document["paths"].items()
              if path.startswith("/dicomweb/") and "get" in item}
    assert set(described) == served
    # every GET route has one path (the others are STOW-RS's POSTs, off by default)
    assert len(served) == len([n for n, r in REPRESENTATIONS.items() if not r.body])
    ids = {path: method.get("id") for path, method in described.items()}
    assert ids["/studies"] == "search_for_studies"
    assert ids["/studies/{study}/series/{series}/metadata"] == "retrieve_series_metadata"


def test_media_types_and_syntaxes_are_those_negotiated(http: httpx.Client) -> None:
    described = _methods(_wadl(http.options("/dicomweb/", headers=WADL)).findall(
        "w:resources", NS)[0])
    study = described["/studies/{study}"]
    options = _accept_options(study)
    for offer in instance_representations():
        assert f"{offer.content_type}; transfer-syntax={offer.transfer_syntax}" in options
    assert 'application/zip; type="application/dicom"; transfer-syntax=*' in options
    assert not any(o.endswith("transfer-syntax=1.2.840.10008.1.2") for o in options)
    representations = {r.get("mediaType") for r in study.findall("w:response/w:representation",
                                                                 NS)}
    assert {'multipart/related; type="application/dicom"', 'application/zip; type='
            '"application/dicom"', "application/dicom+json"} <= representations
    search = described["/studies"]
    queries = {p.get("name") for p in search.findall("w:request/w:param[@style='query']", NS)}
    assert {"limit", "offset", "includefield", "fuzzymatching", "{attributeID}"} <= queries
    statuses = {r.get("status") for r in search.findall("w:response", NS)}
    assert "200 204" in statuses
    default = search.find("w:request/w:param[@name='Accept']", NS)
    assert default is not None and default.get("default") == "application/dicom+json"


def test_a_resource_describes_itself_and_its_children(http: httpx.Client) -> None:
    r = http.options("/dicomweb/studies/1.2.3/series/4.5.6", headers=WADL)
    assert r.headers["allow"] == "GET, OPTIONS"
    resources = _wadl(r).find("w:resources", NS)
    assert resources is not None
    (top,) = resources.findall("w:resource", NS)
    assert top.get("path") == "studies/{study}/series/{series}"
    templates = {p.get("name") for p in top.findall("w:param[@style='template']", NS)}
    assert templates == {"study", "series"}
    below = set(_methods(resources))
    assert "/studies/{study}/series/{series}" in below
    assert "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}" in below
    assert not any(p in below for p in ("/studies", "/series", "/studies/{study}"))


def test_root_allows_only_options(http: httpx.Client) -> None:
    assert http.options("/dicomweb/").headers["allow"] == "OPTIONS"


def test_named_pacs_root_has_its_own_base(http: httpx.Client, server: GatewayServer) -> None:
    resources = _wadl(http.options("/pacs/main/dicomweb", headers=WADL)).find("w:resources", NS)
    assert resources is not None
    assert resources.get("base") == f"{server.url}/pacs/main/dicomweb/"


@pytest.mark.parametrize(("path", "accept", "status"), [
    ("/dicomweb", "application/json", 406),  # PS3.18 Annex H defines no JSON form
    ("/dicomweb", "application/dicom+json", 406),
    ("/dicomweb", "nope", 406),
    ("/dicomweb/studies/1.02.3", WADL_MEDIA_TYPE, 400),  # not a valid UID
    ("/pacs/unknown/dicomweb", WADL_MEDIA_TYPE, 404),
    ("/dicomweb/no-such-resource", WADL_MEDIA_TYPE, 404),
])
def test_bad_requests_get_a_dicom_status_body(http: httpx.Client, path: str, accept: str,
                                              status: int) -> None:
    r = http.options(path, headers={"Accept": accept})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/dicom+json"
    assert r.json()["00000902"]["Value"][0]


def test_xml_aliases_and_wildcards_get_wadl(http: httpx.Client) -> None:
    for accept in ("application/xml", "text/xml", "*/*", "application/*"):
        r = http.options("/dicomweb/studies", headers={"Accept": accept})
        _wadl(r)


def test_cors_preflight_is_still_the_cors_layers(http: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}
    allowed = http.options("/dicomweb/studies", headers={"Origin": VIEWER, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == VIEWER
    assert "accept" in allowed.headers["access-control-allow-headers"].lower()
    assert "GET" in allowed.headers["access-control-allow-methods"]
    assert WADL_MEDIA_TYPE not in allowed.headers.get("content-type", "")
    other = http.options("/dicomweb/studies", headers={"Origin": "http://evil.test", **preflight})
    assert "access-control-allow-origin" not in other.headers
    # An OPTIONS that is not a preflight is the Capabilities transaction, CORS headers added.
    plain = http.options("/dicomweb/studies", headers={"Origin": VIEWER, **WADL})
    _wadl(plain)
    assert plain.headers["access-control-allow-origin"] == VIEWER


def test_405_names_options_in_allow(http: httpx.Client) -> None:
    r = http.delete("/dicomweb/studies/1.2.3")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, OPTIONS"


def test_required_accept_header_is_required_here_too() -> None:
    with _server(require_accept_header=True) as gateway, \
            httpx.Client(base_url=gateway.dicomweb, timeout=10) as client:
        assert client.options("/", headers={"Accept": ""}).status_code == 406
        root = _wadl(client.options("/", headers=WADL))
    accept = root.find(".//w:method[@id='search_for_studies']/w:request/w:param[@name='Accept']",
                       NS)
    assert accept is not None
    assert accept.get("default") is None and accept.get("required") == "true"


def test_every_dicomweb_route_has_its_representations() -> None:
    from fastapi.routing import APIRoute

    from app.api import qido, rendered, stow, wado, wado_uri

    names = {r.name for router in (qido.router, wado.router, rendered.router, wado_uri.router,
                                   stow.router)
             for r in router.routes if isinstance(r, APIRoute)}
    assert names == set(REPRESENTATIONS)


def test_a_writable_gateway_describes_stow_rs() -> None:
    """With read_only off, the studies resources also describe POST (Store Instances): the
    request body's media type, the response's, and Allow names it; read-only, neither."""
    with _server(read_only=False) as gateway, httpx.Client(base_url=gateway.url,
                                                            timeout=10) as client:
        response = client.options("/dicomweb/studies", headers=WADL)
        root = _wadl(response)
        assert response.headers["allow"] == "GET, POST, OPTIONS"
        posts = {resource.get("path"): method
                 for resource in root.iter(f"{{{WADL_NAMESPACE}}}resource")
                 for method in resource.findall("w:method[@name='POST']", NS)}
        assert set(posts) == {"studies", "{study}"}  # {study} nested under studies
        for method in posts.values():
            body = [r.get("mediaType") for r in method.findall("w:request/w:representation", NS)]
            assert body == ['multipart/related; type="application/dicom"']
            answers = [r.get("mediaType") for r in method.findall("w:response/w:representation",
                                                                  NS)]
            assert "application/dicom+json" in answers and "application/dicom+xml" in answers
    with _server() as gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
        response = client.options("/dicomweb/studies", headers=WADL)
        assert "POST" not in response.headers["allow"]
        assert b'name="POST"' not in response.content
