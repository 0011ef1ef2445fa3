"""Structured logs, and the guarantee that no secret reaches them.

structlog renders JSON (or console) lines. Before rendering, `redact` replaces:
- the value of any field whose name says it holds a secret (token, secret, key,
  authorization, password, cookie, code_verifier...);
- any occurrence of a registered secret (client secret, admin token, caller keys, every
  access/refresh token the process has handled) inside any string value;
- anything shaped like `Bearer <credential>` or `Basic <credential>`.
Redaction sits in the processor chain, so it holds for every logger in the process,
including third-party ones routed through the stdlib bridge.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_SECRET_FIELD = re.compile(
    r"(token|secret|password|passwd|authorization|cookie|api[_-]?key|caller[_-]?key|"
    r"code_verifier|fernet|credential)",
    re.IGNORECASE,
)
# Field names that contain a secret-ish word but hold no secret.
_SAFE_FIELDS = frozenset(
    {"token_calls", "token_version", "token_event", "keys_configured", "key_count"}
)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


class SecretRegistry:
    """Every secret value this process knows, so it can be scrubbed from any log text."""

    _MIN_LEN = 8  # shorter values would scrub ordinary words

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, *values: str | None) -> None:
        fresh = {v for v in values if v and len(v) >= self._MIN_LEN and v not in self._values}
        if not fresh:
            return
        with self._lock:
            self._values |= fresh
            # Longest first so a secret that contains another is scrubbed whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


SECRETS = SecretRegistry()


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return SECRETS.scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, bytes):
        return _scrub_value(value.decode("utf-8", "replace"))
    if isinstance(value, BaseException):
        return SECRETS.scrub(f"{type(value).__name__}: {value}")
    return value


def _scrub_field(name: str, value: Any) -> Any:
    if name not in _SAFE_FIELDS and _SECRET_FIELD.search(name) and value not in (None, ""):
        if isinstance(value, bool | int | float):
            return value
        return REDACTED
    return _scrub_value(value)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        event_dict[name] = _scrub_field(name, event_dict[name])
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog and route stdlib logging (aiohttp, redis) through the same chain."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would duplicate our summary line (and print query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def register_secrets(values: Iterable[str | None]) -> None:
    SECRETS.add(*values)
