"""QIDO-RS over HTTP (PS3.18 10.6, 8.3.4) against the demo PACS: the six resources, 204, paging,
warnings, 400/404/406, multipart XML, character sets, relational attributes, proxies, and
PACS failures (503, 504)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart

from .conftest import (
    GatewayFactory,
    ScriptedScp,
    eventually,
    free_port,
    gateway_settings,
    peer_config,
    study_result,
)

pytestmark = pytest.mark.timeout(30)

DICOM_JSON = "application/dicom+json"
XML_MULTIPART = 'multipart/related; type="application/dicom+xml"'
FUZZY_TEXT = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed."
)
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
RETRIEVE_URL = "00081190"
PATIENT_NAME = "00100010"


def value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value")
    return values[0] if values else None


def study_uids(samples: list[Dataset]) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in samples}


def first(samples: list[Dataset], **attrs: str) -> Dataset:
    return next(ds for ds in samples if all(str(ds.get(k)) == v for k, v in attrs.items()))


def assert_dicom_json(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(DICOM_JSON)
    body = r.json()
    assert isinstance(body, list) and body
    for obj in body:
        tags = list(obj)
        assert tags == sorted(tags), "DICOM JSON attributes must be in ascending tag order"
        assert all(len(t) == 8 and t == t.upper() for t in tags)
        assert "00080052" not in obj  # QueryRetrieveLevel is DIMSE bookkeeping
        assert obj[RETRIEVE_URL]["vr"] == "UR"
    return body


def warnings(r: httpx.Response) -> list[str]:
    return r.headers.get_list("warning")


# -- the six resources ---------------------------------------------------------------------------


async def test_all_studies(demo_client: httpx.AsyncClient, samples: list[Dataset]) -> None:
    body = assert_dicom_json(await demo_client.get("/dicomweb/studies"))
    assert {value(o, STUDY_UID) for o in body} == study_uids(samples)
    for obj in body:
        uid = value(obj, STUDY_UID)
        assert value(obj, RETRIEVE_URL) == f"http://gw.test/dicomweb/studies/{uid}"
        for tag in ("00080020", "00100010", "00100020", "00201206", "00201208", "00080061"):
            assert tag in obj, tag


async def test_study_series(demo_client: httpx.AsyncClient, samples: list[Dataset]) -> None:
    ct = first(samples, PatientID="DEMO-0001", Modality="CT")
    study = str(ct.StudyInstanceUID)
    body = assert_dicom_json(await demo_client.get(f"/dicomweb/studies/{study}/series"))
    expected = {str(d.SeriesInstanceUID) for d in samples if d.StudyInstanceUID == study}
    assert {value(o, SERIES_UID) for o in body} == expected
    for obj in body:
        assert value(obj, RETRIEVE_URL) == (
            f"http://gw.test/dicomweb/studies/{study}/series/{value(obj, SERIES_UID)}"
        )
        assert value(obj, "00080060") == "CT"
        assert value(obj, "00201209") == 10


async def test_series_instances(demo_client: httpx.AsyncClient, samples: list[Dataset]) -> None:
    ct = first(samples, PatientID="DEMO-0001", Modality="CT")
    study, series = str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)
    r = await demo_client.get(f"/dicomweb/studies/{study}/series/{series}/instances")
    body = assert_dicom_json(r)
    expected = {str(d.SOPInstanceUID) for d in samples if d.SeriesInstanceUID == series}
    assert {value(o, SOP_UID) for o in body} == expected
    for obj in body:
        assert value(obj, RETRIEVE_URL) == (
            f"http://gw.test/dicomweb/studies/{study}/series/{series}"
            f"/instances/{value(obj, SOP_UID)}"
        )
        assert value(obj, "00080016") == str(ct.SOPClassUID)


async def test_study_instances_carry_series_attributes(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    ct = first(samples, PatientID="DEMO-0001", Modality="CT")
    study = str(ct.StudyInstanceUID)
    body = assert_dicom_json(await demo_client.get(f"/dicomweb/studies/{study}/instances"))
    expected = {str(d.SOPInstanceUID) for d in samples if d.StudyInstanceUID == study}
    assert {value(o, SOP_UID) for o in body} == expected
    by_sop = {str(d.SOPInstanceUID): d for d in samples}
    for obj in body:
        source = by_sop[value(obj, SOP_UID)]
        assert value(obj, "00080060") == "CT"
        assert value(obj, SERIES_UID) == str(source.SeriesInstanceUID)
        assert value(obj, RETRIEVE_URL).endswith(
            f"/series/{source.SeriesInstanceUID}/instances/{source.SOPInstanceUID}"
        )


async def test_all_series_with_modality_carry_study_attributes(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    body = assert_dicom_json(await demo_client.get("/dicomweb/series", params={"Modality": "CT"}))
    expected = {str(d.SeriesInstanceUID) for d in samples if d.Modality == "CT"}
    assert {value(o, SERIES_UID) for o in body} == expected
    by_series = {str(d.SeriesInstanceUID): d for d in samples}
    for obj in body:
        source = by_series[value(obj, SERIES_UID)]
        assert value(obj, PATIENT_NAME) == {"Alphabetic": str(source.PatientName)}
        assert value(obj, STUDY_UID) == str(source.StudyInstanceUID)
        assert value(obj, "00080060") == "CT"


async def test_all_instances(demo_client: httpx.AsyncClient, samples: list[Dataset]) -> None:
    r = await demo_client.get("/dicomweb/instances", params={"PatientID": "DEMO-0003"})
    body = assert_dicom_json(r)
    expected = {str(d.SOPInstanceUID) for d in samples if d.PatientID == "DEMO-0003"}
    assert {value(o, SOP_UID) for o in body} == expected
    for obj in body:
        assert value(obj, "00100020") == "DEMO-0003"
        assert SERIES_UID in obj and "00080060" in obj


# -- empty results, paging, warnings -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/dicomweb/studies?PatientID=NOBODY", "/dicomweb/series?Modality=XA",
     "/dicomweb/studies/1.2.3.4.5/series", "/dicomweb/studies/1.2.3/series/1.2.3.4/instances",
     "/dicomweb/studies?limit=0"],
)
async def test_no_match_is_204_without_body(demo_client: httpx.AsyncClient, url: str) -> None:
    r = await demo_client.get(url)
    assert r.status_code == 204
    assert r.content == b""


async def test_offset_past_the_end_is_204(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"offset": "100"})
    assert r.status_code == 204 and r.content == b""


def series_instances_path(samples: list[Dataset]) -> str:
    ct = first(samples, PatientID="DEMO-0001", Modality="CT")
    return f"studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances"


@pytest.mark.parametrize(
    ("resource", "uid_tag", "page"),
    [("studies", STUDY_UID, 3), ("series", SERIES_UID, 5), ("series-instances", SOP_UID, 3)],
)
async def test_pages_reassemble_the_full_set(
    demo_client: httpx.AsyncClient, samples: list[Dataset], resource: str, uid_tag: str,
    page: int,
) -> None:
    path = series_instances_path(samples) if resource == "series-instances" else resource
    everything = assert_dicom_json(await demo_client.get(f"/dicomweb/{path}"))
    all_uids = [value(o, uid_tag) for o in everything]
    assert len(all_uids) > page
    collected: list[str] = []
    offset = 0
    while True:
        r = await demo_client.get(f"/dicomweb/{path}", params={"limit": page, "offset": offset})
        if r.status_code == 204:
            break
        body = assert_dicom_json(r)
        assert len(body) <= page
        collected.extend(value(o, uid_tag) for o in body)
        offset += page
        more = offset < len(all_uids)
        paging = [w for w in warnings(r) if "additional results" in w]
        assert bool(paging) == more, (offset, warnings(r))
        if more:
            assert paging[0].startswith("299 ")
        if not more:
            break
    assert len(collected) == len(set(collected)), "a result appeared on two pages"
    assert collected == all_uids  # same order as the unpaged answer


async def test_identical_requests_give_the_same_order(demo_client: httpx.AsyncClient) -> None:
    url = "/dicomweb/studies?limit=4&offset=2"
    a = assert_dicom_json(await demo_client.get(url))
    b = assert_dicom_json(await demo_client.get(url))
    assert [value(o, STUDY_UID) for o in a] == [value(o, STUDY_UID) for o in b]


async def test_fuzzymatching_gives_the_standard_warning(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"fuzzymatching": "true",
                                                          "PatientID": "DEMO-0001"})
    assert_dicom_json(r)
    fuzzy = [w for w in warnings(r) if FUZZY_TEXT in w]
    assert len(fuzzy) == 1
    assert fuzzy[0].startswith("299 http://gw.test/dicomweb")


async def test_no_warning_without_reason(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"PatientID": "DEMO-0001"})
    assert_dicom_json(r)
    assert warnings(r) == []


# -- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [({"StudyDate": "2019"}, "StudyDate"), ({"StudyDate": "20191301"}, "StudyDate"),
     ({"StudyDate": "2019*"}, "StudyDate"), ({"limit": "-1"}, "limit"),
     ({"offset": "x"}, "offset"), ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
     ({"fuzzymatching": "perhaps"}, "fuzzymatching")],
)
async def test_bad_parameter_is_400_naming_it(
    demo_client: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    r = await demo_client.get("/dicomweb/studies", params=params)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith(DICOM_JSON)
    assert named in value(r.json(), "00000902")


@pytest.mark.parametrize(
    "url",
    ["/dicomweb/studies/not-a-uid/series", "/dicomweb/studies/1.2.3/series/1..2/instances",
     "/dicomweb/studies/1.2.x/instances", "/dicomweb/studies/1.2.3/series/abc/instances"],
)
async def test_malformed_uid_in_path_is_400(demo_client: httpx.AsyncClient, url: str) -> None:
    r = await demo_client.get(url)
    assert r.status_code == 400
    assert "UID" in value(r.json(), "00000902")


async def test_unknown_parameter_is_ignored(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"NoSuchThing": "1", "_": "123"})
    body = assert_dicom_json(r)
    assert {value(o, STUDY_UID) for o in body} == study_uids(samples)


# -- media types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    ["application/dicom+json", "application/json", "*/*", "application/*",
     "application/dicom+json, multipart/related; type=\"application/dicom+xml\";q=0.5"],
)
async def test_json_accept_values(demo_client: httpx.AsyncClient, accept: str) -> None:
    r = await demo_client.get("/dicomweb/studies", headers={"Accept": accept},
                              params={"PatientID": "DEMO-0002"})
    assert r.status_code == 200
    assert json.loads(r.content)


@pytest.mark.parametrize(
    "accept",
    ["image/png", "application/dicom+xml", "text/html", "application/dicom",
     "multipart/related; type=\"application/dicom\""],
)
async def test_unacceptable_media_type_is_406(demo_client: httpx.AsyncClient, accept: str) -> None:
    """PS3.18 10.6.3.2 offers DICOM JSON and multipart/related DICOM XML only: a bare
    application/dicom+xml (one XML document) is not a QIDO-RS representation."""
    r = await demo_client.get("/dicomweb/studies", headers={"Accept": accept})
    assert r.status_code == 406
    assert r.headers["content-type"].startswith(DICOM_JSON)


async def test_multipart_xml_response_parses(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    r = await demo_client.get("/dicomweb/studies", headers={"Accept": XML_MULTIPART})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")
    assert 'type="application/dicom+xml"' in r.headers["content-type"]
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert len(parts) == len(study_uids(samples))
    uids = set()
    for part in parts:
        assert part.content_type is not None
        assert part.content_type.startswith("application/dicom+xml")
        root = ET.fromstring(part.body)
        assert root.tag.endswith("NativeDicomModel")
        attr = root.find(".//{*}DicomAttribute[@tag='0020000D']") or root.find(
            ".//DicomAttribute[@tag='0020000D']"
        )
        assert attr is not None
        uids.add("".join(attr.itertext()).strip())
    assert uids == study_uids(samples)


async def test_accept_query_parameter_overrides_header(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get(
        "/dicomweb/studies",
        params={"accept": XML_MULTIPART, "PatientID": "DEMO-0002"},
        headers={"Accept": "application/dicom+json"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")


# -- character sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient_id", "expected"),
    [
        ("DEMO-0006", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                       "Phonetic": "やまだ^たろう"}),
        ("DEMO-0005", {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}),
        ("DEMO-0004", {"Alphabetic": "Müller^Jürgen"}),
    ],
)
async def test_non_ascii_names_round_trip_exactly(
    demo_client: httpx.AsyncClient, patient_id: str, expected: dict[str, str]
) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"PatientID": patient_id})
    body = assert_dicom_json(r)
    assert r.headers["content-type"] in (DICOM_JSON, f"{DICOM_JSON}; charset=utf-8")
    assert [value(o, PATIENT_NAME) for o in body] == [expected]
    assert "00080005" not in body[0]  # JSON is UTF-8; the DIMSE character set is dropped


async def test_non_ascii_names_in_multipart_xml(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"PatientID": "DEMO-0006"},
                              headers={"Accept": XML_MULTIPART})
    (part,) = parse_multipart(r.content, r.headers["content-type"])
    text = part.body.decode("utf-8")
    assert "山田" in text and "やまだ" in text


@pytest.mark.parametrize("name", ["Müller*", "Müller^Jürgen", "Yamada*"])
async def test_search_by_non_ascii_or_wildcard_name(
    demo_client: httpx.AsyncClient, name: str
) -> None:
    body = assert_dicom_json(await demo_client.get("/dicomweb/studies",
                                                   params={"PatientName": name}))
    assert len(body) == 1


# -- proxies and named PACS ----------------------------------------------------------------------


async def test_x_forwarded_host_changes_retrieve_url(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get(
        "/dicomweb/studies",
        params={"PatientID": "DEMO-0002"},
        headers={"X-Forwarded-Host": "viewer.example.org", "X-Forwarded-Proto": "https"},
    )
    (obj,) = assert_dicom_json(r)
    assert value(obj, RETRIEVE_URL) == (
        f"https://viewer.example.org/dicomweb/studies/{value(obj, STUDY_UID)}"
    )


async def test_named_pacs_route(demo_client: httpx.AsyncClient, samples: list[Dataset]) -> None:
    body = assert_dicom_json(await demo_client.get("/pacs/demo/dicomweb/studies"))
    assert {value(o, STUDY_UID) for o in body} == study_uids(samples)
    assert value(body[0], RETRIEVE_URL).startswith("http://gw.test/pacs/demo/dicomweb/studies/")


async def test_unknown_pacs_name_is_404(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/pacs/nope/dicomweb/studies")
    assert r.status_code == 404
    assert "nope" in value(r.json(), "00000902")


# -- keys of a lower level ------------------------------------------------------------------


async def test_study_search_by_series_attribute(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    r = await demo_client.get("/dicomweb/studies", params={"Modality": "CT"})
    body = assert_dicom_json(r)
    expected = {str(d.StudyInstanceUID) for d in samples if d.Modality == "CT"}
    assert {value(o, STUDY_UID) for o in body} == expected


# -- numeric and private attributes ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
@pytest.mark.parametrize(
    ("resource", "keyword"),
    [("studies", "Rows"), ("series", "Rows"), ("instances", "Columns"), ("instances", "Rows")],
)
async def test_numeric_attributes_are_matched_in_their_vr(
    gateway: GatewayFactory, sample_pacs: DemoPacs, samples: list[Dataset],
    resource: str, keyword: str, engine: str,
) -> None:
    # Rows and Columns are US: the value must reach the C-FIND identifier as a number, not text.
    settings = gateway_settings(peer_config(sample_pacs.port), dimse_engine=engine)
    async with gateway(settings) as client:
        r = await client.get(f"/dicomweb/{resource}", params={keyword: "64"})
        body = assert_dicom_json(r)
        tag = {"studies": STUDY_UID, "series": SERIES_UID, "instances": SOP_UID}[resource]
        attr = {"studies": "StudyInstanceUID", "series": "SeriesInstanceUID",
                "instances": "SOPInstanceUID"}[resource]
        expected = {str(d.get(attr)) for d in samples if d.get(keyword) == 64}
        assert expected and {value(o, tag) for o in body} == expected
        if resource == "instances":
            assert all(o[{"Rows": "00280010", "Columns": "00280011"}[keyword]]
                       == {"vr": "US", "Value": [64]} for o in body)
        assert (await client.get(f"/dicomweb/{resource}", params={keyword: "65000"})
                ).status_code == 204


@pytest.mark.parametrize(
    ("params", "named"),
    [({"Rows": "65536"}, "Rows"), ({"Columns": "-1"}, "Columns"), ({"Rows": "5" * 5000}, "Rows"),
     ({"00091001": "98.41"}, "00091001"), ({"includefield": "00091001"}, "00091001"),
     ({"00090001": "x"}, "00090001")],
)
async def test_values_that_do_not_fit_are_400_naming_them(
    demo_client: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    for resource in ("studies", "series", "instances"):
        r = await demo_client.get(f"/dicomweb/{resource}", params=params)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith(DICOM_JSON)
        assert named in value(r.json(), "00000902")


async def test_private_keys_with_their_creator_are_answered(
    demo_client: httpx.AsyncClient, samples: list[Dataset]
) -> None:
    # The demo PACS holds no private attributes: the keys reach it and the search is answered.
    r = await demo_client.get(
        "/dicomweb/studies", params={"00090010": "Lunit", "includefield": "00091001"}
    )
    assert r.status_code in (200, 204), r.text


# -- PACS failures -------------------------------------------------------------------------------


async def test_pacs_down_is_503_with_retry_after(gateway: GatewayFactory) -> None:
    async with gateway(gateway_settings(peer_config(free_port()))) as client:
        start = time.monotonic()
        r = await client.get("/dicomweb/studies")
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    assert r.headers["content-type"].startswith(DICOM_JSON)
    assert time.monotonic() - start < 3


@pytest.fixture
def silent_pacs(scripted_scp: Any) -> ScriptedScp:
    def silent(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        scp.stop_event.wait(8)
        yield 0x0000, None

    scp: ScriptedScp = scripted_scp(silent)
    return scp


async def test_pacs_slow_is_504(gateway: GatewayFactory, silent_pacs: ScriptedScp) -> None:
    settings = gateway_settings(peer_config(silent_pacs.port, ae_title=silent_pacs.ae_title,
                                            dimse_timeout=1))
    async with gateway(settings) as client:
        start = time.monotonic()
        r = await client.get("/dicomweb/studies")
    assert r.status_code == 504
    assert r.headers["content-type"].startswith(DICOM_JSON)
    assert time.monotonic() - start < 4


async def test_pacs_failure_status_is_502(gateway: GatewayFactory, scripted_scp: Any) -> None:
    def fail(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xC123, None

    scp = scripted_scp(fail)
    settings = gateway_settings(peer_config(scp.port, ae_title=scp.ae_title,
                                            compute_missing_counts=False))
    async with gateway(settings) as client:
        r = await client.get("/dicomweb/studies")
    assert r.status_code == 502
    assert r.json()["00000900"]["Value"] == [0xC123]


async def test_pacs_ignoring_a_key_is_filtered_by_the_gateway(
    gateway: GatewayFactory, scripted_scp: Any
) -> None:
    """A PACS that returns every record whatever the matching keys: the local re-check drops
    the ones whose returned value cannot match."""

    def everything(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, study_result("1.2.3.1", "Doe^John")
        yield 0xFF00, study_result("1.2.3.2", "Smith^Anna")
        yield 0x0000, None

    scp = scripted_scp(everything)
    settings = gateway_settings(peer_config(scp.port, ae_title=scp.ae_title))
    async with gateway(settings) as client:
        r = await client.get("/dicomweb/studies", params={"PatientName": "doe*"})
    body = assert_dicom_json(r)
    assert [value(o, STUDY_UID) for o in body] == ["1.2.3.1"]


async def test_demo_pacs_is_left_without_associations(
    gateway: GatewayFactory, sample_pacs: DemoPacs
) -> None:
    """A cancelled C-FIND leaves no association behind once the pool's idle time has passed
    (the pynetdicom engine releases at once)."""
    settings = gateway_settings(peer_config(sample_pacs.port, association_idle_timeout=0.3))
    async with gateway(settings) as client:
        r = await client.get("/dicomweb/instances", params={"limit": "2"})
        assert r.status_code == 200
        server = sample_pacs._server
        assert server is not None
        # Established ones: pynetdicom (the demo PACS) keeps a connection closed before its
        # A-ASSOCIATE-RQ in its list until its own ARTIM expires (e.g. one that an earlier
        # test's gateway cancelled while connecting, at shutdown).
        assert await eventually(
            lambda: not [a for a in server.active_associations if a.is_established], 5)
