"""The network boundary to QBO: one ClientSession, one attempt at a time.

Everything aiohttp can raise while talking to QBO is translated here, once, into the
gateway's fault tree, with a note of whether the request could have reached QBO (a write
may only be retried when it certainly did not). Pool limits and timeouts are explicit: the
pool bounds sockets to Intuit, the connect timeout bounds a dead network, and the overall
deadline is the caller's (`QBO_REQUEST_TIMEOUT_SECONDS`, retries included).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from qbo_gateway.faults import UpstreamTimeout, UpstreamUnavailable

_CONNECT_SECONDS = 5.0
_CONNECT = aiohttp.ClientTimeout(connect=_CONNECT_SECONDS)


class UpstreamConnectError(UpstreamUnavailable):
    """The connection was never made: QBO cannot have seen the request."""


def make_session(*, pool_size: int, connect_timeout: float = 5.0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=pool_size,
        ttl_dns_cache=300,
        keepalive_timeout=30,
        # Not enable_cleanup_closed: on Python < 3.12.7 its delayed abort of closed
        # transports can remove the selector registration of a reused file descriptor,
        # leaving an unrelated socket (a Redis connection, here) waiting forever.
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout
        ),
        # The caller gets identity-encoded bytes; decompressing here keeps cache entries
        # independent of each caller's Accept-Encoding.
        auto_decompress=True,
        raise_for_status=False,
        trust_env=False,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: URL
    headers: CIMultiDict[str]
    body: bytes | None


class Upstream:
    """Sends one attempt to QBO and translates failures; the caller owns the response."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, req: UpstreamRequest, *, budget: float) -> aiohttp.ClientResponse:
        """One attempt; `budget` is the seconds left before the request's deadline."""
        if budget <= 0:
            raise UpstreamTimeout("The request deadline passed before QBO was called")
        # No sock_read timer: it would be re-armed on every chunk QBO sends. The headers are
        # bounded here, and every read of the body by the request's deadline (the Exchange).
        timeout = _CONNECT if budget >= _CONNECT_SECONDS else aiohttp.ClientTimeout(connect=budget)
        try:
            async with asyncio.timeout(budget):
                return await self.session.request(
                    req.method,
                    req.url,
                    headers=req.headers,
                    data=req.body,
                    allow_redirects=False,
                    timeout=timeout,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout("QBO did not answer before the request deadline") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(
                f"Could not connect to QBO ({type(exc).__name__})", reason="connect"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(
                f"The connection to QBO failed ({type(exc).__name__})", reason="connection"
            ) from exc

    async def close(self) -> None:
        await self.session.close()
