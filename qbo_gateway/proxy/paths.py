"""What may pass from a caller's request to QBO: the path check and header hygiene.

The path is checked on the raw request target, before anything is decoded or routed, so
no encoding trick (`%2e%2e`, `%2f`, `%5c`, backslashes, empty segments, an absolute-form
target) can move a request off `/v3/company/{realmId}/...` or to another host. The upstream
origin is fixed by settings; only the checked path and the raw query are appended to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from qbo_gateway.faults import BadPath

PREFIX = "/v3/company/"
_FORBIDDEN_ESCAPES = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-.~%:@!$&'()*+,;=]+$")
_MAX_REALM_DIGITS = 32

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded to QBO: the caller's own credentials, identity and routing headers, and
# headers aiohttp recomputes for the upstream hop.
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "x-qbo-gateway-key",
        "cookie",
        "host",
        "forwarded",
        "x-real-ip",
        "content-length",
        "accept-encoding",
        "expect",
    }
)
# Never passed back from QBO: hop-by-hop, cookies, and length/encoding (the body is
# re-framed and decompressed by the gateway).
# Credentials never travel back to the caller, whatever QBO (or a proxy before it) sends.
_NOT_RETURNED = frozenset(
    {"authorization", "proxy-authorization", "set-cookie", "content-length", "content-encoding"}
)
_DROPPED_FORWARD = HOP_BY_HOP | _NOT_FORWARDED
_DROPPED_RETURN = HOP_BY_HOP | _NOT_RETURNED


@dataclass(frozen=True)
class Target:
    realm_id: str
    rest: str  # raw path after /v3/company/{realmId}/, e.g. "query" or "invoice/12"
    query: str  # raw query string, without "?"

    @property
    def is_batch(self) -> bool:
        return self.rest == "batch"

    def upstream_url(self, api_base: str, minor_version: str) -> URL:
        query = self.query
        if minor_version and not _has_param(query, "minorversion"):
            query = (
                f"{query}&minorversion={minor_version}"
                if query
                else f"minorversion={minor_version}"
            )
        raw = f"{api_base}{PREFIX}{self.realm_id}/{self.rest}"
        return URL(f"{raw}?{query}" if query else raw, encoded=True)

    def with_query(self, query: str) -> Target:
        return Target(self.realm_id, self.rest, query)

    def with_requestid(self, new_id: Callable[[], str]) -> Target:
        """This target with a `requestid`, kept from the caller when it sent one.

        Computed once per logical write and reused for every attempt, so QBO recognises a
        repeated write as the same one.
        """
        if _has_param(self.query, "requestid"):
            return self
        param = f"requestid={new_id()}"
        return self.with_query(f"{self.query}&{param}" if self.query else param)


def is_read(method: str, path: str) -> bool:
    """Safe to repeat and to cache: GET, or a POST to QBO's query endpoint.

    `path` is the request path (whole, or the part after the realm); only its last segment
    counts, so `.../query` and `.../Query/` read while `.../batch` does not.
    """
    verb = method.upper()
    if verb == "GET":
        return True
    if verb != "POST":
        return False
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower() == "query"


def _has_param(query: str, name: str) -> bool:
    return any(part.split("=", 1)[0].lower() == name for part in query.split("&") if part)


def check_path(raw_target: str) -> Target:
    """Split and check a raw request target; BadPath for anything not plainly a QBO path."""
    path, _, query = raw_target.partition("?")
    if not path.startswith(PREFIX) or path.startswith("//"):
        raise BadPath("The path must start with /v3/company/{realmId}/")
    if "\\" in path or _FORBIDDEN_ESCAPES.search(path):
        raise BadPath("Encoded dots, slashes, backslashes and NUL are not allowed in the path")
    realm_id, _, rest = path[len(PREFIX) :].partition("/")
    if not realm_id.isdigit() or not realm_id.isascii() or len(realm_id) > _MAX_REALM_DIGITS:
        raise BadPath("The realm id must be digits only")
    if not rest:
        raise BadPath("The path must name a resource after the realm id")
    for segment in rest.split("/"):
        if segment in ("", ".", ".."):
            raise BadPath("Empty, '.' and '..' path segments are not allowed")
        if not _SEGMENT.match(segment):
            raise BadPath("The path holds characters that are not allowed")
    if "#" in query:
        raise BadPath("A fragment is not allowed in the request target")
    return Target(realm_id, rest, query)


def _dropped(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], always: frozenset[str]
) -> frozenset[str]:
    """`always`, and the headers a `Connection` header names (hop-by-hop by RFC 9110)."""
    values = headers.getall("Connection", ())
    if not values:
        return always
    named = {token.strip().lower() for value in values for token in value.split(",")}
    named.discard("")
    return always | named


def forward_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str], *, withhold: str | None = None
) -> CIMultiDict[str]:
    """The caller's headers QBO may see. `withhold`: the caller's key, dropped from any
    header it appears in (a caller that copies its key into another header by mistake
    must not have it sent to Intuit)."""
    dropped = _dropped(incoming, _DROPPED_FORWARD)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in dropped or lower.startswith("x-forwarded-"):
            continue
        if withhold and withhold in value:
            continue
        out.add(name, value)
    # No Accept, or "anything", would get XML from QBO; SDKs and callers here expect JSON.
    if out.get("Accept", "").strip() in ("", "*/*"):
        out["Accept"] = "application/json"
    return out


def returned_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    dropped = _dropped(upstream, _DROPPED_RETURN)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in dropped:
            out.add(name, value)
    return out
