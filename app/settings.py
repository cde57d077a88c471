"""The gateway's one typed configuration: environment variables (prefix ``DWG_``) over an optional
TOML or JSON config file (``DWG_CONFIG_FILE``) over defaults.

Invalid configuration fails at start-up with a message that names the setting.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash


def _check_ae_title(value: str) -> str:
    """AE titles are 1-16 characters of the default repertoire, not all spaces (PS3.5 6.2)."""
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 ASCII characters, no backslash)")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
# allowed_hosts entries: "*", or a host (a "*." prefix allowed) with an optional port.
_HOST_PATTERN_RE = re.compile(
    r"^(\*|(\*\.)?[a-z0-9._~-]+(:[0-9]{1,5})?|\[[0-9a-f:.]+\](:[0-9]{1,5})?)$")


def _check_host_patterns(values: list[str]) -> list[str]:
    """allowed_hosts entries, lower-cased; each ``*``, ``host[:port]`` or ``*.domain[:port]``."""
    out = []
    for value in values:
        pattern = value.strip().lower()
        if not _HOST_PATTERN_RE.match(pattern):
            raise ValueError(f"{value!r} is not a host[:port], *.domain[:port] or *")
        out.append(pattern)
    return out

MIN_ADMIN_TOKEN = 16
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: The actions a credential may be granted (docs/operations.md "Authorization").
Action = Literal["search", "retrieve", "store", "admin"]
ACTIONS: tuple[str, ...] = ("search", "retrieve", "store", "admin")
#: Signature algorithms a token may use: asymmetric only, so a JWKS's public key can never be
#: (mis)used as an HMAC secret, and never ``none``.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


def _fingerprint(value: str) -> str:
    """A SHA-256 certificate fingerprint as 64 lower-case hex digits (colons and case ignored)."""
    digits = value.strip().replace(":", "").lower()
    if not _SHA256_RE.match(digits):
        raise ValueError(f"{value!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digits


class PeerTls(BaseModel):
    """DICOM TLS (PS3.15 Annex B) towards one PACS: how the gateway verifies the PACS's
    certificate and which certificate it presents itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: SecretStr | None = None
    verify_hostname: bool = True
    server_name: str | None = None
    pinned_sha256: list[Annotated[str, AfterValidator(_fingerprint)]] = Field(
        default_factory=list)
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _pairs(self) -> PeerTls:
        """A client certificate needs its key and the other way round."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both (the client certificate and "
                             "its private key) or neither")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password: set only with key_file")
        return self


class PacsPeer(BaseModel):
    """One backend PACS the gateway talks DIMSE to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "pacs"
    ae_title: AETitle
    host: str = "127.0.0.1"
    port: Port = 104
    retrieve_method: Literal["auto", "get", "move"] = "auto"
    move_fallback: bool = False
    capability_ttl: PositiveSeconds = 3600.0
    max_associations: Annotated[int, Field(ge=1, le=64)] = 8
    association_wait_timeout: PositiveSeconds = 60.0
    connect_timeout: PositiveSeconds = 5.0
    acse_timeout: PositiveSeconds = 10.0
    dimse_timeout: PositiveSeconds = 60.0
    network_idle_timeout: PositiveSeconds = 15.0
    overall_timeout: PositiveSeconds = 300.0
    relational_queries: Literal["auto", "never"] = "auto"
    query_character_set: str = "ISO_IR 192"
    stable_find_order: bool = True
    max_find_results: Annotated[int, Field(ge=1)] = 10_000
    staged_find_concurrency: Annotated[int, Field(ge=1, le=16)] = 4
    capped_find_max_queries: Annotated[int, Field(ge=0)] = 256
    capped_find_max_depth: Annotated[int, Field(ge=1, le=64)] = 40
    compute_missing_counts: bool = True
    max_uids_per_query: Annotated[int, Field(ge=1, le=512)] = 64
    association_idle_timeout: Annotated[float, Field(ge=0)] = 5.0
    max_idle_associations: Annotated[int, Field(ge=0, le=64)] = 1
    move_source_hosts: list[str] = Field(default_factory=list)
    tls: PeerTls | None = None

    @field_validator("move_source_hosts")
    @classmethod
    def _source_hosts(cls, values: list[str]) -> list[str]:
        """Host names or addresses (or ``*``) the PACS may deliver C-MOVE instances from."""
        out = []
        for value in values:
            host = value.strip()
            if host != "*" and not re.match(r"^(\[?[0-9A-Fa-f:.%a-zA-Z]+\]?|[A-Za-z0-9._-]+)$",
                                            host):
                raise ValueError(f"{value!r} is not a host name, an address or *")
            out.append(host)
        return out


def _check_https_url(value: str | None) -> str | None:
    """An https URL, or http only to a loopback host (a token issuer in a test or a sidecar)."""
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute https URL such as https://login.example.org/realm")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("must use https (plain http only to 127.0.0.1, localhost or ::1)")
    return value


HttpsUrl = Annotated[str | None, AfterValidator(_check_https_url)]


def _default_action_scopes() -> dict[Action, list[str]]:
    """Each action granted by one scope of the same name: ``dicomweb.{action}``."""
    return {"search": ["dicomweb.search"], "retrieve": ["dicomweb.retrieve"],
            "store": ["dicomweb.store"], "admin": ["dicomweb.admin"]}


class ApiKey(BaseModel):
    """A static API key for service-to-service use, configured by its SHA-256 hash only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    salt: Annotated[str, Field(max_length=128)] = ""
    actions: Annotated[list[Action], Field(min_length=1)]
    pacs: list[str] | None = None


class Settings(BaseSettings):
    """Every setting of the gateway; see docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="DWG_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    ae_title: AETitle = "DICOMWEB_GW"
    storage_scp_host: str = "0.0.0.0"
    storage_scp_port: Annotated[int, Field(ge=0, le=65535)] = 11113
    storage_scp_enabled: bool | None = None
    storage_scp_reuse_port: bool = True
    storage_scp_tls_cert_file: str | None = None
    storage_scp_tls_key_file: str | None = None
    storage_scp_tls_key_password: SecretStr | None = None
    storage_scp_tls_ca_file: str | None = None
    https_cert_file: str | None = None
    https_key_file: str | None = None
    https_key_password: SecretStr | None = None
    https_client_ca_file: str | None = None
    pacs: list[PacsPeer] = Field(default_factory=list)
    dimse_engine: Literal["asyncio", "pynetdicom"] = "asyncio"
    dimse_tcp_quickack: bool = True
    dimse_max_pdu_receive: Annotated[int, Field(ge=0)] = 4 * 1024 * 1024
    default_pacs: str | None = None
    federate: bool | list[str] = False
    federate_search_timeout: PositiveSeconds = 30.0
    federate_max_matches: Annotated[int, Field(ge=1)] = 10_000
    federate_remembered_studies: Annotated[int, Field(ge=0)] = 100_000
    public_base_url: str | None = None
    trust_forwarded_headers: bool = True
    allowed_hosts: Annotated[list[str], AfterValidator(_check_host_patterns)] = Field(
        default_factory=list)
    dicomweb_prefix: str = "/dicomweb"
    qido_default_limit: Annotated[int, Field(ge=1)] = 1000
    qido_max_limit: Annotated[int, Field(ge=1)] = 10_000
    require_accept_header: bool = False
    max_frames_per_request: Annotated[int, Field(ge=1)] = 256
    read_only: bool = True
    stow_max_request_bytes: Annotated[int, Field(ge=1)] = 4 * 1024 ** 3
    stow_max_instance_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 ** 2
    cache_backend: Literal["memory", "redis", "none"] = "memory"
    redis_url: str | None = None
    redis_cluster: bool = False
    association_budget: Literal["auto", "process"] = "auto"
    association_lease_ttl: Annotated[float, Field(ge=1)] = 15.0
    cache_max_bytes: Annotated[int, Field(ge=0)] = 512 * 1024 * 1024
    cache_max_object_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    cache_ttl: Annotated[float, Field(gt=0)] = 24 * 3600.0
    qido_cache_ttl: Annotated[float, Field(ge=0)] = 10.0
    qido_cache_refresh_ahead: Annotated[float, Field(ge=0, le=1)] = 0.5
    cache_lock_ttl: Annotated[float, Field(gt=0)] = 30.0
    cache_retry_interval: Annotated[float, Field(gt=0)] = 2.0
    cache_admin_enabled: bool = False
    admin_token: SecretStr | None = None
    readyz_details: bool = False
    prefetch_on_search: bool = False
    prefetch_on_series_query: bool = True
    prefetch_on_study_lookup: bool = True
    prefetch_study_max_series: Annotated[int, Field(ge=0, le=1000)] = 16
    prefetch_study_max_instances: Annotated[int, Field(ge=0)] = 5000
    compress_responses: bool = True
    compress_min_bytes: Annotated[int, Field(ge=0)] = 1024
    cors_allow_origins: list[str] = Field(default_factory=list)
    auth_enabled: bool = False
    auth_issuer: HttpsUrl = None
    auth_audience: list[str] = Field(default_factory=list)
    auth_jwks_url: HttpsUrl = None
    auth_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    auth_clock_skew: Annotated[float, Field(ge=0, le=600)] = 60.0
    auth_jwks_cache_ttl: Annotated[float, Field(gt=0)] = 3600.0
    auth_jwks_min_refresh_interval: Annotated[float, Field(ge=0)] = 30.0
    auth_http_timeout: PositiveSeconds = 5.0
    auth_scope_claims: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["scope"])
    auth_action_scopes: dict[Action, list[str]] = Field(default_factory=_default_action_scopes)
    auth_pacs_claim: str | None = None
    auth_realm: Annotated[str, Field(pattern=r'^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$')] = (
        "dicomweb-gateway")
    auth_metrics_open: bool = True
    api_keys: list[ApiKey] = Field(default_factory=list)
    audit_log: str | None = None
    audit_syslog: str | None = None
    audit_syslog_transport: Literal["udp", "tcp"] = "udp"
    audit_include_phi: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("dicomweb_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = "/" + value.strip("/") if value.strip("/") else ""
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url_shape(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an absolute http(s) URL such as https://gw.example.org")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _peers_consistent(self) -> Settings:
        names = [p.name for p in self.pacs]
        if len(names) != len(set(names)):
            raise ValueError("pacs: peer names must be unique")
        if self.default_pacs is not None and self.default_pacs not in names:
            raise ValueError(f"default_pacs: {self.default_pacs!r} is not one of the pacs names")
        unknown = [n for n in self.federated_names if n not in names]
        if unknown:
            raise ValueError(f"federate: {', '.join(map(repr, unknown))} not among the pacs names")
        if isinstance(self.federate, list) and len(set(self.federate)) != len(self.federate):
            raise ValueError("federate: a PACS is named twice")
        if self.cache_backend == "redis" and not self.redis_url:
            raise ValueError("redis_url: required when cache_backend is 'redis'")
        if self.stow_max_instance_bytes > self.stow_max_request_bytes:
            raise ValueError("stow_max_instance_bytes: must not exceed stow_max_request_bytes")
        if self.qido_default_limit > self.qido_max_limit:
            raise ValueError("qido_default_limit: must not exceed qido_max_limit")
        for prefix, pairs in (("https", ("cert_file", "key_file")),
                              ("storage_scp_tls", ("cert_file", "key_file"))):
            cert, key = (getattr(self, f"{prefix}_{name}") for name in pairs)
            if (cert is None) != (key is None):
                raise ValueError(f"{prefix}_cert_file and {prefix}_key_file: give both or "
                                 "neither")
            if cert is None and any(getattr(self, f"{prefix}_{name}") is not None
                                    for name in ("key_password", "client_ca_file", "ca_file")
                                    if hasattr(self, f"{prefix}_{name}")):
                raise ValueError(f"{prefix}_*: set {prefix}_cert_file and {prefix}_key_file "
                                 "first")
        self._check_authorization(names)
        if self.cache_admin_enabled and self.admin_token is None and not self.auth_enabled:
            raise ValueError("admin_token: required when cache_admin_enabled is true (the admin "
                             "endpoints take Authorization: Bearer {admin_token}, or, with "
                             "auth_enabled, a credential granted the admin action)")
        return self

    def _check_authorization(self, names: list[str]) -> None:
        """Authorization settings that only make sense together (see docs/operations.md)."""
        for algorithm in self.auth_algorithms:
            if algorithm not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"auth_algorithms: {algorithm!r} is not allowed (only "
                                 f"{', '.join(ASYMMETRIC_ALGORITHMS)}; never none or HS*)")
        if not self.auth_algorithms:
            raise ValueError("auth_algorithms: name at least one algorithm")
        for key in self.api_keys:
            unknown = [name for name in key.pacs or () if name not in names]
            if unknown:
                raise ValueError(f"api_keys: key {key.name!r} names unknown PACS {unknown}")
        if len({key.name for key in self.api_keys}) != len(self.api_keys):
            raise ValueError("api_keys: key names must be unique")
        if self.auth_issuer and not self.auth_audience:
            raise ValueError("auth_audience: required with auth_issuer (the audience the "
                             "gateway's tokens are issued for)")
        if self.auth_enabled and not self.auth_issuer and not self.api_keys:
            raise ValueError("auth_enabled: needs auth_issuer (OIDC tokens) or api_keys")
        if self.audit_syslog is not None and not re.fullmatch(
                r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}", self.audit_syslog):
            raise ValueError("audit_syslog: must be host:port (e.g. syslog.example.org:514)")

    @field_validator("admin_token")
    @classmethod
    def _token_strength(cls, value: SecretStr | None) -> SecretStr | None:
        """An admin token is at least 16 printable ASCII characters, no spaces."""
        if value is None or value.get_secret_value() == "":
            return None
        token = value.get_secret_value()
        if len(token) < MIN_ADMIN_TOKEN or not re.fullmatch(r"[\x21-\x7e]+", token):
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} printable ASCII characters "
                             "without spaces (e.g. from: openssl rand -hex 32)")
        return value

    @property
    def https_enabled(self) -> bool:
        """Whether the gateway serves HTTPS itself (a certificate and key are configured)."""
        return self.https_cert_file is not None

    @property
    def storage_scp_tls_enabled(self) -> bool:
        """Whether the Storage SCP accepts DICOM TLS only (a certificate and key are set)."""
        return self.storage_scp_tls_cert_file is not None

    @property
    def shared_association_budget(self) -> bool:
        """Whether ``max_associations`` holds across every worker and replica (a budget in
        Redis): with ``association_budget = "auto"`` whenever the cache is Redis."""
        return self.association_budget == "auto" and self.cache_backend == "redis"

    @property
    def storage_scp_wanted(self) -> bool:
        """Whether to run the storage SCP: as configured, or (unset) when a PACS uses C-MOVE
        (``retrieve_method = "move"`` or ``move_fallback``). ``retrieve_method = "auto"`` alone
        does not open a port nobody asked for: its C-MOVE fallback needs the storage SCP
        enabled explicitly, and without it a PACS that refuses C-GET is answered with a 502
        that says so."""
        if self.storage_scp_enabled is not None:
            return self.storage_scp_enabled
        return any(p.retrieve_method == "move" or p.move_fallback for p in self.pacs)

    @property
    def federated_names(self) -> list[str]:
        """The PACS ``{prefix}/...`` answers from at once, in order of preference (``federate``
        true: every configured PACS in configuration order); empty when federation is off."""
        if self.federate is True:
            return [p.name for p in self.pacs]
        if self.federate is False:
            return []
        return list(self.federate)

    def peer(self, name: str | None = None) -> PacsPeer:
        """The named peer, or the default one (the first configured) when name is None."""
        if not self.pacs:
            raise LookupError("no PACS is configured (set DWG_PACS or a config file)")
        wanted = name if name is not None else (self.default_pacs or self.pacs[0].name)
        for peer in self.pacs:
            if peer.name == wanted:
                return peer
        raise LookupError(f"unknown PACS {wanted!r}")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order of precedence: explicit arguments, environment, then the config file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("DWG_CONFIG_FILE")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigurationError(f"DWG_CONFIG_FILE: no such file: {config_file}")
            if path.suffix.lower() == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            elif path.suffix.lower() == ".json":
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
            else:
                raise ConfigurationError("DWG_CONFIG_FILE: must end in .toml or .json")
        return tuple(sources)


class ConfigurationError(Exception):
    """Raised at start-up when the configuration is unusable; the message names the setting."""


def _unparsable(exc: SettingsError) -> ConfigurationError:
    """A readable error for a value pydantic-settings could not even parse (e.g. DWG_PACS that
    is not JSON): the setting, where it came from, and why."""
    text = str(exc)
    field = re.search(r'field "([^"]+)"', text)
    name = field.group(1) if field else "settings"
    cause = exc.__cause__
    why = f": {cause}" if cause is not None else ""
    if "EnvSettingsSource" in text:
        where = f"DWG_{name.upper()} is not valid JSON{why}"
    else:
        where = f"its value could not be parsed ({text}){why}"
    return ConfigurationError(f"invalid configuration:\n  {name}: {where}")


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one readable ConfigurationError."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        raise _unparsable(exc) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"DWG_CONFIG_FILE: {os.environ.get('DWG_CONFIG_FILE')} cannot "
                                 f"be parsed: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "settings"
            lines.append(f"{where}: {err['msg']}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from None
