"""QBO's answer back to the caller: one write for a small body, a stream for the rest.

The body of an `Exchange` is relayed as it arrives, so a large report never sits whole in
the gateway; a body with a known length up to 256 KiB is read first and sent in one write.
Whoever wants a copy of the body (the read cache, through `Keep`) gets it once the body is
complete and not larger than it asked for. The admission slot is settled when the body is
done, and the connection given back, however the relay ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.admission.records import Outcome
from qbo_gateway.faults import UpstreamUnavailable
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
                exchange.body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                exchange.outcome = Outcome.FAILURE
                exchange.settle()
                raise UpstreamUnavailable("QBO broke off the response") from exc
            if answer.keep is not None:
                await answer.keep.store(upstream.status, headers, exchange.body)
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
    upstream = exchange.response
    kept: list[bytes] | None = [] if keep is not None else None
    kept_size = 0
    limit = keep.max_bytes if keep is not None else 0
    response = web.StreamResponse(status=upstream.status, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            await response.write(chunk)
            if kept is not None:
                kept_size += len(chunk)
                if kept_size > limit:
                    kept = None  # too big to keep: stop collecting, keep streaming
                else:
                    kept.append(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, TimeoutError) as exc:
        # QBO broke off mid-body: the caller sees a truncated response (the status is
        # already sent), and the realm is charged with an upstream failure.
        exchange.outcome = Outcome.FAILURE
        rec.outcome, rec.code = "error", "GW-UPSTREAM-UNAVAILABLE"
        log.warning("upstream_body_broken", error=type(exc).__name__)
        return response
    finally:
        exchange.settle()
    if kept is not None and keep is not None:
        await keep.store(upstream.status, headers, b"".join(kept))
    return response


def _small(response: aiohttp.ClientResponse) -> bool:
    length = response.content_length
    return length is not None and length <= _SMALL_BODY
