"""Reading the gateway's answers: QBO's JSON, what the gateway said, and its typed errors.

Every answer is read the same way whether it came through `QBOGatewayClient` or, via
`gateway_error_hook`, through python-quickbooks' own requests session: a `GW-` name (in
`X-QBO-Gateway-Error`, or a "GatewayFault" body whose header was lost) is the gateway's
refusal, any other fault is QBO's, and a good answer keeps its degraded-mode headers. Like
the rest of the client it imports only the standard library and `client.errors`.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from qbo_gateway.client.errors import (
    FAULT_CODE_NAMES,
    GW_CODES,
    GatewayFault,
    QBOFault,
    QBOThrottled,
)

_REALM = re.compile(r"^[0-9]{1,32}$")
QUERY_META = frozenset({"startPosition", "maxResults", "totalCount"})


# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QBOResponse(Mapping[str, Any]):
    """QBO's decoded JSON and what the gateway said about it.

    It reads like the JSON object itself (`response["CompanyInfo"]`), so code written for
    the original `make_qbo_request`, which returned the dict, keeps working.
    """

    data: Any
    status: int
    degraded: bool = False
    degraded_reason: str | None = None  # circuit-open, upstream-error, rate-limited, ...
    age: int | None = None  # seconds since a degraded (cached) answer was fresh
    cache_status: str | None = None
    intuit_tid: str | None = None
    request_id: str | None = None
    content: bytes = field(default=b"", repr=False)  # the raw body (e.g. a PDF)

    def _mapping(self) -> Mapping[str, Any]:
        return self.data if isinstance(self.data, Mapping) else {}

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())


@dataclass(frozen=True, eq=False)
class QueryResult:
    """The rows of a query (every page when asked), with each page's response."""

    entity: str | None
    rows: list[dict[str, Any]]
    total_count: int | None
    responses: list[QBOResponse]

    @property
    def degraded(self) -> bool:
        """True when any page was answered from the gateway's cache in degraded mode."""
        return any(r.degraded for r in self.responses)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def gateway_error_hook(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A `requests` response hook that raises this module's typed gateway errors.

    Optional: python-quickbooks already raises its own `QuickbooksException` (with the
    numeric code) for a gateway refusal. A service that would rather catch `RateLimited`,
    `CircuitOpen`, `ReconnectRequired`, ... (with `retry_after` and the `GW-` name) appends
    this to the SDK session's `hooks["response"]`. QBO's own answers are left to the SDK.
    Duck-typed (`status_code`, `headers`, `content`), so this module does not depend on
    requests.
    """
    if response.headers.get("X-QBO-Gateway-Error"):
        interpret(int(response.status_code), response.headers, bytes(response.content))
    return response


# ---- answer reading ----------------------------------------------------------------------


def check_realm(realm_id: str) -> None:
    if not isinstance(realm_id, str) or not _REALM.match(realm_id):
        raise ValueError("realm_id must be a string of digits")


def check_endpoint(endpoint: str) -> str:
    """Keep the call inside the realm: no `.`/`..`/empty segments, no scheme or host."""
    path, sep, query = endpoint.lstrip("/").partition("?")
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments) or "\\" in path or ":" in path:
        raise ValueError(f"endpoint must be a path below the realm, not {endpoint!r}")
    return path + sep + query


def json_or_none(body: bytes) -> Any:
    if body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return jsonlib.loads(body)
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: QBO and the gateway send seconds; ignore the odd one


def _fault_errors(doc: Any) -> tuple[dict[str, str], ...] | None:
    """QBO's errors in either key casing (`Fault.Error` or `fault.error`); None if no fault."""
    if not isinstance(doc, dict):
        return None
    fault = doc.get("Fault", doc.get("fault"))
    if not isinstance(fault, dict):
        return None
    items = fault.get("Error", fault.get("error"))
    if isinstance(items, dict):
        items = [items]
    out: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            low = {str(k).lower(): v for k, v in item.items()}
            out.append(
                {
                    "code": str(low.get("code") or ""),
                    "message": str(low.get("message") or ""),
                    "detail": str(low.get("detail") or ""),
                }
            )
    return tuple(out)


def _gateway_name(doc: Any, code: str) -> str | None:
    """The `GW-` name of a "GatewayFault" body whose header was lost on the way."""
    fault = doc.get("Fault", doc.get("fault")) if isinstance(doc, dict) else None
    if not isinstance(fault, dict) or fault.get("type", fault.get("Type")) != "GatewayFault":
        return None
    return FAULT_CODE_NAMES.get(code, "GW-UNKNOWN")


def interpret(status: int, headers: Mapping[str, str], content: bytes) -> QBOResponse:
    doc = json_or_none(content)
    meta: dict[str, Any] = {
        "request_id": headers.get("X-Request-Id"),
        "intuit_tid": headers.get("intuit_tid"),
    }
    errors = _fault_errors(doc)
    first = errors[0] if errors else {"code": "", "message": "", "detail": ""}
    retry_after = _retry_after(headers.get("Retry-After"))
    gw_code = headers.get("X-QBO-Gateway-Error") or _gateway_name(doc, first["code"])
    if gw_code:
        cls = GW_CODES.get(gw_code, GatewayFault)
        raise cls(
            first["message"] or f"the gateway refused the request (HTTP {status})",
            status=status,
            code=gw_code,
            fault_code=first["code"] or None,
            detail=first["detail"],
            retry_after=retry_after,
            **meta,
        )
    if status >= 400 or errors:
        message = first["message"] or f"QuickBooks answered HTTP {status}"
        detail = first["detail"] or ("" if errors else content[:200].decode("utf-8", "replace"))
        fault_cls = QBOThrottled if status == 429 or first["code"] == "3001" else QBOFault
        raise fault_cls(
            message,
            errors=errors or (),
            status=status,
            code=first["code"] or None,
            detail=detail,
            retry_after=retry_after,
            **meta,
        )
    age = headers.get("Age")
    degraded = headers.get("X-QBO-Gateway-Degraded")
    return QBOResponse(
        data=doc,
        status=status,
        degraded=degraded is not None,
        degraded_reason=degraded,
        age=int(age) if age is not None and age.isdigit() else None,
        cache_status=headers.get("Cache-Status"),
        content=content,
        **meta,
    )


def rows_of(response: QBOResponse) -> tuple[str | None, list[dict[str, Any]], int | None]:
    qr = response.get("QueryResponse")
    if not isinstance(qr, dict):
        return None, [], None
    total = qr.get("totalCount")
    for key, value in qr.items():
        if key not in QUERY_META and isinstance(value, list):
            return key, value, total if isinstance(total, int) else None
    return None, [], total if isinstance(total, int) else None
