"""Unit tests for app.dicomweb.dicomxml (Native DICOM Model, PS3.19 Annex A)."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET

from pydicom import Dataset, dcmread, examples
from pydicom.sequence import Sequence

from app.dicomweb.dicomjson import BulkDataRef
from app.dicomweb.dicomxml import NATIVE_DICOM_MODEL_NAMESPACE, dataset_to_xml

NS = {"d": NATIVE_DICOM_MODEL_NAMESPACE}
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"


def _parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def _attr(root: ET.Element, tag: str) -> ET.Element:
    found = root.find(f"d:DicomAttribute[@tag='{tag}']", NS)
    assert found is not None, tag
    return found


def _values(attr: ET.Element) -> list[tuple[str, str | None]]:
    return [(v.get("number", ""), v.text) for v in attr.findall("d:Value", NS)]


def test_document_header_and_root() -> None:
    body = dataset_to_xml(Dataset())
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = _parse(body)
    assert root.tag == f"{{{NATIVE_DICOM_MODEL_NAMESPACE}}}NativeDicomModel"
    assert root.get(XML_SPACE) == "preserve"
    assert list(root) == []


def test_attributes_in_ascending_order_with_keyword_and_vr() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "P<1>&"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(0x00080000, "UL", 4)
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    root = _parse(dataset_to_xml(ds))
    assert [a.get("tag") for a in root] == ["00080005", "00080008", "00100020", "0020000D"]
    patient_id = _attr(root, "00100020")
    assert patient_id.attrib == {"tag": "00100020", "vr": "LO", "keyword": "PatientID"}
    assert _values(patient_id) == [("1", "P<1>&")]
    assert _values(_attr(root, "00080008")) == [("1", "ORIGINAL"), ("3", "AXIAL")]


def test_empty_attribute_has_no_children() -> None:
    ds = Dataset()
    ds.add_new(0x00100020, "LO", "")
    ds.add_new(0x00081199, "SQ", Sequence())
    root = _parse(dataset_to_xml(ds))
    assert list(_attr(root, "00100020")) == []
    assert list(_attr(root, "00081199")) == []


def test_person_name_components() -> None:
    ds = Dataset()
    ds.PatientName = "Wang^XiaoDong=王^小東"
    ds.OtherPatientNames = ["Doe^John^Q^Dr^Jr", ""]
    root = _parse(dataset_to_xml(ds))
    pn = _attr(root, "00100010").find("d:PersonName", NS)
    assert pn is not None and pn.get("number") == "1"
    assert [g.tag.split("}")[1] for g in pn] == ["Alphabetic", "Ideographic"]
    assert pn.findtext("d:Alphabetic/d:FamilyName", namespaces=NS) == "Wang"
    assert pn.findtext("d:Alphabetic/d:GivenName", namespaces=NS) == "XiaoDong"
    assert pn.findtext("d:Ideographic/d:FamilyName", namespaces=NS) == "王"
    assert pn.findtext("d:Ideographic/d:GivenName", namespaces=NS) == "小東"
    others = _attr(root, "00101001").findall("d:PersonName", NS)
    assert len(others) == 1
    alpha = others[0].find("d:Alphabetic", NS)
    assert alpha is not None
    assert [(c.tag.split("}")[1], c.text) for c in alpha] == [
        ("FamilyName", "Doe"),
        ("GivenName", "John"),
        ("MiddleName", "Q"),
        ("NamePrefix", "Dr"),
        ("NameSuffix", "Jr"),
    ]


def test_japanese_name_from_iso2022_source() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    read_back = dcmread(io.BytesIO(buf.getvalue()), force=True)
    body = dataset_to_xml(read_back)
    assert "山田".encode() in body
    root = _parse(body)
    charset = _attr(root, "00080005")  # the source encoding, kept (PS3.18 F.2.2 note 3)
    assert [v.get("number") for v in charset.findall("d:Value", NS)] == ["2"]
    assert charset.findtext("d:Value", namespaces=NS) == "ISO 2022 IR 87"
    pn = _attr(root, "00100010").find("d:PersonName", NS)
    assert pn is not None
    assert pn.findtext("d:Alphabetic/d:FamilyName", namespaces=NS) == "Yamada"
    assert pn.findtext("d:Ideographic/d:FamilyName", namespaces=NS) == "山田"
    assert pn.findtext("d:Ideographic/d:GivenName", namespaces=NS) == "太郎"
    assert pn.findtext("d:Phonetic/d:FamilyName", namespaces=NS) == "やまだ"
    assert pn.findtext("d:Phonetic/d:GivenName", namespaces=NS) == "たろう"


def test_numbers_at_and_sequences() -> None:
    ds = Dataset()
    ds.InstanceNumber = "12"
    ds.PixelSpacing = ["0.50", "0.25"]
    ds.Rows = 512
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00189089, "FD", [0.5, -1.0])
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedSOPSequence = Sequence([Dataset(), item])
    root = _parse(dataset_to_xml(ds))
    assert _values(_attr(root, "00200013")) == [("1", "12")]
    assert _values(_attr(root, "00280030")) == [("1", "0.50"), ("2", "0.25")]
    assert _values(_attr(root, "00280010")) == [("1", "512")]
    assert _values(_attr(root, "00209165")) == [("1", "00100010"), ("2", "7FE00010")]
    assert _values(_attr(root, "00189089")) == [("1", "0.5"), ("2", "-1.0")]
    items = _attr(root, "00081199").findall("d:Item", NS)
    assert [i.get("number") for i in items] == ["1", "2"]
    assert list(items[0]) == []
    assert _values(_attr(items[1], "00081155")) == [("1", "1.2.3")]


def test_binary_inline_and_bulk_data() -> None:
    refs: list[BulkDataRef] = []

    def handler(ref: BulkDataRef) -> str:
        refs.append(ref)
        return f"https://gw/bulk/{ref.tag:08X}"

    ds = Dataset()
    ds.add_new(0x00282000, "OB", b"\x01\x02\x03")
    ds.add_new(0x7FE00010, "OW", b"\x00\x01")
    root = _parse(dataset_to_xml(ds, bulk_data_uri=handler))
    inline = _attr(root, "00282000").findtext("d:InlineBinary", namespaces=NS)
    assert inline is not None and base64.b64decode(inline) == b"\x01\x02\x03"
    bulk = _attr(root, "7FE00010").find("d:BulkData", NS)
    assert bulk is not None and bulk.get("uri") == "https://gw/bulk/7FE00010"
    assert refs == [BulkDataRef(path=(), tag=0x7FE00010, vr="OW", length=2)]
    no_handler = _parse(dataset_to_xml(ds))
    assert _attr(no_handler, "7FE00010").find("d:InlineBinary", NS) is not None


def test_private_elements_carry_private_creator() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    block = ds.private_block(0x0009, "ACME 1.0", create=True)  # creator at (0009,0010)
    block.add_new(0x01, "LO", "secret")  # (0009,1001)
    ds.add_new(0x00110010, "LO", "LONELY CREATOR")  # no data elements: kept as is
    root = _parse(dataset_to_xml(ds))
    assert [a.get("tag") for a in root] == ["00090001", "00100020", "00110010"]
    private = root[0]
    assert private.attrib == {"tag": "00090001", "privateCreator": "ACME 1.0", "vr": "LO"}
    assert _values(private) == [("1", "secret")]


def test_real_ct_parses_and_matches_values() -> None:
    ct = examples.ct
    root = _parse(dataset_to_xml(ct, bulk_data_uri=lambda ref: "bulk"))
    tags = [a.get("tag", "") for a in root]
    assert tags == sorted(tags)
    assert _values(_attr(root, "0020000D")) == [("1", ct.StudyInstanceUID)]
    assert _attr(root, "7FE00010").find("d:BulkData", NS) is not None
