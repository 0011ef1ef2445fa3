"""Scrubbing for log text the gateway did not write: library records and exception text.

The gateway's own events carry secrets only in named fields, which `logs.redact` handles.
Text written by a library (aiohttp's parser errors, redis-py's connection errors) or an
exception's message is different: it may quote raw bytes from the wire, a header line with
a caller's key in it, in forms no field name or `Bearer <token>` pattern catches (a key
followed by a DEL byte, an obs-folded `Authorization` continuation line, control bytes
between `Bearer` and the key). So such text gets stricter treatment, on top of `redact`:

- quoted raw bytes (`b'...'`, as Python reprs wire data) are dropped whole;
- a credential header's value (`Authorization:`, `X-QBO-Gateway-Key:`, cookies) is dropped
  up to the end of its line, whatever it contains;
- `Bearer`/`Basic` followed by any whitespace, control bytes or their escapes hides what
  follows;
- any credential-shaped run whose SHA-256 is a configured caller's `key_sha256` is hidden,
  wherever it stands (the gateway never holds caller keys, only their hashes).

Library records are rare (errors, not the per-request line), so this costs nothing on the
hot path: the access line is the gateway's own event and never comes here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"

_BYTES_REPR = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")
_CREDENTIAL_HEADER = re.compile(
    r"((?:proxy-)?authorization|x-qbo-gateway-key|set-cookie|cookie)\s*:[^\r\n]*",
    re.IGNORECASE,
)
# Whitespace, control bytes, and the escapes a repr prints for them (\t, \x01, \r\n).
_GAP = r"(?:[\s\x00-\x1f\x7f]|\\[trnx0-9a-fA-F]{1,3})+"
_AUTH_ANY = re.compile(rf"\b(Bearer|Basic){_GAP}[^\s'\"]+", re.IGNORECASE)
_RUN = re.compile(r"[A-Za-z0-9._~+/=-]{8,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_caller_key_hashes: frozenset[str] = frozenset()


def set_caller_key_hashes(hashes: Iterable[str]) -> None:
    """The `key_sha256` of every configured caller, so their keys are found in any text."""
    global _caller_key_hashes  # one process-wide set, replaced whole
    _caller_key_hashes = frozenset(h.lower() for h in hashes)


_GLUE = re.compile(r"[=/+.:]")


def _is_caller_key(text: str) -> bool:
    return hashlib.sha256(text.encode()).hexdigest() in _caller_key_hashes


def _hide_caller_key(match: re.Match[str]) -> str:
    run = match.group(0)
    if _is_caller_key(run):
        return REDACTED
    # A key glued to other text ("key=<key>", "<key>/x"): look at each part too.
    parts = _GLUE.split(run)
    if len(parts) > 1 and any(_is_caller_key(p) for p in parts if len(p) >= 8):
        return "".join(REDACTED if _is_caller_key(p) else p for p in _GLUE.split(run))
    return run


def scrub_text(text: str) -> str:
    """Text from outside the gateway's own events, with anything credential-like hidden."""
    text = _BYTES_REPR.sub("b'[REDACTED]'", text)
    text = _CREDENTIAL_HEADER.sub(lambda m: f"{m.group(1)}: {REDACTED}", text)
    text = _AUTH_ANY.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if _caller_key_hashes:
        text = _RUN.sub(_hide_caller_key, text)
    return _CONTROL.sub("?", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes):
        return scrub_text(repr(value))
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return scrub_text(f"{type(value).__name__}: {value}")
    return value


def scrub_foreign(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor for records from stdlib loggers (aiohttp, redis, asyncio...)."""
    for name in list(event_dict):
        if not name.startswith("_"):
            event_dict[name] = _scrub(event_dict[name])
    return event_dict


def scrub_exception(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor for the gateway's own events: only a rendered traceback is foreign text."""
    exception = event_dict.get("exception")
    if isinstance(exception, str):
        event_dict["exception"] = scrub_text(exception)
    return event_dict
