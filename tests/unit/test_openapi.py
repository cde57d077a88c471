"""The published contract: openapi/openapi.json must equal what the app generates, and be a valid
OpenAPI document (unique operationIds, every path parameter declared)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from app.dicomweb.refs import UID_PATTERN, is_valid_uid
from app.main import create_app
from app.settings import PacsPeer, Settings

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
QIDO_RESOURCES = (
    "/studies",
    "/studies/{study}/series",
    "/studies/{study}/series/{series}/instances",
    "/studies/{study}/instances",
    "/series",
    "/instances",
)


def _load_generator() -> ModuleType:
    """scripts/gen-openapi as a module (it has no .py suffix)."""
    path = ROOT / "scripts" / "gen-openapi"
    loader = importlib.machinery.SourceFileLoader("gen_openapi", str(path))
    spec = importlib.util.spec_from_loader("gen_openapi", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def document(generator: ModuleType) -> dict[str, Any]:
    doc: dict[str, Any] = generator.openapi_document()
    return doc


def test_committed_document_is_current(generator: ModuleType, document: dict[str, Any]) -> None:
    expected = generator.render(document)
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.is_file() else ""
    assert committed == expected, (
        "openapi/openapi.json differs from create_app(...).openapi(): run scripts/gen-openapi "
        "and commit the result"
    )


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_rendering_is_canonical(generator: ModuleType, document: dict[str, Any]) -> None:
    text = generator.render(document)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text) == document
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_generation_ignores_the_environment(
    generator: ModuleType, document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DWG_DICOMWEB_PREFIX", "/elsewhere")
    monkeypatch.setenv("DWG_AE_TITLE", "OTHER")
    again = generator.openapi_document()
    assert again == document
    assert "/elsewhere/studies" not in again["paths"]


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert "search_for_studies" in ids and "search_for_studies_on_pacs" in ids


@pytest.mark.parametrize("prefix", ["/dicomweb", "/pacs/{pacs}/dicomweb"])
@pytest.mark.parametrize("resource", QIDO_RESOURCES)
def test_every_qido_resource_is_published_with_its_path_parameters(
    document: dict[str, Any], prefix: str, resource: str
) -> None:
    path = prefix + resource
    assert path in document["paths"], f"{path} missing from the contract"
    operation = document["paths"][path]["get"]
    declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
    assert declared == set(re.findall(r"{(\w+)}", path))
    assert {"200", "204", "400", "406", "502", "503", "504"} <= set(operation["responses"])


async def test_named_pacs_route_still_resolves_the_name() -> None:
    """The {pacs} declaration must not change behaviour: an unknown name is a 404 before any
    DIMSE traffic (the configured PACS address is never contacted)."""
    app = create_app(Settings(pacs=[PacsPeer(name="pacs", ae_title="PACS", port=9)]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get(
                "/pacs/unknown/dicomweb/studies", headers={"Accept": "application/dicom+json"}
            )
    assert response.status_code == 404
    assert "unknown" in response.json()["00000902"]["Value"][0]


UID_PARAMETERS = {"study", "series", "instance", "studyUID", "seriesUID", "objectUID"}


def _parameters(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", parameter)
            for path, item in document["paths"].items() for method, op in item.items()
            for parameter in op.get("parameters", [])]


def test_every_uid_parameter_has_the_ps3_5_pattern(document: dict[str, Any]) -> None:
    """Issue #10 item 11: a schema-valid UID is one the gateway accepts (no 400 for it)."""
    found = [(where, p) for where, p in _parameters(document) if p["name"] in UID_PARAMETERS]
    assert len(found) > 60
    for where, parameter in found:
        schema = parameter["schema"]  # optional query parameters: anyOf string/null, pattern beside
        assert schema["pattern"] == UID_PATTERN and schema["maxLength"] == 64, where


def test_every_pacs_route_documents_the_unknown_name_404(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        if path.startswith("/pacs/{pacs}/"):
            for operation in item.values():
                assert "404" in operation["responses"], path


def test_no_route_promises_a_422(document: dict[str, Any]) -> None:
    """Invalid parameters are 400 (app.api.problems), never FastAPI's 422."""
    for path, item in document["paths"].items():
        for operation in item.values():
            assert "422" not in operation["responses"], path
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert "application/dicom+json" in response["content"], (path, status)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.from_regex(UID_PATTERN, fullmatch=True).filter(lambda u: len(u) <= 64))
def test_uid_pattern_and_check_uid_agree_on_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.text(alphabet="0123456789.x ", max_size=70))
def test_uid_pattern_and_check_uid_agree_on_anything(text: str) -> None:
    assert is_valid_uid(text) == (re.fullmatch(UID_PATTERN, text) is not None
                                  and len(text) <= 64)
