"""WADL documents (the Capabilities Description of PS3.18 Annex H): value objects for a resource
tree and their XML rendering. Pure code: what goes into the tree is decided by the HTTP layer
(app.api.capabilities), from the routes and media type tables it serves with.

WADL is the W3C member submission of 2009 (namespace ``http://wadl.dev.java.net/2009/02``),
media type ``application/vnd.sun.wadl+xml``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = ["WADL_MEDIA_TYPE", "WADL_NAMESPACE", "WadlMethod", "WadlParam", "WadlResource",
           "render_wadl"]

WADL_MEDIA_TYPE = "application/vnd.sun.wadl+xml"
WADL_NAMESPACE = "http://wadl.dev.java.net/2009/02"
_XSD = "http://www.w3.org/2001/XMLSchema"


@dataclass(frozen=True)
class WadlParam:
    """A request parameter: ``style`` is ``template`` (a path segment), ``query`` or
    ``header``; ``options`` lists the values the server accepts (for Accept: media types)."""

    name: str
    style: str
    required: bool = False
    repeating: bool = False
    default: str | None = None
    options: tuple[str, ...] = ()
    doc: str | None = None


@dataclass(frozen=True)
class WadlMethod:
    """One HTTP method of a resource: its request parameters, the media types of a success
    response, and the statuses it may answer otherwise."""

    name: str
    id: str
    title: str
    params: tuple[WadlParam, ...] = ()
    representations: tuple[str, ...] = ()
    success: tuple[int, ...] = (200,)
    request_representations: tuple[str, ...] = ()  # media types of a request body (POST)
    failures: tuple[int, ...] = ()


@dataclass
class WadlResource:
    """A resource: a path relative to its parent, its methods and its children."""

    path: str
    params: list[WadlParam] = field(default_factory=list)
    methods: list[WadlMethod] = field(default_factory=list)
    children: list[WadlResource] = field(default_factory=list)


def _tag(name: str) -> str:
    return f"{{{WADL_NAMESPACE}}}{name}"


def _param(parent: ET.Element, param: WadlParam) -> None:
    attrs = {"name": param.name, "style": param.style, "type": "xsd:string"}
    if param.required:
        attrs["required"] = "true"
    if param.repeating:
        attrs["repeating"] = "true"
    if param.default is not None:
        attrs["default"] = param.default
    element = ET.SubElement(parent, _tag("param"), attrs)
    if param.doc:
        ET.SubElement(element, _tag("doc")).text = param.doc
    for value in param.options:
        ET.SubElement(element, _tag("option"), {"value": value})


def _method(parent: ET.Element, method: WadlMethod) -> None:
    element = ET.SubElement(parent, _tag("method"), {"name": method.name, "id": method.id})
    ET.SubElement(element, _tag("doc"), {"title": method.title})
    if method.params or method.request_representations:
        request = ET.SubElement(element, _tag("request"))
        for param in method.params:
            _param(request, param)
        for media_type in method.request_representations:
            ET.SubElement(request, _tag("representation"), {"mediaType": media_type})
    ok = ET.SubElement(element, _tag("response"),
                       {"status": " ".join(str(s) for s in method.success)})
    for media_type in method.representations:
        ET.SubElement(ok, _tag("representation"), {"mediaType": media_type})
    if method.failures:
        failed = ET.SubElement(element, _tag("response"),
                               {"status": " ".join(str(s) for s in method.failures)})
        ET.SubElement(failed, _tag("representation"), {"mediaType": "application/dicom+json"})


def _resource(parent: ET.Element, resource: WadlResource) -> None:
    element = ET.SubElement(parent, _tag("resource"), {"path": resource.path})
    for param in resource.params:
        _param(element, param)
    for method in resource.methods:
        _method(element, method)
    for child in resource.children:
        _resource(element, child)


def render_wadl(base: str, resources: list[WadlResource]) -> bytes:
    """The WADL document: one ``application`` holding one ``resources`` whose ``base`` is the
    service root (PS3.18 Annex H), UTF-8 with an XML declaration."""
    ET.register_namespace("", WADL_NAMESPACE)
    root = ET.Element(_tag("application"), {"xmlns:xsd": _XSD})
    container = ET.SubElement(root, _tag("resources"), {"base": base})
    for resource in resources:
        _resource(container, resource)
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"
