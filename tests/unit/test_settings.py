"""Settings: environment (DWG_*), a TOML or JSON file (DWG_CONFIG_FILE), precedence, and
validation errors that name the setting."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import ConfigurationError, Settings, load_settings

PEER = {"name": "main", "ae_title": "PACS1", "host": "127.0.0.1", "port": 11112}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No DWG_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("DWG_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def test_defaults() -> None:
    s = load_settings()
    assert s.ae_title == "DICOMWEB_GW"
    assert s.pacs == []
    assert s.dicomweb_prefix == "/dicomweb"
    assert s.public_base_url is None
    with pytest.raises(LookupError):
        s.peer()


def test_environment_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DWG_AE_TITLE", "GW_ENV")
    clean_env.setenv("DWG_PACS", json.dumps([PEER, {"name": "b", "ae_title": "PACS2"}]))
    clean_env.setenv("DWG_DEFAULT_PACS", "b")
    clean_env.setenv("DWG_QIDO_DEFAULT_LIMIT", "25")
    clean_env.setenv("DWG_PUBLIC_BASE_URL", "https://gw.example.org/")
    clean_env.setenv("DWG_TRUST_FORWARDED_HEADERS", "false")
    s = load_settings()
    assert s.ae_title == "GW_ENV"
    assert [p.name for p in s.pacs] == ["main", "b"]
    assert s.pacs[0].port == 11112 and s.pacs[1].port == 104
    assert s.peer().name == "b"
    assert s.peer("main").ae_title == "PACS1"
    assert s.qido_default_limit == 25
    assert s.public_base_url == "https://gw.example.org"
    assert s.trust_forwarded_headers is False


def test_toml_config_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'ae_title = "GW_TOML"\n'
        'dicomweb_prefix = "dicomweb/"\n'
        "[[pacs]]\n"
        'name = "orthanc"\nae_title = "ORTHANC"\nport = 4242\ndimse_timeout = 12.5\n'
        "[[pacs]]\n"
        'name = "dcmqrscp"\nae_title = "QRSCP"\nretrieve_method = "move"\n',
        encoding="utf-8",
    )
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    s = load_settings()
    assert s.ae_title == "GW_TOML"
    assert s.dicomweb_prefix == "/dicomweb"
    assert s.peer().name == "orthanc"
    assert s.peer("orthanc").dimse_timeout == 12.5
    assert s.peer("dcmqrscp").retrieve_method == "move"


def test_json_config_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"ae_title": "GW_JSON", "pacs": [PEER]}), encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    s = load_settings()
    assert s.ae_title == "GW_JSON"
    assert s.peer().ae_title == "PACS1"


def test_environment_beats_file_and_arguments_beat_environment(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('ae_title = "FROM_FILE"\nqido_max_limit = 5000\n', encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    clean_env.setenv("DWG_AE_TITLE", "FROM_ENV")
    s = load_settings()
    assert s.ae_title == "FROM_ENV"
    assert s.qido_max_limit == 5000  # not overridden: still from the file
    assert load_settings(ae_title="FROM_ARG").ae_title == "FROM_ARG"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ae_title": "THIS_TITLE_IS_TOO_LONG"}, "ae_title"),
        ({"ae_title": "BAD\\AE"}, "ae_title"),
        ({"ae_title": "    "}, "ae_title"),
        ({"ae_title": "GÜNTHER"}, "ae_title"),
        ({"pacs": [{**PEER, "ae_title": ""}]}, "pacs.0.ae_title"),
        ({"pacs": [{**PEER, "port": 0}]}, "pacs.0.port"),
        ({"pacs": [{**PEER, "port": 70000}]}, "pacs.0.port"),
        ({"pacs": [{**PEER, "dimse_timeout": 0}]}, "pacs.0.dimse_timeout"),
        ({"pacs": [{**PEER, "retrieve_method": "fetch"}]}, "pacs.0.retrieve_method"),
        ({"pacs": [{**PEER, "name": "has space"}]}, "pacs.0.name"),
        ({"pacs": [{**PEER, "unknown_option": 1}]}, "pacs.0.unknown_option"),
        ({"pacs": [PEER, PEER]}, "pacs"),
        ({"pacs": [PEER], "default_pacs": "other"}, "default_pacs"),
        ({"cache_backend": "redis"}, "redis_url"),
        ({"qido_default_limit": 50, "qido_max_limit": 10}, "qido_default_limit"),
        ({"public_base_url": "gw.example.org"}, "public_base_url"),
        ({"log_level": "CHATTY"}, "log_level"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"cache_admin_enabled": True}, "admin_token"),
        ({"cache_admin_enabled": True, "admin_token": "too-short"}, "admin_token"),
        ({"admin_token": "has a space in it somewhere"}, "admin_token"),
        ({"auth_enabled": True}, "auth_enabled"),
        ({"auth_issuer": "https://login.example.org/r"}, "auth_audience"),
        ({"auth_issuer": "http://login.example.org/r", "auth_audience": ["gw"]}, "auth_issuer"),
        ({"auth_issuer": "login.example.org", "auth_audience": ["gw"]}, "auth_issuer"),
        ({"auth_jwks_url": "ftp://127.0.0.1/jwks"}, "auth_jwks_url"),
        ({"auth_algorithms": ["HS256"]}, "auth_algorithms"),
        ({"auth_algorithms": ["none"]}, "auth_algorithms"),
        ({"auth_algorithms": []}, "auth_algorithms"),
        ({"auth_action_scopes": {"delete": ["x"]}}, "auth_action_scopes"),
        ({"auth_realm": 'quote"d'}, "auth_realm"),
        ({"api_keys": [{"name": "a", "sha256": "00", "actions": ["search"]}]}, "sha256"),
        ({"api_keys": [{"name": "a", "sha256": "0" * 64, "actions": []}]}, "actions"),
        ({"api_keys": [{"name": "a", "sha256": "0" * 64, "actions": ["search"],
                        "pacs": ["nowhere"]}]}, "nowhere"),
        ({"api_keys": [{"name": "a", "sha256": "0" * 64, "actions": ["search"]}] * 2},
         "unique"),
        ({"audit_syslog": "no-port"}, "audit_syslog"),
        ({"audit_syslog_transport": "tls"}, "audit_syslog_transport"),
    ],
)
def test_invalid_values_name_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    assert named in str(info.value)


def test_invalid_environment_value_names_the_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DWG_PACS", json.dumps([{**PEER, "port": 0}]))
    with pytest.raises(ConfigurationError, match=r"pacs\.0\.port"):
        load_settings()


def test_invalid_file_value_names_the_setting(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[[pacs]]\nname = "x"\nae_title = "A"\nport = 0\n', encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    with pytest.raises(ConfigurationError, match=r"pacs\.0\.port"):
        load_settings()


def test_missing_config_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DWG_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigurationError, match="DWG_CONFIG_FILE"):
        load_settings()


def test_config_file_of_unknown_kind(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("ae_title: X\n", encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    with pytest.raises(ConfigurationError, match="DWG_CONFIG_FILE"):
        load_settings()


def test_redis_backend_with_url_is_fine() -> None:
    s = load_settings(cache_backend="redis", redis_url="redis://127.0.0.1:6379/0")
    assert s.cache_backend == "redis"


def test_ae_title_is_trimmed() -> None:
    assert load_settings(ae_title=" GW ").ae_title == "GW"


@pytest.mark.parametrize(
    ("raw", "expected"), [("", ""), ("/", ""), ("/dw/", "/dw"), ("a/b", "/a/b")]
)
def test_dicomweb_prefix_is_normalised(raw: str, expected: str) -> None:
    assert load_settings(dicomweb_prefix=raw).dicomweb_prefix == expected


def test_peer_lookup_unknown_name() -> None:
    s = load_settings(pacs=[PEER])
    with pytest.raises(LookupError, match="nope"):
        s.peer("nope")


def test_settings_are_not_a_singleton() -> None:
    assert load_settings(ae_title="A1") is not load_settings(ae_title="A1")
    assert isinstance(load_settings(), Settings)


def test_move_fallback_turns_an_unset_storage_scp_on() -> None:
    """Issue #10 item 18: a peer that may fall back to C-MOVE needs the storage SCP."""
    peer = {"name": "a", "ae_title": "A", "host": "127.0.0.1", "port": 104}
    assert not load_settings(pacs=[peer]).storage_scp_wanted
    assert load_settings(pacs=[{**peer, "move_fallback": True}]).storage_scp_wanted
    assert not load_settings(pacs=[{**peer, "move_fallback": True}],
                             storage_scp_enabled=False).storage_scp_wanted


def test_admin_token_is_secret() -> None:
    s = load_settings(cache_admin_enabled=True, admin_token="0123456789abcdef0123")
    assert s.admin_token is not None
    assert s.admin_token.get_secret_value() == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(s) and "0123456789abcdef0123" not in str(s)


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("DWG_PACS", "not json", "pacs: DWG_PACS is not valid JSON"),
    ("DWG_PACS", "[{", "pacs: DWG_PACS is not valid JSON"),
    ("DWG_CORS_ALLOW_ORIGINS", "*", "cors_allow_origins: DWG_CORS_ALLOW_ORIGINS is not valid"),
    ("DWG_ALLOWED_HOSTS", "gw.example.org", "allowed_hosts: DWG_ALLOWED_HOSTS is not valid"),
])
def test_unparsable_environment_value_names_the_variable(
        clean_env: pytest.MonkeyPatch, variable: str, value: str, named: str) -> None:
    """Not a 44-line traceback from pydantic-settings: one message naming the setting."""
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert named in str(info.value)
    assert len(str(info.value).splitlines()) <= 3


@pytest.mark.parametrize(("suffix", "text"), [(".toml", "pacs = [\n"), (".json", '{"pacs": ')])
def test_unparsable_config_file_names_it(tmp_path: Path, clean_env: pytest.MonkeyPatch,
                                         suffix: str, text: str) -> None:
    path = tmp_path / f"gateway{suffix}"
    path.write_text(text, encoding="utf-8")
    clean_env.setenv("DWG_CONFIG_FILE", str(path))
    with pytest.raises(ConfigurationError, match="DWG_CONFIG_FILE: .* cannot be parsed"):
        load_settings()


def test_authorization_settings() -> None:
    local = load_settings(auth_enabled=True, auth_issuer="http://127.0.0.1:8081/realms/x",
                          auth_audience=["gw"], cache_admin_enabled=True)
    assert local.admin_token is None  # with auth_enabled, an admin-scoped token opens /admin
    keys_only = load_settings(auth_enabled=True, api_keys=[
        {"name": "svc", "sha256": "AB" * 32, "actions": ["search", "retrieve"]}])
    assert keys_only.api_keys[0].pacs is None and keys_only.auth_issuer is None
    assert load_settings(auth_jwks_url="http://[::1]:9/jwks").auth_jwks_url
    assert load_settings().auth_algorithms == ["RS256", "ES256"]


# -- federation ---------------------------------------------------------------------------------

SECOND = {**PEER, "name": "archive", "ae_title": "PACS2"}


def test_federation_is_off_by_default() -> None:
    assert load_settings(pacs=[PEER, SECOND]).federated_names == []


def test_federate_true_means_every_pacs_in_configuration_order() -> None:
    assert load_settings(pacs=[PEER, SECOND], federate=True).federated_names == ["main",
                                                                                 "archive"]


def test_federate_from_the_environment_as_a_list_in_its_own_order(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DWG_PACS", json.dumps([PEER, SECOND]))
    clean_env.setenv("DWG_FEDERATE", '["archive", "main"]')
    assert load_settings().federated_names == ["archive", "main"]
    clean_env.setenv("DWG_FEDERATE", "true")
    assert load_settings().federated_names == ["main", "archive"]


@pytest.mark.parametrize("federate, message", [
    (["main", "nowhere"], "federate: 'nowhere' not among the pacs names"),
    (["main", "main"], "federate: a PACS is named twice"),
])
def test_federate_names_must_be_configured_once(federate: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(pacs=[PEER, SECOND], federate=federate)
