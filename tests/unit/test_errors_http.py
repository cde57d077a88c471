"""The single mapping from gateway errors (and DIMSE statuses) to HTTP status + DICOM JSON body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Query

from app.api.problems import install_error_handlers, problem_body
from app.dimse.status import Category, category, find_failure, nothing_found, retrieve_failure
from app.errors import (
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
    UpstreamNotSupported,
    UpstreamTimeout,
    UpstreamUnavailable,
)

ERRORS: list[tuple[type[GatewayError], int]] = [
    (GatewayError, 500),
    (BadRequest, 400),
    (NotFound, 404),
    (NotAcceptable, 406),
    (PayloadTooLarge, 413),
    (UpstreamNotSupported, 501),
    (UpstreamError, 502),
    (UpstreamUnavailable, 503),
    (UpstreamTimeout, 504),
]


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def raise_named(name: str, dimse: int | None = None) -> None:
        cls = {c.__name__: c for c, _ in ERRORS}[name]
        raise cls(f"{name} happened ünïcode", dimse_status=dimse)

    @app.get("/crash")
    async def crash() -> None:
        raise ZeroDivisionError("secret detail")

    @app.get("/typed")
    async def typed(n: int = Query()) -> dict[str, int]:
        return {"n": n}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def comment(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert body["00000902"]["vr"] == "LO"
    return str(body["00000902"]["Value"][0])


@pytest.mark.parametrize(("cls", "status"), ERRORS)
async def test_each_error_maps_to_its_status_with_a_dicom_json_body(
    client: httpx.AsyncClient, cls: type[GatewayError], status: int
) -> None:
    assert cls.http_status == status
    r = await client.get(f"/raise/{cls.__name__}")
    assert r.status_code == status
    assert comment(r) == f"{cls.__name__} happened ünïcode"
    assert "00000900" not in r.json()


async def test_dimse_status_is_in_the_body(client: httpx.AsyncClient) -> None:
    r = await client.get("/raise/UpstreamError", params={"dimse": 0xC001})
    assert r.status_code == 502
    assert r.json()["00000900"] == {"vr": "US", "Value": [0xC001]}
    assert list(r.json()) == sorted(r.json())  # DICOM JSON: ascending tags


async def test_503_has_retry_after(client: httpx.AsyncClient) -> None:
    r = await client.get("/raise/UpstreamUnavailable")
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0


def test_retry_after_can_be_chosen() -> None:
    assert UpstreamUnavailable("x", retry_after=30).headers["Retry-After"] == "30"


async def test_unexpected_exception_is_500_with_dicom_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/crash")
    assert r.status_code == 500
    text = comment(r)
    assert "ZeroDivisionError" in text
    assert "secret detail" not in text  # no internals leak to the client


async def test_unknown_route_is_404_with_dicom_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/no/such/route")
    assert r.status_code == 404
    comment(r)


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    r = await client.post("/crash")
    assert r.status_code == 405
    comment(r)


async def test_validation_error_is_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    r = await client.get("/typed", params={"n": "abc"})
    assert r.status_code == 400
    assert "n" in comment(r)


def test_problem_body_is_utf8_json() -> None:
    body = problem_body("日本語", 0xA700)
    assert json.loads(body.decode("utf-8")) == {
        "00000900": {"vr": "US", "Value": [0xA700]},
        "00000902": {"vr": "LO", "Value": ["日本語"]},
    }


# -- DIMSE statuses (PS3.7 C, PS3.4 C.4.1.1.4) -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, Category.SUCCESS),
        (0xFF00, Category.PENDING),
        (0xFF01, Category.PENDING),
        (0xFE00, Category.CANCEL),
        (0x0001, Category.WARNING),
        (0x0107, Category.WARNING),
        (0xB000, Category.WARNING),
        (0xB007, Category.WARNING),
        (0xA700, Category.FAILURE),
        (0xA900, Category.FAILURE),
        (0xC000, Category.FAILURE),
        (0x0122, Category.FAILURE),
        (0x1234, Category.FAILURE),
    ],
)
def test_status_category(status: int, expected: Category) -> None:
    assert category(status) is expected


@pytest.mark.parametrize(
    ("status", "http"),
    [
        (0xA700, 503),
        (0xA701, 503),
        (0xA702, 503),
        (0xA900, 400),
        (0xC000, 502),
        (0xCFFF, 502),
        (0x0122, 501),
        (0xFE00, 502),
        (0x0124, 502),
    ],
)
def test_find_failure_mapping(status: int, http: int) -> None:
    error = find_failure(status, comment="from the PACS")
    assert error.http_status == http
    assert error.dimse_status == status
    assert f"0x{status:04X}" in error.message and "from the PACS" in error.message
    if http == 503:
        assert "Retry-After" in error.headers


@pytest.mark.parametrize(
    ("status", "http"),
    [(0xA701, 503), (0xA702, 503), (0xA801, 502), (0xA900, 502), (0xC000, 502), (0x0122, 501)],
)
def test_retrieve_failure_mapping(status: int, http: int) -> None:
    error = retrieve_failure(status, "C-GET")
    assert error.http_status == http
    assert "C-GET" in error.message


def test_nothing_found_is_404() -> None:
    assert nothing_found("study 1.2.3").http_status == 404
