"""The documentation stays true to the code: every setting documented with its real default,
README's commands are the scripts that exist, the conformance statement lists the attributes and
warnings the code uses, and the docker-compose files agree with each other and with Settings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydicom.datadict import keyword_for_tag

from app.api import qido
from app.cli import build_parser
from app.dicomweb.attributes import ALL_RETURN_KEYS, REQUIRED_RETURN_KEYS
from app.services import capped, federated_query
from app.settings import PacsPeer, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
CONFORMANCE = ROOT / "docs" / "conformance.md"
README = ROOT / "README.md"


def _rows(markdown: str) -> list[list[str]]:
    """Cells of every Markdown table row (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.lstrip().startswith("|")
    ]


def _documented_default(field: FieldInfo) -> str:
    """How docs/configuration.md writes a field's default."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value: Any = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


@pytest.fixture(scope="module")
def configuration_rows() -> list[list[str]]:
    return _rows(CONFIGURATION.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(
    name: str, configuration_rows: list[list[str]]
) -> None:
    env = f"`DWG_{name.upper()}`"
    rows = [r for r in configuration_rows if r[0] == env]
    assert rows, f"docs/configuration.md has no table row for {env} (setting {name!r})"
    row = rows[0]
    assert row[1] == f"`{name}`", f"{env}: config-file key column should be `{name}`"
    expected = _documented_default(Settings.model_fields[name])
    assert expected in row[3], f"{env}: default column {row[3]!r} should show {expected}"
    assert row[4], f"{env}: meaning missing"


@pytest.mark.parametrize("name", sorted(PacsPeer.model_fields))
def test_every_pacs_peer_field_is_documented_with_its_default(
    name: str, configuration_rows: list[list[str]]
) -> None:
    rows = [r for r in configuration_rows if r[0] == f"`{name}`" and len(r) == 4]
    assert rows, f"docs/configuration.md: the PACS peers table has no row for `{name}`"
    expected = _documented_default(PacsPeer.model_fields[name])
    assert expected in rows[0][2], f"pacs.{name}: default {rows[0][2]!r} should show {expected}"


def test_configuration_documents_no_setting_that_does_not_exist() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = set(re.findall(r"\bDWG_([A-Z0-9_]+)", text))
    known = {n.upper() for n in Settings.model_fields} | {"CONFIG_FILE"}
    assert documented <= known, f"unknown settings documented: {sorted(documented - known)}"


def test_configuration_examples_are_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The TOML and DWG_PACS examples in docs/configuration.md load as real settings."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    toml_blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    pacs_json = re.findall(r"export DWG_PACS='(.*?)'", text)
    assert toml_blocks and pacs_json
    for key in [k for k in os.environ if k.startswith("DWG_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "gateway.toml"
    config.write_text(toml_blocks[0], encoding="utf-8")
    monkeypatch.setenv("DWG_CONFIG_FILE", str(config))
    from_file = load_settings()
    assert [p.name for p in from_file.pacs] == ["main", "archive"]
    monkeypatch.delenv("DWG_CONFIG_FILE")
    monkeypatch.setenv("DWG_PACS", pacs_json[0])
    assert load_settings().peer().ae_title == "ORTHANC"


def test_readme_commands_are_the_scripts_provided() -> None:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"^\./scripts/([\w-]+)\s*$", text, re.MULTILINE)
    assert commands[:2] == ["demo", "test"], "README's Quick start: ./scripts/demo, ./scripts/test"
    for name in set(re.findall(r"\./scripts/([\w-]+)", text)):
        script = ROOT / "scripts" / name
        assert script.is_file(), f"README mentions ./scripts/{name}, which does not exist"
        assert os.access(script, os.X_OK), f"scripts/{name} is not executable"
    demo = (ROOT / "scripts" / "demo").read_text(encoding="utf-8")
    assert 'exec .venv/bin/dicomweb-gateway demo "$@"' in demo
    assert "pytest" in (ROOT / "scripts" / "test").read_text(encoding="utf-8")


def test_readme_demo_address_matches_the_cli_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    address = f"http://{args.host}:{args.port}/dicomweb/studies"
    assert address in README.read_text(encoding="utf-8")
    assert f"{args.host}:{args.port}" in README.read_text(encoding="utf-8")


def test_conformance_lists_the_attributes_the_code_requests() -> None:
    text = CONFORMANCE.read_text(encoding="utf-8")
    tables = list(REQUIRED_RETURN_KEYS.values()) + list(ALL_RETURN_KEYS.values())
    for tag in {t for table in tables for t in table if t != 0x00080005}:
        keyword = keyword_for_tag(tag)
        expected = f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        assert expected in text, f"docs/conformance.md does not list {expected}"


@pytest.mark.parametrize(
    "warning",
    [qido.FUZZY_WARNING, qido.MORE_WARNING, qido.EMPTY_VALUE_WARNING, qido.MULTIPLE_VALUE_WARNING,
     capped.INCOMPLETE_WARNING, capped.EMPTY_DATES_WARNING, federated_query.FAILED_WARNING,
     federated_query.TIMEOUT_WARNING.replace(":g}", "}"), federated_query.TRUNCATED_WARNING],
)
def test_conformance_quotes_the_warning_texts(warning: str) -> None:
    assert warning in CONFORMANCE.read_text(encoding="utf-8")


# -- docker-compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_compose_services_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "orthanc", "gateway"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    assert services["gateway"]["build"] == "."
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{source} is mounted but missing"


def test_compose_gateway_settings_match_orthanc(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's environment and config file load, point at the orthanc service, and use an
    AE title that Orthanc knows and allows to query and retrieve."""
    gateway = compose["services"]["gateway"]
    for key in [k for k in os.environ if k.startswith("DWG_")]:
        monkeypatch.delenv(key)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}
    for key, value in gateway["environment"].items():
        if key == "DWG_CONFIG_FILE":
            value = str(ROOT / mounts[value])
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    peer = settings.peer()
    orthanc = json.loads((ROOT / "docker" / "orthanc.json").read_text())
    assert peer.host == "orthanc"
    assert peer.port == orthanc["DicomPort"]
    assert peer.ae_title == orthanc["DicomAet"]
    assert settings.cache_backend == "redis" and settings.redis_url
    assert settings.redis_url.startswith("redis://redis:")
    modalities = [m for m in orthanc["DicomModalities"].values() if m["AET"] == settings.ae_title]
    assert modalities, f"Orthanc's DicomModalities lacks the gateway AE {settings.ae_title}"
    assert all(modalities[0][k] for k in ("AllowFind", "AllowGet", "AllowMove"))
    assert modalities[0]["Port"] == settings.storage_scp_port


def test_dockerfile_serves_on_the_published_port(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install ." in dockerfile
    assert '"serve", "--host", "0.0.0.0", "--port", "8080"' in dockerfile
    assert "127.0.0.1:8080:8080" in compose["services"]["gateway"]["ports"]
