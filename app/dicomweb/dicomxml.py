"""Native DICOM Model XML (PS3.19 Annex A), the ``application/dicom+xml`` representation.

Shares element selection, VR resolution and value conversion with ``dicomjson`` so both
representations of one dataset say the same thing.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from app.dicomweb.dicomjson import (
    BINARY_VRS,
    BulkDataRef,
    BulkDataURIHandler,
    binary_value,
    bulk_data_uri_for,
    iter_elements,
    resolved_vr,
    text_of,
    values_of,
)

__all__ = ["NATIVE_DICOM_MODEL_NAMESPACE", "dataset_to_xml"]

#: XML namespace of the Native DICOM Model (PS3.19 A.1).
NATIVE_DICOM_MODEL_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def dataset_to_xml(
    ds: Dataset,
    *,
    bulk_data_uri: BulkDataURIHandler | None = None,
    bulk_data_threshold: int = 1024,
) -> bytes:
    """Encode ``ds`` as one UTF-8 ``NativeDicomModel`` document, attributes by ascending tag.

    Private data elements carry a ``privateCreator`` attribute and a tag whose block byte is
    00 (as PS3.19 A.1 and dcm4che do); the Private Creator elements themselves are then
    implied and left out. Binary values follow the same bulk-data rules as ``dataset_to_json``.
    """
    root = ET.Element(
        "NativeDicomModel", {"xmlns": NATIVE_DICOM_MODEL_NAMESPACE, "xml:space": "preserve"}
    )
    _XmlWalker(bulk_data_uri, bulk_data_threshold).dataset(root, ds, ())
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return _XML_DECLARATION + body


def _private_creator(ds: Dataset, tag: int) -> str | None:
    """Return the Private Creator of a private data element, or None when there is none."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 0 or element < 0x1000:
        return None
    creator_tag = (group << 16) | (element >> 8)
    if creator_tag not in ds:
        return None
    value = ds[creator_tag].value
    return str(value).strip() if value else None


def _is_private_creator(tag: int) -> bool:
    """True for a Private Creator element (gggg,0010-00FF) in an odd group."""
    group, element = tag >> 16, tag & 0xFFFF
    return group % 2 == 1 and 0x0010 <= element <= 0x00FF


def _has_private_elements(ds: Dataset, creator_tag: int) -> bool:
    """True when ``ds`` holds data elements in the block reserved by ``creator_tag``."""
    group, block = creator_tag >> 16, creator_tag & 0xFF
    return any(t >> 16 == group and (t & 0xFFFF) >> 8 == block for t in ds.keys())


class _XmlWalker:
    """Walks a Dataset depth-first, appending DicomAttribute elements to a parent."""

    def __init__(self, handler: BulkDataURIHandler | None, threshold: int) -> None:
        self._handler = handler
        self._threshold = threshold

    def dataset(self, parent: ET.Element, ds: Dataset, path: tuple[tuple[int, int], ...]) -> None:
        for elem in iter_elements(ds):
            tag = int(elem.tag)
            if _is_private_creator(tag) and _has_private_elements(ds, tag):
                continue  # implied by the privateCreator attribute of its data elements
            self.element(parent, elem, ds, path, _private_creator(ds, tag))

    def element(
        self,
        parent: ET.Element,
        elem: DataElement,
        ds: Dataset,
        path: tuple[tuple[int, int], ...],
        creator: str | None,
    ) -> None:
        tag = int(elem.tag)
        vr, elem = resolved_vr(elem, ds)
        attrs: dict[str, str] = {}
        if creator is not None:
            attrs["tag"] = f"{tag & 0xFFFF00FF:08X}"
            attrs["privateCreator"] = creator
        else:
            attrs["tag"] = f"{tag:08X}"
            keyword = keyword_for_tag(tag) if (tag >> 16) % 2 == 0 else ""
            if keyword:
                attrs["keyword"] = keyword
        attrs["vr"] = vr
        node = ET.SubElement(parent, "DicomAttribute", attrs)
        if vr == "SQ":
            for index, item in enumerate(elem.value or []):
                item_node = ET.SubElement(node, "Item", {"number": str(index + 1)})
                self.dataset(item_node, item, (*path, (tag, index)))
            return
        if vr in BINARY_VRS:
            data = binary_value(elem.value)
            if not data:
                return
            ref = BulkDataRef(path=path, tag=tag, vr=vr, length=len(data))
            uri = bulk_data_uri_for(ref, self._handler, self._threshold)
            if uri is not None:
                ET.SubElement(node, "BulkData", {"uri": uri})
            else:
                ET.SubElement(node, "InlineBinary").text = base64.b64encode(data).decode("ascii")
            return
        for number, value in enumerate(values_of(elem, vr), start=1):
            if vr == "PN":
                _person_name(node, value, number)
                continue
            text = _value_text(value, vr)
            if text is not None:
                ET.SubElement(node, "Value", {"number": str(number)}).text = text


def _value_text(value: Any, vr: str) -> str | None:
    """Text of one value; numbers keep their DICOM string form, AT is 8 uppercase hex digits."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if vr == "AT":
        return f"{int(value):08X}"
    if vr in ("IS", "DS"):
        return str(value).strip()  # the original text, valid or not
    if vr in ("FL", "FD"):
        return repr(float(value))
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return str(int(value))
    return text_of(value, vr)


def _person_name(node: ET.Element, value: Any, number: int) -> None:
    """Append ``<PersonName number=n>`` with its non-empty groups and components."""
    components = getattr(value, "components", None)
    groups = components if components is not None else str(value).split("=")
    if not any(groups):
        return
    pn = ET.SubElement(node, "PersonName", {"number": str(number)})
    for group_name, group in zip(_PN_GROUPS, groups, strict=False):
        if not group:
            continue
        group_node = ET.SubElement(pn, group_name)
        for component_name, component in zip(_PN_COMPONENTS, group.split("^"), strict=False):
            if component:
                ET.SubElement(group_node, component_name).text = component
