"""The plain records the simulator's modules pass between them.

Tests read `RecordedRequest` and `TokenPair` back from the simulator; the grant and
authorization-code records are the token state the OAuth and Accounting handlers share. They
live apart so that every other module can import them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

JSONDict = dict[str, Any]


@dataclass
class RecordedRequest:
    """One request as the simulator received it (headers collapsed to one value each)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    access_expires_at: float
    refresh_expires_at: float


@dataclass
class Grant:
    realm_id: str
    expires_at: float


@dataclass
class AuthCode:
    realm_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float


async def record(request: web.Request, clock: Callable[[], float]) -> RecordedRequest:
    body = await request.read() if request.body_exists else b""
    return RecordedRequest(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers=dict(request.headers),
        body=body,
        at=clock(),
    )
