"""The original connection-manager API, served by the sidecar.

Services written against the in-process connection manager used before the gateway call
`ensure_healthy_connection(business_id)` and `make_qbo_request(business_id, endpoint)`. This
module gives them the same two calls (plus `query`), backed by the gateway, so moving to the
gateway is a change of import, not of code: tokens, refresh, limits, the breaker and the
degraded cache all live in the sidecar; this client only speaks HTTP to it.

It is deliberately standalone (aiohttp, the standard library and `client.errors`, nothing
else from this package), so it can be vendored or installed on its own in the services
that call the gateway.

Settings, from arguments or the environment (same `QBO_` style as the gateway):

- `QBO_GATEWAY_URL`: the proxy listener (default `http://127.0.0.1:8080`)
- `QBO_GATEWAY_OPS_URL`: the ops listener, for health (default `http://127.0.0.1:9090`)
- `QBO_GATEWAY_KEY`: the caller key, when the gateway has callers configured (default none)

Failures are typed: the gateway's refusals (`GW-` name in the header `X-QBO-Gateway-Error`,
numeric `code` in the body) and QBO's own faults each map to one exception class
(`client.errors`), all under `QBOGatewayError`.
"""

from __future__ import annotations

import json as jsonlib
import os
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp

from qbo_gateway.client.answers import (
    QBOResponse,
    QueryResult,
    check_endpoint,
    check_realm,
    gateway_error_hook,
    interpret,
    json_or_none,
    rows_of,
)
from qbo_gateway.client.errors import GatewayUnreachable, HealthUnavailable

__all__ = [
    "DEFAULT_OPS_URL",
    "DEFAULT_PROXY_URL",
    "QBOGatewayClient",
    "QBOResponse",
    "QueryResult",
    "gateway_error_hook",
    "get_qbo_connection_manager",
]

DEFAULT_PROXY_URL = "http://127.0.0.1:8080"
DEFAULT_OPS_URL = "http://127.0.0.1:9090"
ENV_PROXY_URL = "QBO_GATEWAY_URL"
ENV_OPS_URL = "QBO_GATEWAY_OPS_URL"
ENV_KEY = "QBO_GATEWAY_KEY"
# One proxied request may take QBO_REQUEST_TIMEOUT_SECONDS (30 s by default) inside the
# gateway; the client waits a little longer so the gateway's own 504 arrives first.
DEFAULT_TIMEOUT_SECONDS = 35.0
# QBO's largest page; used when paging through a query that names no MAXRESULTS.
QUERY_PAGE_MAX = 1000
# Health statuses under which the realm is served now (degraded: served, maybe from cache).
SERVING_STATUSES = frozenset({"healthy", "degraded"})

_PAGING = re.compile(
    r"(?:\s+STARTPOSITION\s+(?P<start>\d+))?(?:\s+MAXRESULTS\s+(?P<max>\d+))?\s*;?\s*$",
    re.IGNORECASE,
)


# ---- the client ------------------------------------------------------------------------


class QBOGatewayClient:
    """Async client for the gateway: health, QBO calls and queries, one aiohttp session.

    Give it a `session` to share one you own (it is then never closed here); otherwise it
    creates one on first use and closes it in `close()` / `async with`.
    """

    def __init__(
        self,
        proxy_url: str | None = None,
        ops_url: str | None = None,
        key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.proxy_url = (proxy_url or os.environ.get(ENV_PROXY_URL) or DEFAULT_PROXY_URL).rstrip(
            "/"
        )
        self.ops_url = (ops_url or os.environ.get(ENV_OPS_URL) or DEFAULT_OPS_URL).rstrip("/")
        self._key = key if key is not None else (os.environ.get(ENV_KEY) or None)
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        # Never show the key.
        return f"QBOGatewayClient(proxy_url={self.proxy_url!r}, ops_url={self.ops_url!r})"

    async def __aenter__(self) -> QBOGatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    # ---- health ----------------------------------------------------------------------

    async def health(self, realm_id: str) -> dict[str, Any] | None:
        """The realm's health document from the ops listener; None for an unknown realm."""
        check_realm(realm_id)
        url = f"{self.ops_url}/health/business/{realm_id}"
        try:
            async with self._get_session().get(url, timeout=self._timeout) as resp:
                body = await resp.read()
                status = resp.status
                request_id = resp.headers.get("X-Request-Id")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayUnreachable(
                f"the gateway's ops listener at {self.ops_url} could not be reached: "
                f"{type(exc).__name__}"
            ) from exc
        doc = json_or_none(body)
        if status == 404 and isinstance(doc, dict) and ("Fault" in doc or "error" in doc):
            return None  # the health API's own 404: the gateway has never heard of the realm
        if status != 200 or not isinstance(doc, dict) or "status" not in doc:
            raise HealthUnavailable(
                f"{url} did not answer with the health API (HTTP {status}); "
                f"is {ENV_OPS_URL} the gateway's ops listener?",
                status=status,
                request_id=request_id,
            )
        return doc

    async def ensure_healthy_connection(self, realm_id: str) -> bool:
        """True when the gateway can serve the realm now (healthy, or degraded but serving).

        Never raises for an unhealthy, unknown or disconnected realm (that is False); raises
        `GatewayUnreachable` / `HealthUnavailable` only when the gateway cannot tell.
        """
        doc = await self.health(realm_id)
        if doc is None:
            return False
        breaker = doc.get("breaker")
        token = doc.get("token")
        if isinstance(breaker, dict) and breaker.get("state") == "open":
            return False
        if isinstance(token, dict) and token.get("needs_reconnect"):
            return False
        return doc.get("status") in SERVING_STATUSES

    # ---- QBO calls -------------------------------------------------------------------

    async def make_qbo_request(
        self,
        realm_id: str,
        endpoint: str,
        *,
        method: str = "GET",
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        content_type: str | None = None,
        allow_stale: bool = True,
        request_id: str | None = None,
    ) -> QBOResponse:
        """One QBO Accounting API call through the gateway.

        `endpoint` is the path after `/v3/company/{realmId}/` (e.g. `companyinfo/123`,
        `customer`, `reports/ProfitAndLoss`). `allow_stale=False` sends
        `Cache-Control: no-cache`: the error instead of a cached answer while QBO fails.
        Raises a `QBOGatewayError` subclass for every refusal or fault.
        """
        check_realm(realm_id)
        url = f"{self.proxy_url}/v3/company/{realm_id}/{check_endpoint(endpoint)}"
        headers = {"Accept": "application/json"}
        if self._key:
            headers["X-QBO-Gateway-Key"] = self._key
        if not allow_stale:
            headers["Cache-Control"] = "no-cache"
        if request_id:
            headers["X-Request-Id"] = request_id
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers["Content-Type"] = content_type or "application/json"
        elif data is not None:
            body = data.encode() if isinstance(data, str) else data
            headers["Content-Type"] = content_type or "application/octet-stream"
        try:
            async with self._get_session().request(
                method.upper(),
                url,
                params=dict(params) if params else None,
                data=body,
                headers=headers,
                timeout=self._timeout,
            ) as resp:
                content = await resp.read()
                status = resp.status
                resp_headers = resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayUnreachable(
                f"the gateway at {self.proxy_url} could not be reached: {type(exc).__name__}"
            ) from exc
        return interpret(status, resp_headers, content)

    async def query(
        self,
        realm_id: str,
        sql: str,
        *,
        all_pages: bool = False,
        page_size: int | None = None,
        allow_stale: bool = True,
    ) -> QueryResult:
        """Run a QBO query; with `all_pages`, fetch every page.

        Paging respects the query's own clauses: STARTPOSITION is the first row wanted and
        MAXRESULTS the page size (else `page_size`, else 1000, QBO's largest page).
        """
        if not all_pages:
            response = await self._query_page(realm_id, sql, allow_stale)
            return QueryResult(*rows_of(response), [response])
        match = _PAGING.search(sql)
        base = sql[: match.start()] if match else sql
        start = int(match["start"]) if match and match["start"] else 1
        size = int(match["max"]) if match and match["max"] else (page_size or QUERY_PAGE_MAX)
        size = max(1, min(size, QUERY_PAGE_MAX))
        responses: list[QBOResponse] = []
        all_rows: list[dict[str, Any]] = []
        entity: str | None = None
        total: int | None = None
        while True:
            page_sql = f"{base} STARTPOSITION {start} MAXRESULTS {size}"
            response = await self._query_page(realm_id, page_sql, allow_stale)
            responses.append(response)
            page_entity, rows, page_total = rows_of(response)
            entity = entity or page_entity
            total = page_total if page_total is not None else total
            all_rows.extend(rows)
            if len(rows) < size:
                break
            start += len(rows)
        return QueryResult(entity, all_rows, total, responses)

    async def _query_page(self, realm_id: str, sql: str, allow_stale: bool) -> QBOResponse:
        # POST with application/text, as python-quickbooks does: long queries fit, and the
        # gateway treats it as a read (cacheable, served degraded).
        return await self.make_qbo_request(
            realm_id,
            "query",
            method="POST",
            data=sql,
            content_type="application/text",
            allow_stale=allow_stale,
        )


def get_qbo_connection_manager(db: object = None, **kwargs: Any) -> QBOGatewayClient:
    """Drop-in for the original `get_qbo_connection_manager(db)`; `db` is no longer needed."""
    return QBOGatewayClient(**kwargs)
