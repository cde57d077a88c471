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
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


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
    connect_timeout: PositiveSeconds = 5.0
    acse_timeout: PositiveSeconds = 10.0
    dimse_timeout: PositiveSeconds = 60.0
    network_idle_timeout: PositiveSeconds = 15.0
    overall_timeout: PositiveSeconds = 300.0
    relational_queries: Literal["auto", "never"] = "auto"
    query_character_set: str = "ISO_IR 192"
    stable_find_order: bool = True
    max_find_results: Annotated[int, Field(ge=1)] = 10_000
    capped_find_max_queries: Annotated[int, Field(ge=0)] = 256
    capped_find_max_depth: Annotated[int, Field(ge=1, le=64)] = 40
    compute_missing_counts: bool = True
    max_uids_per_query: Annotated[int, Field(ge=1, le=512)] = 64
    association_idle_timeout: Annotated[float, Field(ge=0)] = 5.0
    max_idle_associations: Annotated[int, Field(ge=0, le=64)] = 1
    move_source_hosts: list[str] = Field(default_factory=list)

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
    pacs: list[PacsPeer] = Field(default_factory=list)
    dimse_engine: Literal["asyncio", "pynetdicom"] = "asyncio"
    dimse_tcp_quickack: bool = True
    dimse_max_pdu_receive: Annotated[int, Field(ge=0)] = 4 * 1024 * 1024
    default_pacs: str | None = None
    public_base_url: str | None = None
    trust_forwarded_headers: bool = True
    allowed_hosts: Annotated[list[str], AfterValidator(_check_host_patterns)] = Field(
        default_factory=list)
    dicomweb_prefix: str = "/dicomweb"
    qido_default_limit: Annotated[int, Field(ge=1)] = 1000
    qido_max_limit: Annotated[int, Field(ge=1)] = 10_000
    require_accept_header: bool = False
    max_frames_per_request: Annotated[int, Field(ge=1)] = 256
    cache_backend: Literal["memory", "redis", "none"] = "memory"
    redis_url: str | None = None
    redis_cluster: bool = False
    cache_max_bytes: Annotated[int, Field(ge=0)] = 512 * 1024 * 1024
    cache_max_object_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    cache_ttl: Annotated[float, Field(gt=0)] = 24 * 3600.0
    qido_cache_ttl: Annotated[float, Field(ge=0)] = 10.0
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
        if self.cache_backend == "redis" and not self.redis_url:
            raise ValueError("redis_url: required when cache_backend is 'redis'")
        if self.qido_default_limit > self.qido_max_limit:
            raise ValueError("qido_default_limit: must not exceed qido_max_limit")
        if self.cache_admin_enabled and self.admin_token is None:
            raise ValueError("admin_token: required when cache_admin_enabled is true (the admin "
                             "endpoints take Authorization: Bearer {admin_token})")
        return self

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
    def storage_scp_wanted(self) -> bool:
        """Whether to run the storage SCP: as configured, or (unset) when a PACS uses C-MOVE
        (``retrieve_method = "move"`` or ``move_fallback``). ``retrieve_method = "auto"`` alone
        does not open a port nobody asked for: its C-MOVE fallback needs the storage SCP
        enabled explicitly, and without it a PACS that refuses C-GET is answered with a 502
        that says so."""
        if self.storage_scp_enabled is not None:
            return self.storage_scp_enabled
        return any(p.retrieve_method == "move" or p.move_fallback for p in self.pacs)

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
