"""Intuit's OAuth 2.0 endpoints, and what their answers mean for a realm.

The token manager must tell apart a dead refresh token (`invalid_grant`: the realm needs a
person), bad app credentials (`invalid_client`: a configuration error, never the realm's
fault) and a passing failure (5xx, timeout, dropped connection: try again, keep the tokens).
This module makes those calls over one injected aiohttp session and returns exactly one of
those outcomes. It never logs a token, and its errors never carry one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from qbo_gateway.clock import Clock

SCOPE = "com.intuit.quickbooks.accounting"


class OAuthError(Exception):
    """A token call did not give tokens. Messages are safe to log: no token, no secret."""


class InvalidGrant(OAuthError):
    """Intuit refused the refresh token (or the code): only a reconnect brings it back."""


class InvalidClient(OAuthError):
    """Intuit refused the app's client id/secret: a configuration error."""


class TokenCallFailed(OAuthError):
    """Intuit refused the call for another reason (4xx); retrying will not help."""


class TransientTokenError(TokenCallFailed):
    """5xx, 429, timeout or connection error: worth another attempt; tokens stay."""


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    refresh_token: str
    access_expires_at: float
    refresh_expires_at: float | None
    refresh_hard_expires_at: float | None

    def __repr__(self) -> str:  # never let a token reach a log through repr()
        return f"TokenGrant(access_expires_at={self.access_expires_at})"

    __str__ = __repr__


@dataclass(frozen=True)
class PkcePair:
    verifier: str
    challenge: str


def s256_challenge(verifier: str) -> str:
    """RFC 7636's S256 code challenge: unpadded base64url of the verifier's SHA-256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_pkce() -> PkcePair:
    verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43 to 128
    return PkcePair(verifier, s256_challenge(verifier))


def new_state() -> str:
    return secrets.token_urlsafe(30)


class OAuthClient:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        client_id: str,
        client_secret: str,
        token_url: str,
        authorize_url: str,
        revoke_url: str,
        clock: Clock,
        timeout: float = 15.0,
        request_hard_expiry: bool = True,
    ) -> None:
        self._session = session
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_url = token_url
        self.authorize_endpoint = authorize_url
        self.revoke_url = revoke_url
        self._clock = clock
        self.timeout = timeout
        self._hard_expiry = request_hard_expiry

    def _basic(self) -> str:
        raw = f"{self.client_id}:{self._client_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def authorize_url(self, *, redirect_uri: str, state: str, code_challenge: str) -> str:
        query = urlencode(
            {
                "client_id": self.client_id,
                "response_type": "code",
                "scope": SCOPE,
                "redirect_uri": redirect_uri,
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.authorize_endpoint}?{query}"

    async def refresh(self, refresh_token: str) -> TokenGrant:
        return await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def exchange_code(
        self, code: str, *, redirect_uri: str, code_verifier: str
    ) -> TokenGrant:
        return await self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def _token_call(self, form: dict[str, str]) -> TokenGrant:
        headers = {
            "Authorization": self._basic(),
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if self._hard_expiry:
            headers["x-include-refresh-token-hard-expires-in"] = "true"
        try:
            async with self._session.post(
                self.token_url,
                data=urlencode(form),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError as exc:
            raise TransientTokenError("token endpoint timed out") from exc
        except aiohttp.ClientError as exc:
            raise TransientTokenError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        received_at = self._clock.now()
        doc = _json(body)
        if status == 200 and isinstance(doc, dict):
            return _grant(doc, received_at)
        raise _classify_error(status, doc)

    async def revoke(self, token: str) -> None:
        try:
            async with self._session.post(
                self.revoke_url,
                data=json.dumps({"token": token}),
                headers={
                    "Authorization": self._basic(),
                    "Accept": "application/json",
                    "Content-Type": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError as exc:
            raise TransientTokenError("revoke endpoint timed out") from exc
        except aiohttp.ClientError as exc:
            raise TransientTokenError(f"revoke endpoint unreachable: {type(exc).__name__}") from exc
        if status != 200:
            raise _classify_error(status, _json(body))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _grant(doc: dict[str, Any], now: float) -> TokenGrant:
    access = doc.get("access_token")
    refresh = doc.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        # A 200 without a usable pair: treat like a lost answer, never store half a pair.
        raise TransientTokenError("token endpoint answered 200 without a token pair")
    expires_in = _number(doc.get("expires_in")) or 3600.0
    refresh_in = _number(doc.get("x_refresh_token_expires_in"))
    hard_in = _number(doc.get("x_refresh_token_hard_expires_in"))
    return TokenGrant(
        access_token=access,
        refresh_token=refresh,
        access_expires_at=now + expires_in,
        refresh_expires_at=None if refresh_in is None else now + refresh_in,
        refresh_hard_expires_at=None if hard_in is None else now + hard_in,
    )


def _classify_error(status: int, doc: Any) -> OAuthError:
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error if isinstance(error, str) else ""
    if code == "invalid_grant":
        return InvalidGrant("token endpoint: invalid_grant")
    if code in ("invalid_client", "unauthorized_client") or (status == 401 and not code):
        return InvalidClient(f"token endpoint: {code or 'HTTP 401'} (check client id/secret)")
    if status >= 500 or status in (408, 429):
        return TransientTokenError(f"token endpoint: HTTP {status}")
    safe = code if code.replace("_", "").isalnum() and len(code) < 64 else ""
    return TokenCallFailed(f"token endpoint: HTTP {status} {safe}".rstrip())
