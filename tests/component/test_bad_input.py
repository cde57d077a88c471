"""Bad input over HTTP against the demo PACS (issue #10): huge numbers, hostile parameter names,
malformed Accept, careless paths. Every such request is a 4xx with a DICOM JSON body, never a
5xx; the table at the end runs every path parameter, query parameter and header the API takes
through malformed, huge, non-ASCII and control-character values."""

from __future__ import annotations

import httpx
import pytest
from pydicom.dataset import Dataset

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
