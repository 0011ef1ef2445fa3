"""QBO's answer back to the caller: one write for a small body, a stream for the rest.

The body of an `Exchange` is relayed as it arrives, so a large report never sits whole in
the gateway; a body with a known length up to 256 KiB is read first and sent in one write.
Whoever wants a copy of the body (the read cache, through `Keep`) gets it once the body is
complete and not larger than it asked for. The admission slot is settled when the body is
done (or the request's deadline cuts it), and the connection given back, however the relay
ends. A body QBO breaks off, or the deadline cuts, once streaming has begun aborts the
caller's connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.admission.records import Outcome
from qbo_gateway.faults import GatewayError, UpstreamTimeout, UpstreamUnavailable
from qbo_gateway.logs import failure
from qbo_gateway.proxy.access_log import RequestRecord
from qbo_gateway.proxy.exchange import Exchange
from qbo_gateway.proxy.paths import returned_headers

log = structlog.get_logger("qbo_gateway.access")

_CHUNK = 64 * 1024
_SMALL_BODY = 256 * 1024


@dataclass(frozen=True)
class Keep:
    """A copy of the relayed body is wanted: up to `max_bytes`, handed to `store` when whole."""

    max_bytes: int
    store: Callable[[int, CIMultiDict[str], bytes], Awaitable[object]]


@dataclass(frozen=True)
class Relay:
    """An exchange to relay to the caller, and who keeps a copy of its body (if anyone)."""

    exchange: Exchange
    keep: Keep | None = None


# What the way to QBO answers: an answer made by the gateway (from the cache), or QBO's.
Answer = web.StreamResponse | Relay


async def relay(request: web.Request, answer: Relay, rec: RequestRecord) -> web.StreamResponse:
    exchange = answer.exchange
    upstream = exchange.response
    headers = returned_headers(upstream.headers)
    rec.outcome = "upstream"
    rec.code = str(upstream.status)
    headers["Cache-Status"] = rec.cache_status
    headers["X-Request-Id"] = rec.request_id
    try:
        if exchange.body is None and _small(upstream):
            # A small body is read whole: one write back instead of a chunked stream.
            try:
                await exchange.read_body()
            except GatewayError:
                exchange.settle()
                raise
            if answer.keep is not None and exchange.body is not None:
                keep, status, body = answer.keep, upstream.status, exchange.body
                rec.after_reply.append(lambda: keep.store(status, headers, body))
        if exchange.body is not None:
            exchange.settle()
            return web.Response(status=upstream.status, headers=headers, body=exchange.body)
        return await _stream(request, exchange, headers, rec, answer.keep)
    finally:
        upstream.release()


async def _stream(
    request: web.Request,
    exchange: Exchange,
    headers: CIMultiDict[str],
    rec: RequestRecord,
    keep: Keep | None,
) -> web.StreamResponse:
    """Relay the body as it arrives, all of it within the request's deadline.

    Nothing goes to the caller before QBO's first chunk, so a deadline or a break before
    it is still a fault. After it, the only honest signal is an aborted connection (no
    terminating chunk): the caller must never take a cut-off body for a whole one, and
    nothing of it is kept.
    """
    chunks = exchange.response.content.iter_chunked(_CHUNK)
    kept = _Kept(keep)
    response: web.StreamResponse | None = None
    try:
        async with exchange.within_deadline():
            chunk = await anext(chunks, b"")
            response = web.StreamResponse(status=exchange.response.status, headers=headers)
            await response.prepare(request)
            while chunk:
                await response.write(chunk)
                kept.add(chunk)
                chunk = await anext(chunks, b"")
            await response.write_eof()
    except (aiohttp.ClientError, TimeoutError) as exc:
        exchange.outcome = Outcome.FAILURE
        timed_out = isinstance(exc, TimeoutError)
        if response is None:
            if timed_out:
                raise UpstreamTimeout("The request deadline passed before QBO's body") from exc
            raise UpstreamUnavailable("QBO broke off the response") from exc
        rec.outcome = "error"
        rec.code = "GW-UPSTREAM-TIMEOUT" if timed_out else "GW-UPSTREAM-UNAVAILABLE"
        log.warning(
            "upstream_body_cut",
            request_id=rec.request_id,
            reason="deadline" if timed_out else "broken",
            **failure(exc),
        )
        _abort(request)
        return response
    finally:
        exchange.settle()
    if kept.body is not None and keep is not None:
        await keep.store(exchange.response.status, headers, kept.body)
    return response


class _Kept:
    """The copy of a streamed body for whoever keeps it, dropped once over its bound."""

    def __init__(self, keep: Keep | None) -> None:
        self._parts: list[bytes] | None = [] if keep is not None else None
        self._size = 0
        self._limit = keep.max_bytes if keep is not None else 0

    def add(self, chunk: bytes) -> None:
        if self._parts is None:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._parts = None  # too big to keep: stop collecting, keep streaming
        else:
            self._parts.append(chunk)

    @property
    def body(self) -> bytes | None:
        return b"".join(self._parts) if self._parts is not None else None


def _abort(request: web.Request) -> None:
    """Close the caller's connection at once: what was sent stays a visibly cut answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _small(response: aiohttp.ClientResponse) -> bool:
    length = response.content_length
    return length is not None and length <= _SMALL_BODY
