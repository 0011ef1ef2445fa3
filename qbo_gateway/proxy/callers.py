"""Who is calling, and which realms they may use (the callers file, `QBO_CALLERS_FILE`).

The callers file holds only SHA-256 hashes of keys. A presented key is hashed and compared
with every caller's hash in constant time (all of them, so timing says nothing about which
caller matched). With no callers file the gateway runs in open mode, which settings only
allow on a loopback proxy bind.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict, CIMultiDictProxy

from qbo_gateway.faults import Forbidden, Unauthenticated

KEY_HEADER = "X-QBO-Gateway-Key"


class CallersFileError(ValueError):
    """The callers file is malformed; the message names the entry."""


@dataclass(frozen=True)
class Caller:
    name: str
    key_sha256: bytes
    realms: frozenset[str]
    background: bool = False  # its reads may wait when the month's metered reads run short

    def may_use(self, realm_id: str) -> bool:
        return "*" in self.realms or realm_id in self.realms


OPEN_CALLER = Caller(name="open-mode", key_sha256=b"", realms=frozenset({"*"}))


def load_callers(path: Path) -> list[Caller]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CallersFileError(f"QBO_CALLERS_FILE={path}: cannot read it: {exc}") from None
    entries = doc.get("callers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CallersFileError(f"QBO_CALLERS_FILE={path}: needs a non-empty 'callers' list")
    callers: list[Caller] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"QBO_CALLERS_FILE={path}: callers[{index}]"
        if not isinstance(entry, dict):
            raise CallersFileError(f"{where} must be a mapping")
        name = str(entry.get("name") or "")
        digest = str(entry.get("key_sha256") or "").strip().lower()
        realms = entry.get("realms")
        if not name:
            raise CallersFileError(f"{where} needs a name")
        if name in seen:
            raise CallersFileError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CallersFileError(f"{where} ({name}): key_sha256 must be 64 hex characters")
        if not isinstance(realms, list) or not realms:
            raise CallersFileError(f"{where} ({name}): realms must be a non-empty list")
        for realm in realms:
            if str(realm) != "*" and not str(realm).isdigit():
                raise CallersFileError(f"{where} ({name}): realm {realm!r} is not digits or '*'")
        background = entry.get("background", False)
        if not isinstance(background, bool):
            raise CallersFileError(f"{where} ({name}): background must be true or false")
        callers.append(
            Caller(name, bytes.fromhex(digest), frozenset(str(r) for r in realms), background)
        )
    return callers


def presented_key(headers: LooseHeaders) -> str | None:
    # A request's headers are already case-insensitive: copied only when they are not.
    h = headers if isinstance(headers, CIMultiDict | CIMultiDictProxy) else CIMultiDict(headers)
    key = h.get(KEY_HEADER)
    if key:
        return key.strip()
    auth = h.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class CallerRegistry:
    def __init__(self, callers: list[Caller] | None) -> None:
        self._callers = callers
        self.open_mode = callers is None

    def authenticate(self, headers: LooseHeaders) -> Caller:
        if self._callers is None:
            return OPEN_CALLER
        key = presented_key(headers)
        if not key:
            raise Unauthenticated("Send the caller key as 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode()).digest()
        found: Caller | None = None
        for caller in self._callers:
            if hmac.compare_digest(digest, caller.key_sha256) and found is None:
                found = caller
        if found is None:
            raise Unauthenticated("The caller key is not recognised")
        return found

    def authorize(self, caller: Caller, realm_id: str) -> None:
        if not caller.may_use(realm_id):
            raise Forbidden(f"Caller {caller.name!r} has no grant for this realm")
