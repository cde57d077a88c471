"""Bad input over HTTP against the demo PACS (issue #10): huge numbers, hostile parameter names,
malformed Accept, careless paths. Every such request is a 4xx with a DICOM JSON body, never a
5xx; the table at the end runs every path parameter, query parameter and header the API takes
through malformed, huge, non-ASCII and control-character values."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_sample_studies

from .conftest import gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

DICOM_JSON = "application/dicom+json"
HUGE = "9" * 5000  # past int()'s 4,300-digit limit


def assert_problem(r: httpx.Response, status: int, *mentions: str) -> str:
    """``r`` is ``status`` with a DICOM JSON error body whose ErrorComment names ``mentions``."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(DICOM_JSON)
    comment: str = r.json()["00000902"]["Value"][0]
    for mention in mentions:
        assert mention in comment, comment
    return comment


def _paths(ds: Dataset) -> dict[str, str]:
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    return {"study": f"/dicomweb/studies/{study}", "series": f"/dicomweb/studies/{study}/series/"
            f"{series}", "instance": instance,
            "wado": f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
                    f"&objectUID={sop}"}


@pytest.fixture(scope="module")
def paths(samples: list[Dataset]) -> dict[str, str]:
    return _paths(samples[0])


# -- item 4: numbers beyond int()'s digit limit ---------------------------------------------------


@pytest.mark.parametrize(("target", "parameter"), [
    ("/dicomweb/studies?limit={huge}", "limit"),
    ("/dicomweb/studies?offset={huge}", "offset"),
    ("{instance}/frames/{huge}", "frame"),
    ("{instance}/frames/1,{huge}", "frame"),
    ("{instance}/frames/{huge}/rendered", "frame"),
    ("{instance}/rendered?viewport={huge},{huge}", "viewport"),
    ("{instance}/rendered?viewport=10,10,{huge},0,,", "viewport"),
    ("{instance}/thumbnail?viewport={huge},10", "viewport"),
    ("{instance}/rendered?quality={huge}", "quality"),
    ("{wado}&frameNumber={huge}", "frameNumber"),
    ("{wado}&rows={huge}", "rows"),
    ("{wado}&columns={huge}", "columns"),
    ("/dicomweb/series?SeriesNumber={huge}", "SeriesNumber"),
    ("/dicomweb/instances?InstanceNumber={huge}", "InstanceNumber"),
    ("/dicomweb/studies?NumberOfStudyRelatedInstances={huge}", "NumberOfStudyRelatedInstances"),
])
async def test_huge_numbers_are_400_naming_the_parameter(
        demo_client: httpx.AsyncClient, paths: dict[str, str], target: str,
        parameter: str) -> None:
    r = await demo_client.get(target.format(huge=HUGE, **paths))
    assert_problem(r, 400, parameter)


@pytest.mark.parametrize("value", ["²", "١٢", "１２"])
async def test_non_ascii_digits_are_400(demo_client: httpx.AsyncClient, paths: dict[str, str],
                                        value: str) -> None:
    for target in (f"/dicomweb/studies?limit={value}", f"/dicomweb/series?SeriesNumber={value}",
                   f"{paths['instance']}/rendered?viewport={value},10"):
        assert_problem(await demo_client.get(target), 400)


async def test_huge_forwarded_port_is_400(demo_client: httpx.AsyncClient) -> None:
    for port in (HUGE.encode(), "²".encode()):
        r = await demo_client.get("/dicomweb/studies", headers={
            b"X-Forwarded-Host": b"gw.example.org", b"X-Forwarded-Port": port})
        assert_problem(r, 400, "X-Forwarded-Port")


# -- item 5: unknown parameter names in the Warning header ----------------------------------------


def _warnings(r: httpx.Response) -> list[str]:
    return r.headers.get_list("warning")


async def test_non_ascii_unknown_parameter_is_escaped_in_the_warning(
        demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies?%E5%90%8D=1")
    assert r.status_code == 200, r.text[:300]
    assert any("ignored: %E5%90%8D" in w for w in _warnings(r))


async def test_control_characters_in_unknown_parameter_are_escaped(
        demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies?a%0D%0Ab%22c%5C=1")
    assert r.status_code == 200
    (warning,) = [w for w in _warnings(r) if "ignored" in w]
    assert warning.isascii() and "\r" not in warning and "\n" not in warning
    assert "a%0D%0Ab%22c%5C" in warning


async def test_many_unknown_parameters_give_a_bounded_warning(
        demo_client: httpx.AsyncClient) -> None:
    query = "&".join(f"unknown{i}=1" for i in range(1500))
    r = await demo_client.get(f"/dicomweb/studies?{query}")
    assert r.status_code == 200
    (warning,) = [w for w in _warnings(r) if "ignored" in w]
    assert len(warning) < 600
    assert warning.endswith('and 1490 more"')


async def test_unknown_includefield_is_escaped_too(demo_client: httpx.AsyncClient) -> None:
    r = await demo_client.get("/dicomweb/studies?includefield=%E5%90%8D")
    assert_problem(r, 400)  # not an attribute keyword at all: a 400, not a warning


# -- item 12: a UID with a leading-zero component -------------------------------------------------


@pytest.mark.parametrize("target", [
    "/dicomweb/studies/1.02.3", "/dicomweb/studies/1.02.3/metadata",
    "/dicomweb/studies/1.2.3/series/1.02/metadata", "/dicomweb/studies/01.2/series",
    "/dicomweb/studies?StudyInstanceUID=1.02.3",
    "/dicomweb/wado?requestType=WADO&studyUID=1.2&seriesUID=1.2&objectUID=1.02",
])
async def test_leading_zero_uid_is_400(demo_client: httpx.AsyncClient, target: str) -> None:
    assert_problem(await demo_client.get(target), 400, "1.02" if "1.02" in target else "01.2")


# -- item 16: an Accept header without any media type ---------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/metadata", "/rendered", "/thumbnail", "/frames/1"])
async def test_malformed_accept_is_406(demo_client: httpx.AsyncClient, paths: dict[str, str],
                                       suffix: str) -> None:
    r = await demo_client.get(paths["instance"] + suffix, headers={"Accept": "nope"})
    assert_problem(r, 406, "nope")


async def test_malformed_accept_is_406_for_searches_and_wado_uri(
        demo_client: httpx.AsyncClient, paths: dict[str, str]) -> None:
    assert_problem(await demo_client.get("/dicomweb/studies", headers={"Accept": "nope"}), 406)
    assert_problem(await demo_client.get("/dicomweb/studies?accept=nope"), 406)
    assert_problem(await demo_client.get(paths["wado"], headers={"Accept": "nope"}), 406)


async def test_browser_accept_still_works(demo_client: httpx.AsyncClient,
                                          paths: dict[str, str]) -> None:
    browser = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
               "*/*;q=0.8")
    r = await demo_client.get("/dicomweb/studies", headers={"Accept": browser})
    assert r.status_code == 200 and r.headers["content-type"].startswith(DICOM_JSON)
    r = await demo_client.get(paths["instance"] + "/metadata", headers={"Accept": browser})
    assert r.status_code == 200
    r = await demo_client.get(paths["instance"] + "/metadata", headers={"Accept": "nope, */*"})
    assert r.status_code == 200


# -- item 17: empty path segments -----------------------------------------------------------------


async def test_doubled_slashes_are_collapsed(demo_client: httpx.AsyncClient,
                                             paths: dict[str, str]) -> None:
    expected = await demo_client.get(paths["series"] + "/metadata")
    assert expected.status_code == 200
    doubled = paths["series"].replace("/dicomweb/", "/dicomweb//").replace("/series/",
                                                                             "//series///")
    r = await demo_client.get(doubled + "/metadata")
    assert r.status_code == 200, r.text[:200]
    assert r.json() == expected.json()
    r = await demo_client.get("http://gw.test//dicomweb//studies")
    assert r.status_code == 200
    assert (await demo_client.get("http://gw.test//healthz")).json() == {"status": "ok"}


# -- the bad-input table ------------------------------------------------------------------------
#
# Every path parameter, query parameter and header the API takes, each given a malformed, a huge
# (10,000 characters), a non-ASCII and a control-character value. Whatever the value, the answer
# is never a 5xx, and an error is a 4xx with a DICOM JSON body. Where the value cannot be valid,
# a 4xx is required; where it may be (a patient name in Japanese, an unknown parameter that is
# ignored, a header that is not used), a 2xx is fine too.

BAD_VALUES = {
    "malformed": "1..2,*?\\;=&x-",
    "huge-text": "x" * 10_000,
    "huge-number": "9" * 10_000,
    "non-ascii": "名前é²",
    "control": "a\x00b\r\nc\x7f\x1b",
}
# Header values cannot hold NUL, CR or LF (an HTTP server refuses them before the app).
BAD_HEADER_VALUES = {**BAD_VALUES, "control": "a\x01b\x7fc\x1b"}
MUST_REJECT, MAY_ACCEPT = "4xx", "any"


def _q(value: str) -> str:
    return quote(value, safe="")


def _path_rows(p: dict[str, str], ds: Dataset) -> list[tuple[str, str, str]]:
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    inst = p["instance"]
    return [
        ("study in metadata", "/dicomweb/studies/{v}/metadata", MUST_REJECT),
        ("study in retrieve", "/dicomweb/studies/{v}", MUST_REJECT),
        ("study in search", "/dicomweb/studies/{v}/series", MUST_REJECT),
        ("study in rendered", "/dicomweb/studies/{v}/rendered", MUST_REJECT),
        ("study in thumbnail", "/dicomweb/studies/{v}/thumbnail", MUST_REJECT),
        ("series in metadata", f"/dicomweb/studies/{study}/series/{{v}}/metadata", MUST_REJECT),
        ("series in search", f"/dicomweb/studies/{study}/series/{{v}}/instances", MUST_REJECT),
        ("instance in metadata",
         f"/dicomweb/studies/{study}/series/{series}/instances/{{v}}/metadata", MUST_REJECT),
        ("instance in frames",
         f"/dicomweb/studies/{study}/series/{series}/instances/{{v}}/frames/1", MUST_REJECT),
        ("frames", inst + "/frames/{v}", MUST_REJECT),
        ("frames rendered", inst + "/frames/{v}/rendered", MUST_REJECT),
        ("frames thumbnail", inst + "/frames/{v}/thumbnail", MUST_REJECT),
        ("bulkdata reference", inst + "/bulkdata/{v}", MUST_REJECT),
        ("pacs name", "/pacs/{v}/dicomweb/studies", MUST_REJECT),
        ("pacs name in retrieve", f"/pacs/{{v}}/dicomweb/studies/{study}/metadata",
         MUST_REJECT),
    ]


def _query_rows(p: dict[str, str], ds: Dataset) -> list[tuple[str, str, str]]:
    wado = p["wado"]
    rendered, inst = p["instance"] + "/rendered", p["instance"]
    return [
        ("limit", "/dicomweb/studies?limit={v}", MUST_REJECT),
        ("offset", "/dicomweb/studies?offset={v}", MUST_REJECT),
        ("includefield", "/dicomweb/studies?includefield={v}", MAY_ACCEPT),
        ("fuzzymatching", "/dicomweb/studies?fuzzymatching={v}", MUST_REJECT),
        ("emptyvaluematching", "/dicomweb/studies?emptyvaluematching={v}", MUST_REJECT),
        ("multiplevaluematching", "/dicomweb/studies?multiplevaluematching={v}", MUST_REJECT),
        ("accept (QIDO)", "/dicomweb/studies?accept={v}", MUST_REJECT),
        ("charset", "/dicomweb/studies?charset={v}", MAY_ACCEPT),
        ("PatientName (PN)", "/dicomweb/studies?PatientName={v}", MAY_ACCEPT),
        ("00100020 PatientID (LO)", "/dicomweb/studies?00100020={v}", MAY_ACCEPT),
        ("ModalitiesInStudy (CS)", "/dicomweb/studies?ModalitiesInStudy={v}", MAY_ACCEPT),
        ("StudyDate (DA)", "/dicomweb/studies?StudyDate={v}", MUST_REJECT),
        ("StudyTime (TM)", "/dicomweb/studies?StudyTime={v}", MUST_REJECT),
        ("StudyInstanceUID (UI)", "/dicomweb/studies?StudyInstanceUID={v}", MUST_REJECT),
        ("SeriesNumber (IS)", "/dicomweb/series?SeriesNumber={v}", MUST_REJECT),
        ("NumberOfStudyRelatedInstances (IS)",
         "/dicomweb/studies?NumberOfStudyRelatedInstances={v}", MUST_REJECT),
        ("sequence path", "/dicomweb/studies?RequestAttributesSequence.RequestedProcedureID={v}",
         MAY_ACCEPT),
        ("parameter name", "/dicomweb/studies?{v}=1", MAY_ACCEPT),
        ("accept (metadata)", inst + "/metadata?accept={v}", MUST_REJECT),
        ("accept (frames)", inst + "/frames/1?accept={v}", MUST_REJECT),
        ("viewport", rendered + "?viewport={v}", MUST_REJECT),
        ("viewport (thumbnail)", inst + "/thumbnail?viewport={v}", MUST_REJECT),
        ("window", rendered + "?window={v}", MUST_REJECT),
        ("quality", rendered + "?quality={v}", MUST_REJECT),
        ("annotation", rendered + "?annotation={v}", MUST_REJECT),
        ("iccprofile", rendered + "?iccprofile={v}", MUST_REJECT),
        ("accept (rendered)", rendered + "?accept={v}", MUST_REJECT),
        ("requestType", wado.replace("requestType=WADO", "requestType={v}"), MUST_REJECT),
        ("studyUID", wado.replace(f"studyUID={ds.StudyInstanceUID}", "studyUID={v}"),
         MUST_REJECT),
        ("seriesUID", wado.replace(f"seriesUID={ds.SeriesInstanceUID}", "seriesUID={v}"),
         MUST_REJECT),
        ("objectUID", wado.replace(f"objectUID={ds.SOPInstanceUID}", "objectUID={v}"),
         MUST_REJECT),
        ("contentType", wado + "&contentType={v}", MUST_REJECT),
        ("transferSyntax", wado + "&contentType=application/dicom&transferSyntax={v}",
         MUST_REJECT),
        ("anonymize", wado + "&contentType=application/dicom&anonymize={v}", MAY_ACCEPT),
        ("frameNumber", wado + "&frameNumber={v}", MUST_REJECT),
        ("rows", wado + "&rows={v}", MUST_REJECT),
        ("columns", wado + "&columns={v}", MUST_REJECT),
        ("region", wado + "&region={v}", MUST_REJECT),
        ("windowCenter", wado + "&windowCenter={v}&windowWidth=100", MUST_REJECT),
        ("windowWidth", wado + "&windowCenter=40&windowWidth={v}", MUST_REJECT),
        ("imageQuality", wado + "&imageQuality={v}", MUST_REJECT),
        ("presentationUID", wado + "&presentationUID={v}", MUST_REJECT),
        ("WADO-URI annotation", wado + "&annotation={v}", MAY_ACCEPT),
    ]


def _header_rows(p: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(name, target, header, expectation)."""
    meta = p["instance"] + "/metadata"
    return [
        ("Accept (QIDO)", "/dicomweb/studies", "Accept", MUST_REJECT),
        ("Accept (metadata)", meta, "Accept", MUST_REJECT),
        ("Accept (retrieve)", p["instance"], "Accept", MUST_REJECT),
        ("Accept (rendered)", p["instance"] + "/rendered", "Accept", MUST_REJECT),
        ("Accept (WADO-URI)", p["wado"], "Accept", MUST_REJECT),
        ("Host", "/dicomweb/studies", "Host", MUST_REJECT),
        # A list: its first entry counts ("1..2" of the malformed value is a valid reg-name).
        ("X-Forwarded-Host", "/dicomweb/studies", "X-Forwarded-Host", MAY_ACCEPT),
        ("Host (forwarded)", "/dicomweb/studies", "X-Forwarded-Host-First", MUST_REJECT),
        ("X-Forwarded-Proto", "/dicomweb/studies", "X-Forwarded-Proto", MUST_REJECT),
        ("X-Forwarded-Port", "/dicomweb/studies", "X-Forwarded-Port", MUST_REJECT),
        ("X-Forwarded-Prefix", "/dicomweb/studies", "X-Forwarded-Prefix", MAY_ACCEPT),
        ("Forwarded", "/dicomweb/studies", "Forwarded", MAY_ACCEPT),
        ("If-None-Match", meta, "If-None-Match", MAY_ACCEPT),
        ("Origin", "/dicomweb/studies", "Origin", MAY_ACCEPT),
        ("Authorization", "/dicomweb/studies", "Authorization", MAY_ACCEPT),
    ]


def _check(r: httpx.Response, expectation: str, what: str) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:300])
    if expectation == MUST_REJECT:
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:200])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith(DICOM_JSON), (what, r.headers)
        assert r.json()["00000902"]["Value"][0], what
    for name, value in r.headers.items():
        assert value.isascii() and "\r" not in value and "\n" not in value, (what, name)


def _table_ids(rows: list[tuple[str, ...]]) -> list[str]:
    return [row[0] for row in rows]


# The rows need sample UIDs: the sample studies are the same on every run (the `samples`
# fixture's first dataset).
_FIRST = generate_sample_studies()[0]
PATH_ROWS = _path_rows(_paths(_FIRST), _FIRST)
QUERY_ROWS = _query_rows(_paths(_FIRST), _FIRST)
HEADER_ROWS = _header_rows(_paths(_FIRST))


@pytest.mark.parametrize(("name", "template", "expectation"), PATH_ROWS,
                         ids=_table_ids(PATH_ROWS))
async def test_bad_path_parameter(demo_client: httpx.AsyncClient, name: str, template: str,
                                  expectation: str) -> None:
    for kind, value in BAD_VALUES.items():
        r = await demo_client.get(template.replace("{v}", _q(value)))
        _check(r, expectation, f"{name} {kind}")


@pytest.mark.parametrize(("name", "template", "expectation"), QUERY_ROWS,
                         ids=_table_ids(QUERY_ROWS))
async def test_bad_query_parameter(demo_client: httpx.AsyncClient, name: str, template: str,
                                   expectation: str) -> None:
    for kind, value in BAD_VALUES.items():
        r = await demo_client.get(template.replace("{v}", _q(value)))
        _check(r, expectation, f"{name} {kind}")


@pytest.mark.parametrize(("name", "target", "header", "expectation"), HEADER_ROWS,
                         ids=_table_ids(HEADER_ROWS))
async def test_bad_header(demo_client: httpx.AsyncClient, name: str, target: str, header: str,
                          expectation: str) -> None:
    for kind, value in BAD_HEADER_VALUES.items():
        if header == "X-Forwarded-Host-First":  # the bad value as the list's first entry
            header, value = "X-Forwarded-Host", value.replace(",", ";")
        r = await demo_client.get(target, headers={header.encode(): value.encode("utf-8")})
        _check(r, expectation, f"{name} {kind}")


async def test_admin_inputs(gateway: Any, sample_pacs: DemoPacs) -> None:
    """The admin endpoints' token, Origin, content type and body, as bad as the rest."""
    token = "table-admin-token-0123456789"
    settings = gateway_settings(peer_config(sample_pacs.port), cache_admin_enabled=True,
                                admin_token=token)
    async with gateway(settings) as client:
        for kind, value in BAD_HEADER_VALUES.items():
            for header in ("Authorization", "Origin", "Content-Type"):
                headers = {b"Authorization": f"Bearer {token}".encode(),
                           header.encode(): value.encode("utf-8")}
                r = await client.post("/admin/cache/evict", headers=headers,
                                      content=b'{"study": "1.2.3"}')
                _check(r, MUST_REJECT, f"admin {header} {kind}")
        for kind, value in BAD_VALUES.items():
            for key in ("study", "series", "pacs"):
                r = await client.post("/admin/cache/evict", json={key: value},
                                      headers={"Authorization": f"Bearer {token}"})
                _check(r, MUST_REJECT, f"admin body {key} {kind}")
