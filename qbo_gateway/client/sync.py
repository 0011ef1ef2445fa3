"""A synchronous facade over `QBOGatewayClient`, for scripts and sync services.

The original digest code was synchronous; it gets the same calls, types and exceptions as
the async client. The facade runs one private event loop in a daemon thread and submits
each call to it, so it works the same from plain scripts, from worker threads and from code
that is itself running inside an event loop (where `asyncio.run` would refuse). A sync call
made on an event loop's thread still blocks that loop while it waits: that is what a sync
call means, so async code should use `QBOGatewayClient` directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

from qbo_gateway.client.gateway_client import (
    DEFAULT_TIMEOUT_SECONDS,
    QBOGatewayClient,
    QBOResponse,
    QueryResult,
)

__all__ = ["QBOGatewaySyncClient"]

T = TypeVar("T")


class QBOGatewaySyncClient:
    """Blocking twin of `QBOGatewayClient`: same arguments, same results, same exceptions."""

    def __init__(
        self,
        proxy_url: str | None = None,
        ops_url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qbo-gateway-client", daemon=True
        )
        self._thread.start()
        # The async client (and its aiohttp session, created on first use) lives on the
        # private loop; it is only ever touched from that loop's thread.
        self._client = QBOGatewayClient(proxy_url, ops_url, key, timeout=timeout)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def proxy_url(self) -> str:
        return self._client.proxy_url

    @property
    def ops_url(self) -> str:
        return self._client.ops_url

    def __repr__(self) -> str:
        return f"QBOGatewaySyncClient(proxy_url={self.proxy_url!r}, ops_url={self.ops_url!r})"

    def __enter__(self) -> QBOGatewaySyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("QBOGatewaySyncClient is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("QBOGatewaySyncClient cannot be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the session and stop the private loop; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()

    def health(self, realm_id: str) -> dict[str, Any] | None:
        return self._run(self._client.health(realm_id))

    def ensure_healthy_connection(self, realm_id: str) -> bool:
        return self._run(self._client.ensure_healthy_connection(realm_id))

    def make_qbo_request(
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
        return self._run(
            self._client.make_qbo_request(
                realm_id,
                endpoint,
                method=method,
                params=params,
                json=json,
                data=data,
                content_type=content_type,
                allow_stale=allow_stale,
                request_id=request_id,
            )
        )

    def query(
        self,
        realm_id: str,
        sql: str,
        *,
        all_pages: bool = False,
        page_size: int | None = None,
        allow_stale: bool = True,
    ) -> QueryResult:
        return self._run(
            self._client.query(
                realm_id, sql, all_pages=all_pages, page_size=page_size, allow_stale=allow_stale
            )
        )
