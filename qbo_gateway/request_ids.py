"""The `X-Request-Id` every answer carries: the caller's when it is safe to echo, else new.

A caller's id is echoed into a response header and into logs, so only a short run of
plain characters is accepted; anything else gets a fresh id. A fresh id is a random
per-process prefix and a counter (32 hex digits, like a uuid4's): unique across replicas
and restarts, and a tenth of the cost of `uuid4()` on a path every request takes. It is an
identifier, not a secret: nothing is authorised by knowing one.
"""

from __future__ import annotations

import itertools
import secrets

from multidict import CIMultiDictProxy

_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


_PREFIX = secrets.token_hex(8)
_NEXT = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_NEXT):016x}"


def request_id_of(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-Id", "")
    if 0 < len(given) <= 128 and all(c in _OK for c in given):
        return given
    return new_request_id()
