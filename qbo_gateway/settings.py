"""Every setting, read from the environment (and files in `QBO_SECRETS_DIR`) in one place.

This is the only module that reads the environment. Names are stable (deployments set them;
the README lists them all); each is validated at start so a bad value stops the daemon with
a message naming it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qbo_gateway.economy.freshness import parse_entity_fresh
from qbo_gateway.settings_rules import limit_problems, unknown_variables
from qbo_gateway.state.topology import RedisTopology, check_topology, parse_sentinels

INTUIT_API = {
    "sandbox": "https://sandbox-quickbooks.api.intuit.com",
    "production": "https://quickbooks.api.intuit.com",
}
INTUIT_TOKEN_URL = "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"  # noqa: S105 - a URL
INTUIT_AUTHORIZE_URL = "https://appcenter.intuit.com/connect/oauth2"
INTUIT_REVOKE_URL = "https://developer.api.intuit.com/v2/oauth2/tokens/revoke"


def default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "qbo-gateway"


def _secrets_dir() -> str | None:
    value = os.environ.get("QBO_SECRETS_DIR")
    return value if value and Path(value).is_dir() else None


def _check_url(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return value.rstrip("/")


def parse_expiry(value: str | float | int | None) -> float | None:
    """ISO 8601 or epoch seconds -> epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("an ISO 8601 time needs a UTC offset (e.g. 2026-01-01T00:00:00Z)")
    return parsed.timestamp()


def secret_text(value: SecretStr | str | None) -> str:
    """The plain text of a secret setting ("" when unset), for the one place that uses it."""
    if value is None:
        return ""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QBO_",
        secrets_dir=_secrets_dir(),
        extra="ignore",
        case_sensitive=False,
    )

    # credentials and bootstrap
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    realm_id: str | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    access_token_expires_at: str | None = None

    # where QBO is
    environment: Literal["sandbox", "production"] = "sandbox"
    api_base_url: str | None = None
    token_url: str | None = None
    authorize_url: str | None = None
    revoke_url: str | None = None
    minor_version: str = "75"
    redirect_uri: str | None = None  # for `connect`; default: the ops listener's callback
    # Pages a connect link may send the person back to (comma-separated URL prefixes).
    connect_return_urls: str = ""

    # listeners
    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(8080, ge=0, le=65535)
    ops_host: str = "0.0.0.0"  # noqa: S104 - the ops listener serves probes to the kubelet
    ops_port: int = Field(9090, ge=0, le=65535)
    shutdown_timeout_seconds: float = Field(20.0, ge=0)
    # A request's line and headers must arrive within this (slow-header connections close).
    header_timeout_seconds: float = Field(10.0, gt=0)
    proxy_max_connections: int = Field(512, ge=1)
    ops_max_connections: int = Field(64, ge=1)

    # state
    redis_url: str | None = None
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    redis_sentinels: str | None = None
    redis_sentinel_master: str = Field("mymaster", min_length=1)
    redis_ca_file: Path | None = None
    redis_prefix: str = "qbogw"
    replica_count: int = Field(1, ge=1)
    state_dir: Path = Field(default_factory=default_state_dir)
    token_keys: SecretStr | None = None
    secrets_dir: str | None = None

    # callers and admin
    callers_file: Path | None = None
    admin_token: SecretStr | None = None
    ops_read_token: SecretStr | None = None  # guards the JSON health routes when set

    # proxy behaviour
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    request_timeout_seconds: float = Field(30.0, gt=0)
    upstream_pool_size: int = Field(100, ge=1)
    refresh_margin_seconds: float = Field(900.0, ge=0)
    refresh_interval_seconds: float = Field(60.0, gt=0)  # background refresher cadence
    token_timeout_seconds: float = Field(15.0, gt=0)

    # admission
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_recovery_seconds: float = Field(300.0, gt=0)
    breaker_max_recovery_seconds: float = Field(1800.0, gt=0)
    rate_limit_per_minute: int = Field(500, ge=1)
    rate_limit_per_second: int = Field(10, ge=1)
    concurrency_limit: int = Field(10, ge=1)
    batch_limit_per_minute: int = Field(40, ge=1)
    admission_wait_seconds: float = Field(5.0, ge=0)
    # Redis mode: how long a leased slice of a realm's budget is spent locally (0: no leases)
    admission_lease_seconds: float = Field(0.5, ge=0, le=1)
    throttle_cooldown_seconds: float = Field(60.0, gt=0)
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)

    # cache
    cache_fresh_seconds: float = Field(0.0, ge=0)
    cache_stale_seconds: float = Field(86400.0, ge=0)
    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    cache_max_entry_bytes: int = Field(1024 * 1024, ge=0)
    # per entity, over the defaults for rarely-changing data: "account=3600,term=86400"
    cache_entity_fresh_seconds: str = ""
    # a create's or update's answer serves its entity's reads this long (0: off)
    cache_write_through_seconds: float = Field(300.0, ge=0)
    # entity reads past their freshness: one CDC call per realm at most this often (0: off)
    cache_cdc_interval_seconds: float = Field(60.0, ge=0)

    # read economy (metered CorePlus reads)
    coreplus_monthly_limit: int = Field(500_000, ge=1)
    coreplus_timezone: str = "UTC"  # the calendar month Intuit meters in
    coreplus_guard: Literal["off", "stale", "background", "both"] = "stale"
    # the monitor's own probes: their share of the monthly limit, spent at an even pace
    probe_budget_share: float = Field(0.05, ge=0, le=1)
    # an idle realm with nothing else against it is probed once its last success is this old
    probe_idle_seconds: float = Field(86400.0, ge=0)

    # health
    monitor_interval_seconds: float = Field(300.0, gt=0)
    monitor_autostart: bool = True
    health_history_seconds: float = Field(86400.0, gt=0)
    health_bucket_seconds: float = Field(300.0, gt=0)
    sla_uptime_target: float = Field(0.999, gt=0, le=1)
    sla_avg_response_seconds: float = Field(2.0, gt=0)
    sla_recovery_seconds: float = Field(300.0, gt=0)
    sla_detect_seconds: float = Field(60.0, gt=0)
    alert_webhook_url: str | None = None
    alert_slow_warning_seconds: float = 5.0
    alert_slow_critical_seconds: float = 10.0
    alert_failures_warning: int = 2
    alert_failures_critical: int = 5
    alert_refresh_expiry_warning_days: float = 14.0
    alert_refresh_expiry_critical_days: float = 3.0

    # logs
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", "log_format", "environment", "redis_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_base_url", "token_url", "authorize_url", "revoke_url", "redirect_uri")
    @classmethod
    def _urls(cls, value: str | None, info: Any) -> str | None:
        return _check_url(f"QBO_{info.field_name.upper()}", value)

    @field_validator("connect_return_urls")
    @classmethod
    def _return_urls(cls, value: str) -> str:
        for url in value.split(","):
            _check_url("QBO_CONNECT_RETURN_URLS", url.strip())
        return value

    @property
    def connect_return_url_list(self) -> list[str]:
        return [url.strip() for url in self.connect_return_urls.split(",") if url.strip()]

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _check_url("QBO_ALERT_WEBHOOK_URL", value)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("QBO_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_sentinels(value)
        return value

    @field_validator("redis_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("cache_entity_fresh_seconds")
    @classmethod
    def _entity_fresh(cls, value: str) -> str:
        parse_entity_fresh(value)
        return value

    @field_validator("coreplus_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value.upper() == "UTC":
            return "UTC"
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone name (e.g. UTC, America/New_York)"
            ) from None
        return value

    @field_validator("coreplus_guard", mode="before")
    @classmethod
    def _guard(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("realm_id")
    @classmethod
    def _realm(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.isdigit():
            raise ValueError("QBO_REALM_ID must be digits only")
        return value

    @field_validator("access_token_expires_at")
    @classmethod
    def _expiry(cls, value: str | None) -> str | None:
        if value:
            try:
                parse_expiry(value)
            except ValueError as exc:
                raise ValueError(
                    f"QBO_ACCESS_TOKEN_EXPIRES_AT must be ISO 8601 or epoch seconds: {exc}"
                ) from exc
        return value or None

    @model_validator(mode="after")
    def _open_mode(self) -> Settings:
        if self.callers_file is None and not is_loopback(self.proxy_host):
            raise ValueError(
                "QBO_CALLERS_FILE is unset (open mode) but QBO_PROXY_HOST="
                f"{self.proxy_host} is not loopback: set QBO_CALLERS_FILE or bind 127.0.0.1"
            )
        if self.callers_file is not None and not self.callers_file.is_file():
            raise ValueError(f"QBO_CALLERS_FILE={self.callers_file} is not a readable file")
        check_topology(
            mode=self.redis_mode,
            url=self.redis_url,
            sentinels=self.redis_sentinels,
            ca_file=self.redis_ca_file,
        )
        if not self.embedded and not self.token_keys:
            raise ValueError("QBO_TOKEN_KEYS is required when QBO_REDIS_URL is set")
        if self.realm_id and not self.refresh_token:
            raise ValueError("QBO_REALM_ID is set but QBO_REFRESH_TOKEN is not")
        contradictions = limit_problems(self)
        if contradictions:
            raise ValueError("; ".join(contradictions))
        return self

    # derived values
    @property
    def api_base(self) -> str:
        return self.api_base_url or INTUIT_API[self.environment]

    @property
    def token_endpoint(self) -> str:
        return self.token_url or INTUIT_TOKEN_URL

    @property
    def authorize_endpoint(self) -> str:
        return self.authorize_url or INTUIT_AUTHORIZE_URL

    @property
    def revoke_endpoint(self) -> str:
        return self.revoke_url or INTUIT_REVOKE_URL

    @property
    def embedded(self) -> bool:
        return self.redis_url is None and self.redis_mode == "standalone"

    @property
    def redis_topology(self) -> RedisTopology | None:
        """Where Redis is (None: embedded mode, no Redis)."""
        if self.embedded:
            return None
        return RedisTopology(
            mode=self.redis_mode,
            url=self.redis_url,
            sentinels=parse_sentinels(self.redis_sentinels) if self.redis_sentinels else (),
            sentinel_master=self.redis_sentinel_master,
            ca_file=str(self.redis_ca_file) if self.redis_ca_file else None,
        )


class SettingsError(Exception):
    """Settings could not be loaded; the message names each bad setting."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) if err["loc"] else ""
        name = f"QBO_{loc.upper()}" if loc else "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {msg}" if loc else msg)
    return "; ".join(lines)


def environment_problems(environ: Mapping[str, str]) -> list[str]:
    """Misspelt `QBO_` names, and a QBO_SECRETS_DIR that is not there."""
    problems = unknown_variables(environ, (f"QBO_{name}" for name in Settings.model_fields))
    secrets = environ.get("QBO_SECRETS_DIR")
    if secrets and not Path(secrets).is_dir():
        problems.append(f"QBO_SECRETS_DIR={secrets} is not a directory")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings; raises SettingsError with a message naming the setting."""
    problems = environment_problems(os.environ)
    if problems:
        raise SettingsError("; ".join(problems))
    try:
        # _secrets_dir: read now, not when the class was defined (the environment may change).
        return Settings(_secrets_dir=_secrets_dir(), **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
