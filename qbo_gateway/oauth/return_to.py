"""Where a person goes after connecting a realm: only to a page the operator allowed.

A connect link may carry `return_to`, so the onboarding page of the service that asked for
the link gets the person back with the realm and the outcome. Letting any URL through would
make the callback an open redirect (a phishing page could borrow Intuit's consent screen and
the gateway's name), so a `return_to` must match an entry of `QBO_CONNECT_RETURN_URLS`: same
scheme, host and port, and a path at or below the entry's path. What is appended is the
realm id and a one-word outcome, never a token or a code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal
from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

Outcome = Literal["connected", "denied", "failed"]


class ReturnUrlRefused(ValueError):
    """The `return_to` is not on the allow list (or not an http(s) URL at all)."""


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default)


def _below(path: str, allowed: str) -> bool:
    allowed = allowed or "/"
    if path == allowed:
        return True
    prefix = allowed if allowed.endswith("/") else allowed + "/"
    return path.startswith(prefix)


class ReturnUrls:
    """The allow list; empty means connect links take no `return_to`."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = [urlsplit(url) for url in allowed if url]

    def __bool__(self) -> bool:
        return bool(self._allowed)

    def check(self, url: str) -> str:
        """`url` itself when allowed, else ReturnUrlRefused (saying why, without echoing it)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise ReturnUrlRefused("return_to must be an http(s) URL with a host")
        if not self._allowed:
            raise ReturnUrlRefused("return_to is not allowed: QBO_CONNECT_RETURN_URLS is unset")
        for allowed in self._allowed:
            if _origin(parts) == _origin(allowed) and _below(parts.path or "/", allowed.path):
                return url
        raise ReturnUrlRefused("return_to is not on QBO_CONNECT_RETURN_URLS")


def with_outcome(url: str, *, outcome: Outcome, realm_id: str | None) -> str:
    """`url` with `outcome` (and `realm_id` when known) added to its query."""
    parts = urlsplit(url)
    extra: dict[str, str] = {"outcome": outcome}
    if realm_id:
        extra["realm_id"] = realm_id
    query = "&".join(q for q in (parts.query, urlencode(extra)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
