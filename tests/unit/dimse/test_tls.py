"""DICOM TLS and HTTPS settings: validation, the SSL contexts built from them, the reasons a
failed handshake is given, and start-up errors that name the setting (no peer needed; the
handshakes themselves are tested against Orthanc in tests/integration/test_dicom_tls.py and
against the gateway's HTTPS in tests/component/test_https.py)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.dimse.tls import (
    PinMismatch,
    check_pin,
    client_tls,
    client_tls_cached,
    describe,
    storage_scp_context,
)
from app.settings import ConfigurationError, PacsPeer, PeerTls, load_settings
from app.tlsfiles import TLS12_CIPHERS
from tests.support.certs import Issued, TestCA


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.upper().startswith("DWG_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaf(ca: TestCA) -> Issued:
    return ca.issue("gateway", dns=("localhost",), client=True)


def _peer(**tls: Any) -> PacsPeer:
    return PacsPeer(name="main", ae_title="PACS", host="10.0.0.7", port=2762, tls=tls)


# -- settings ----------------------------------------------------------------------------------
def test_fingerprints_are_normalised() -> None:
    peer = _peer(pinned_sha256=["AB:" * 31 + "AB", "cd" * 32])
    assert peer.tls is not None and peer.tls.pinned_sha256 == ["ab" * 32, "cd" * 32]


@pytest.mark.parametrize(("tls", "message"), [
    ({"pinned_sha256": ["abc"]}, "is not a SHA-256 fingerprint"),
    ({"cert_file": "c.pem"}, "cert_file and key_file: give both"),
    ({"key_file": "k.pem"}, "cert_file and key_file: give both"),
    ({"key_password": "x"}, "key_password: set only with key_file"),
    ({"min_version": "1.1"}, "min_version"),
    ({"verify": False}, "Extra inputs are not permitted"),
])
def test_bad_tls_settings_name_the_key(tls: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        load_settings(pacs=[{"ae_title": "PACS", "tls": tls}])
    assert "pacs.0.tls" in str(raised.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"https_cert_file": "c.pem"}, "https_cert_file and https_key_file: give both"),
    ({"https_key_file": "k.pem"}, "https_cert_file and https_key_file: give both"),
    ({"https_client_ca_file": "ca.pem"}, "set https_cert_file and https_key_file first"),
    ({"https_key_password": "x"}, "set https_cert_file and https_key_file first"),
    ({"storage_scp_tls_cert_file": "c.pem"}, "storage_scp_tls_cert_file and"),
    ({"storage_scp_tls_ca_file": "ca.pem"}, "set storage_scp_tls_cert_file"),
])
def test_bad_server_tls_settings(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(**values)


def test_tls_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DWG_PACS", '[{"ae_title": "PACS", "tls": {"ca_file": "/ca.pem", '
                                 '"server_name": "pacs.example.org"}}]')
    clean_env.setenv("DWG_HTTPS_CERT_FILE", "/gw.crt")
    clean_env.setenv("DWG_HTTPS_KEY_FILE", "/gw.key")
    settings = load_settings()
    assert settings.https_enabled and not settings.storage_scp_tls_enabled
    assert settings.peer().tls == PeerTls(ca_file="/ca.pem", server_name="pacs.example.org")


# -- client contexts ---------------------------------------------------------------------------
def test_no_tls_setting_no_context() -> None:
    assert client_tls(PacsPeer(ae_title="PACS")) is None
    assert client_tls_cached(PacsPeer(ae_title="PACS")) is None


def test_a_ca_verifies_chain_and_host(ca: TestCA, leaf: Issued) -> None:
    tls = client_tls(_peer(ca_file=str(ca.cert_file), cert_file=str(leaf.cert_file),
                           key_file=str(leaf.key_file)))
    assert tls is not None
    assert tls.context.verify_mode is ssl.CERT_REQUIRED and tls.context.check_hostname
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in tls.context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)
    assert tls.server_hostname == "10.0.0.7" and not tls.pins
    assert [c["subject"] for c in tls.context.get_ca_certs()] == [
        ((("commonName", "DWG Test CA"),),)]


def test_server_name_and_no_hostname_check(ca: TestCA) -> None:
    tls = client_tls(_peer(ca_file=str(ca.cert_file), server_name="pacs.example.org",
                           verify_hostname=False, min_version="1.3"))
    assert tls is not None and tls.server_hostname == "pacs.example.org"
    assert not tls.context.check_hostname and tls.context.verify_mode is ssl.CERT_REQUIRED
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_a_pin_without_ca_is_the_only_check() -> None:
    tls = client_tls(_peer(pinned_sha256=["ab" * 32]))
    assert tls is not None and tls.pins == frozenset({"ab" * 32})
    assert tls.context.verify_mode is ssl.CERT_NONE and not tls.context.check_hostname


def test_a_pin_with_a_ca_adds_to_it(ca: TestCA) -> None:
    tls = client_tls(_peer(ca_file=str(ca.cert_file), pinned_sha256=["ab" * 32]))
    assert tls is not None and tls.context.verify_mode is ssl.CERT_REQUIRED
    assert tls.context.check_hostname and tls.pins


def test_the_pin_check(leaf: Issued) -> None:
    check_pin(leaf.der, frozenset({leaf.sha256}))
    check_pin(None, frozenset())
    with pytest.raises(PinMismatch, match=f"certificate SHA-256 {leaf.sha256} is not one"):
        check_pin(leaf.der, frozenset({"00" * 32}))
    with pytest.raises(PinMismatch, match="no certificate"):
        check_pin(None, frozenset({"00" * 32}))


def test_contexts_are_built_once_per_setting(ca: TestCA) -> None:
    peer = _peer(ca_file=str(ca.cert_file))
    assert client_tls_cached(peer) is client_tls_cached(peer.model_copy())
    assert client_tls_cached(peer) is not client_tls_cached(_peer(ca_file=str(ca.cert_file),
                                                                  server_name="other"))


@pytest.mark.parametrize(("tls", "message"), [
    ({"ca_file": "missing.pem"}, r"pacs\.main\.tls\.ca_file: cannot load the CA"),
    ({"cert_file": "missing.crt", "key_file": "missing.key"},
     r"pacs\.main\.tls\.cert_file: cannot load the certificate"),
])
def test_unreadable_files_are_configuration_errors(tls: dict[str, Any], message: str,
                                                   tmp_path: Path) -> None:
    values = {k: str(tmp_path / v) for k, v in tls.items()}
    with pytest.raises(ConfigurationError, match=message):
        client_tls(_peer(**values))


def test_a_key_that_is_not_the_certificates(ca: TestCA, leaf: Issued) -> None:
    other = ca.issue("other")
    with pytest.raises(ConfigurationError, match="cannot load the certificate"):
        client_tls(_peer(cert_file=str(leaf.cert_file), key_file=str(other.key_file)))


def test_an_encrypted_key_needs_its_password(ca: TestCA) -> None:
    locked = ca.issue("locked", client=True, password=b"s3cret")
    assert client_tls(_peer(cert_file=str(locked.cert_file), key_file=str(locked.key_file),
                            key_password="s3cret")) is not None
    with pytest.raises(ConfigurationError, match="cannot load the certificate"):
        client_tls(_peer(cert_file=str(locked.cert_file), key_file=str(locked.key_file),
                         key_password="wrong"))


def test_storage_scp_context(ca: TestCA, leaf: Issued) -> None:
    assert storage_scp_context(load_settings()) is None
    context = storage_scp_context(load_settings(
        storage_scp_tls_cert_file=str(leaf.cert_file), storage_scp_tls_key_file=str(
            leaf.key_file), storage_scp_tls_ca_file=str(ca.cert_file)))
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    plain = storage_scp_context(load_settings(storage_scp_tls_cert_file=str(leaf.cert_file),
                                              storage_scp_tls_key_file=str(leaf.key_file)))
    assert plain is not None and plain.verify_mode is ssl.CERT_NONE


# -- reasons -----------------------------------------------------------------------------------
def test_reasons_for_a_failed_handshake() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert describe(verify) == ("certificate verification failed: unable to get local issuer "
                                "certificate")
    assert "is not one" in describe(PinMismatch("certificate SHA-256 x is not one"))
    required = ssl.SSLError(1, "tlsv13 alert certificate required")
    required.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert describe(required).startswith("the PACS requires a client certificate")
    unknown = ssl.SSLError(1, "x")
    unknown.reason = "SSLV3_ALERT_UNKNOWN_CA"
    assert describe(unknown) == "the PACS ended the TLS handshake: SSLV3_ALERT_UNKNOWN_CA"
    assert describe(ConnectionResetError("reset")) == "reset"


# -- the command line --------------------------------------------------------------------------
def test_https_options_for_uvicorn(ca: TestCA, leaf: Issued) -> None:
    assert cli.https_options(load_settings()) == {}
    options = cli.https_options(load_settings(
        https_cert_file=str(leaf.cert_file), https_key_file=str(leaf.key_file),
        https_client_ca_file=str(ca.cert_file)))
    assert options == {"ssl_certfile": str(leaf.cert_file), "ssl_keyfile": str(leaf.key_file),
                       "ssl_keyfile_password": None, "ssl_ciphers": TLS12_CIPHERS,
                       "ssl_ca_certs": str(ca.cert_file),
                       "ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.parametrize(("env", "message"), [
    ({"DWG_HTTPS_CERT_FILE": "missing.crt", "DWG_HTTPS_KEY_FILE": "missing.key"},
     "https_cert_file: cannot load the certificate"),
    ({"DWG_HTTPS_CERT_FILE": "{leaf_cert}", "DWG_HTTPS_KEY_FILE": "{leaf_key}",
      "DWG_HTTPS_CLIENT_CA_FILE": "missing.pem"}, "https_client_ca_file: cannot load the CA"),
    ({"DWG_PACS": '[{"name": "main", "ae_title": "PACS", "tls": {"ca_file": "missing.pem"}}]'},
     "pacs.main.tls.ca_file: cannot load the CA"),
])
def test_serve_stops_on_an_unreadable_tls_file(
        env: dict[str, str], message: str, leaf: Issued, clean_env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("DWG_PACS", '[{"name": "main", "ae_title": "PACS"}]')
    for name, value in env.items():
        value = value.replace("{leaf_cert}", str(leaf.cert_file))
        clean_env.setenv(name, value.replace("{leaf_key}", str(leaf.key_file)))
    assert cli.main(["serve", "--port", "1"]) == 2  # fails before binding the port
    assert message in capsys.readouterr().err


# -- documentation -----------------------------------------------------------------------------
CONFIGURATION = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


@pytest.mark.parametrize("name", sorted(PeerTls.model_fields))
def test_every_tls_key_is_documented(name: str) -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    section = text.split("### DICOM TLS to a PACS (`tls`)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"docs/configuration.md: the tls table has no row for `{name}`"
    field = PeerTls.model_fields[name]
    default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    shown = ("unset" if default is None else f"`{str(default).lower()}`"
             if isinstance(default, bool) else f"`{default}`")
    assert shown in rows[0], f"tls.{name}: the default should show {shown}"


def test_the_tls_example_is_valid(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    example = text.split("### DICOM TLS and HTTPS", 1)[1].split("```toml\n", 1)[1]
    config = tmp_path / "tls.toml"
    config.write_text(example.split("```", 1)[0], encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(config))
    settings = load_settings()
    assert settings.https_enabled and settings.peer().tls is not None
    assert settings.peer().tls.server_name == "pacs.hospital.example"  # type: ignore[union-attr]
