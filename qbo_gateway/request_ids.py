"""The `X-Request-Id` every answer carries: the caller's when it is safe to echo, else new.

A caller's id is echoed into a response header and into logs, so only a short run of
plain characters is accepted; anything else gets a fresh id.
"""

from __future__ import annotations

import uuid

from multidict import CIMultiDictProxy

_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-Id", "")
    if 0 < len(given) <= 128 and all(c in _OK for c in given):
        return given
    return new_request_id()
