"""One connection on a listener: aiohttp's request handler with the gateway's edges.

aiohttp answers a request it cannot parse itself, with a plain-text 400 that echoes the
offending header line, after logging that line (a caller's key included) at error level.
`EdgeRequestHandler` answers such requests with the gateway's fault instead, logs only
the kind of error, and adds what aiohttp lacks: a deadline for a request's line and
headers, and a bound on open connections (see `EdgeLimits`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from qbo_gateway.faults import BadPath, GatewayError, UpstreamTimeout, render_fault
from qbo_gateway.log_foreign import scrub_text
from qbo_gateway.request_ids import new_request_id

if TYPE_CHECKING:
    from qbo_gateway.edge.server import EdgeServer

log = structlog.get_logger("qbo_gateway.edge")


@dataclass(frozen=True)
class EdgeLimits:
    """Per listener. `header_timeout`: seconds from a connection's first byte of a request
    (or from connecting) until its line and headers are complete. `max_connections`: open
    connections; past it the longest-idle connection is closed, else the new one is."""

    listener: str
    header_timeout: float = 10.0
    max_connections: int = 512
    on_close: Callable[[str, str], None] | None = None  # (listener, reason), for metrics


class EdgeRequestHandler(RequestHandler):
    def __init__(self, manager: EdgeServer, *, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0

    # --- connection bound and header deadline -----------------------------------------

    @property
    def waiting_for_request(self) -> bool:
        """Between requests, with no complete request line and headers received."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        room = self._edge.make_room()
        super().connection_made(transport)
        self.idle_since = self._loop.time()
        if not room:
            self._closed_for("connection_limit")
            return
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        # Armed only when these bytes left a request's line and headers incomplete: a
        # request that arrives whole (the usual case) costs no timer. Armed now, the
        # deadline still runs from the request's first byte.
        waiting = self.waiting_for_request
        super().data_received(data)
        if self._head_timer is None:
            if waiting and self.waiting_for_request:
                self._arm_head_deadline()
        elif self._messages or self._request_in_progress:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._head_timer = self._loop.call_later(
            self._limits.header_timeout, self._head_deadline_passed
        )

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if not (self._force_close or self._request_in_progress or self._messages):
            self._closed_for("header_timeout")

    def close_idle(self) -> None:
        """Closed to make room for a new connection (this one was waiting longest)."""
        self._closed_for("evicted_idle")

    def _closed_for(self, reason: str) -> None:
        log.debug("connection_closed", listener=self._limits.listener, reason=reason)
        if self._limits.on_close is not None:
            self._limits.on_close(self._limits.listener, reason)
        self.force_close()

    # --- aiohttp's own answers and logs -----------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        error = _fault_for(status)
        if status == 400:
            log.info(
                "request_malformed",
                listener=self._limits.listener,
                error=type(exc).__name__ if exc else None,
                reason=_safe_reason(exc),
            )
        elif status == 500:
            log.error("handler_failed", listener=self._limits.listener, exc_info=exc)
        else:
            log.warning("handler_timed_out", listener=self._limits.listener, status=status)
        if request.writer.output_size > 0:
            # Part of an answer is out: only closing the connection can tell the caller.
            raise ConnectionError("the answer was already started; closing the connection")
        response = render_fault(error, {"X-Request-Id": new_request_id()})
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        try:
            text = str(args[0]) % args[1:] if args else ""
        except (TypeError, ValueError):
            text = str(args[0]) if args else ""
        log.error(
            "listener_error",
            listener=self._limits.listener,
            detail=scrub_text(text)[:200],
            exc_info=exc if isinstance(exc, BaseException) else None,
        )


def _fault_for(status: int) -> GatewayError:
    if status == 400:
        return BadPath(
            "The request line or headers are malformed",
            message="The request could not be parsed",
        )
    if status == 504:
        return UpstreamTimeout("The request deadline passed")
    return GatewayError("The gateway failed to handle the request")


def _safe_reason(exc: BaseException | None) -> str | None:
    """The parser's reason without the quoted wire bytes that follow it."""
    if not isinstance(exc, HttpProcessingError):
        return None
    first = str(exc.message).strip().split("\n", 1)[0].rstrip(":")
    return scrub_text(first)[:120]
