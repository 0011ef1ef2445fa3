"""Structured logs, and the guarantee that no secret reaches them.

structlog renders JSON (or console) lines. Before rendering, `redact` replaces:
- the value of any field whose name says it holds a secret (token, secret, key,
  authorization, password, cookie, code_verifier...);
- any occurrence of a registered secret (client secret, admin token, caller keys, every
  access/refresh token the process has handled) inside any string value;
- anything shaped like `Bearer <credential>` or `Basic <credential>`.
Redaction sits in the processor chain, so it holds for every logger in the process,
including third-party ones routed through the stdlib bridge; their text (and any rendered
traceback) is also scrubbed by `log_foreign`, which finds credentials in raw header lines.

The per-request summary line is the one event written on every request, so it takes a
short path (`access_line`): its fields are fixed, only the ones that carry text from
outside (path, request id, upstream ids) can hold a secret and are scrubbed (values that
recur, like paths, from a memo emptied whenever a new secret is registered), and it is
rendered with orjson straight to the configured handler's stream. Whenever the
process's logging is not the configuration made here (console format, a test capturing
logs), the line goes through structlog's chain like any other event.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from qbo_gateway.log_foreign import scrub_exception, scrub_foreign

REDACTED = "[REDACTED]"
_SECRET_FIELD = re.compile(
    r"(token|secret|password|passwd|authorization|cookie|api[_-]?key|caller[_-]?key|"
    r"code_verifier|fernet|credential)",
    re.IGNORECASE,
)
# Field names that contain a secret-ish word but hold no secret.
_SAFE_FIELDS = frozenset({"token_calls", "token_version", "token_event", "key_count"})
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


class SecretRegistry:
    """Secret values this process knows, so they can be scrubbed from any log text.

    Static secrets (client secret, admin token, token keys) stay for the process's life;
    tokens (every access and refresh token that passes through the token cipher) are kept
    for the most recent `max_tokens`, so rotation over months cannot grow it without bound.
    Scrubbing finds credential-shaped runs in the text and looks each up in a set, so its
    cost does not grow with the number of known secrets.
    """

    _MIN_LEN = 12  # shorter values would scrub ordinary words
    _RUN = re.compile(r"[A-Za-z0-9._~+/=-]{12,}")
    _PART = re.compile(r"[A-Za-z0-9._~-]{12,}")
    _MEMO_MAX = 2048  # scrubbed texts remembered by `scrub_recurring`

    def __init__(self, max_tokens: int = 4096) -> None:
        self._lock = threading.Lock()
        self._static: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._max_tokens = max_tokens
        self._memo: dict[str, str] = {}

    def add(self, *values: str | None) -> None:
        with self._lock:
            new = {v for v in values if v and len(v) >= self._MIN_LEN} - self._static
            if new:
                self._static.update(new)
                self._memo = {}  # a remembered text may hold the new secret

    def add_token(self, *values: str | None) -> None:
        with self._lock:
            for value in values:
                if value and len(value) >= self._MIN_LEN:
                    if value not in self._recent:
                        self._memo = {}  # a remembered text may hold the new token
                    self._recent[value] = None
                    self._recent.move_to_end(value)
            while len(self._recent) > self._max_tokens:
                self._recent.popitem(last=False)

    def _known(self, value: str) -> bool:
        return value in self._static or value in self._recent

    def _scrub_run(self, match: re.Match[str]) -> str:
        run = match.group(0)
        if self._known(run):
            return REDACTED
        if self._PART.fullmatch(run):
            return run  # no separator inside: the run is its only part, checked above
        # A secret glued to other characters ("token=<secret>", "<secret>/x").
        return self._PART.sub(lambda m: REDACTED if self._known(m.group(0)) else m.group(0), run)

    def scrub_recurring(self, text: str) -> str:
        """`scrub`, remembered: for texts that recur (paths, upstream ids), not unique ones.

        The memo is replaced whenever a secret not known before is added, so a remembered
        text is never one scrubbed without a secret the registry holds now.
        """
        memo = self._memo  # the one in force now: an addition meanwhile replaces it
        found = memo.get(text)
        if found is None:
            found = self.scrub(text)
            if len(memo) >= self._MEMO_MAX:
                memo.clear()
            memo[text] = found
        return found

    def scrub(self, text: str) -> str:
        if self._static or self._recent:
            text = self._RUN.sub(self._scrub_run, text)
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
        scrub_exception,
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
    processors = [
        # Drop below-level events before any other work.
        structlog.stdlib.filter_by_level,
        *_shared_processors(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Library records may quote raw wire bytes: they get the stricter scrub too.
        foreign_pre_chain=[*_shared_processors(), scrub_foreign],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiohttp's own access log would duplicate our summary line (and print query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    global _access_sink
    _access_sink = (
        _AccessSink(handler, processors, enabled=numeric <= logging.INFO) if fmt == "json" else None
    )


class _AccessSink:
    """The handler the summary line is written to when the JSON configuration is ours."""

    def __init__(
        self, handler: logging.StreamHandler[Any], processors: list[Any], *, enabled: bool
    ):
        self.handler = handler
        self.processors = processors  # identity tells whether structlog still runs our chain
        self.tail = processors[-1]  # and this, that it was not changed in place (capture_logs)
        self.enabled = enabled

    def write(
        self, fields: dict[str, Any], untrusted: tuple[str, ...], recurring: tuple[str, ...]
    ) -> None:
        for name in untrusted:
            value = fields.get(name)
            if value.__class__ is str:
                fields[name] = SECRETS.scrub(value)
        for name in recurring:
            value = fields.get(name)
            if value.__class__ is str:
                fields[name] = SECRETS.scrub_recurring(value)
        fields["level"] = "info"
        fields["logger"] = _ACCESS_LOGGER
        fields["timestamp"] = _utc_timestamp()
        try:
            text = orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
        except orjson.JSONEncodeError:  # a lone surrogate from undecodable header bytes
            text = json.dumps(fields, default=str) + "\n"
        handler = self.handler
        handler.acquire()  # the stdlib's own lock: lines from threads never interleave
        try:
            handler.stream.write(text)
            handler.stream.flush()
        finally:
            handler.release()


_ACCESS_LOGGER = "qbo_gateway.access"
_access_sink: _AccessSink | None = None
_access_fallback = structlog.get_logger(_ACCESS_LOGGER)
_stamp_second = -1
_stamp_prefix = ""


def _utc_timestamp() -> str:
    """ISO 8601 UTC with microseconds and `Z`; the date and time are formatted once a second."""
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _stamp_second = second
    return f"{_stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"


def access_line(
    fields: dict[str, Any], *, untrusted: tuple[str, ...], recurring: tuple[str, ...] = ()
) -> None:
    """Write the per-request summary line (`event` first in `fields`), cheaply.

    `untrusted` and `recurring` name the fields whose text came from outside the gateway
    (caller or QBO) and may hold a secret; every other field must be the gateway's own
    (numbers, codes, outcomes, configured names), which is what makes scrubbing only these
    safe. `recurring` ones (paths, upstream ids) are scrubbed through a memo, `untrusted`
    ones (a request id, unique per request) each time.
    """
    sink = _access_sink
    processors = structlog.get_config()["processors"]
    if sink is not None and processors is sink.processors and processors[-1] is sink.tail:
        if sink.enabled:
            sink.write(fields, untrusted, recurring)
        return
    event = fields.pop("event")
    _access_fallback.info(event, **fields)


def failure(exc: BaseException) -> dict[str, Any]:
    """Log fields for a caught exception: its type and message, and its traceback.

    `log.warning("event", **failure(exc))`. The traceback is rendered before `redact`
    runs, so a secret in the message or anywhere in the traceback text is scrubbed like
    any other value.
    """
    return {"error": f"{type(exc).__name__}: {exc}", "exc_info": exc}


def register_secrets(values: Iterable[str | None]) -> None:
    """Secrets known for the life of the process (credentials, keys, admin token)."""
    SECRETS.add(*values)


def register_tokens(*values: str | None) -> None:
    """OAuth tokens the process handles; only the most recent are remembered."""
    SECRETS.add_token(*values)
