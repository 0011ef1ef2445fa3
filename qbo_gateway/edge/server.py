"""A listener's server and runner: aiohttp's, handing each connection to `EdgeRequestHandler`.

aiohttp builds its request handler inside `Server.__call__` and its server inside
`AppRunner._make_server`; these two overrides are the only way in (aiohttp has no setting
for either). The connection bound lives here because it needs every open connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from prometheus_client import CollectorRegistry, Counter

from qbo_gateway.edge.answers import http_exception_fault
from qbo_gateway.edge.protocol import EdgeLimits, EdgeRequestHandler

# An idle keep-alive connection is closed after this long (nginx's default). aiohttp's own
# default is an hour, which lets idle connections hold the bound's slots for nothing.
KEEPALIVE_SECONDS = 75.0


class EdgeServer(Server):
    def __init__(self, handler: Any, *, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, limits=self.limits, loop=self._loop, **self._kwargs)

    def make_room(self) -> bool:
        """Room for one more connection: True, closing the longest-idle one if need be."""
        open_now = self.connections
        if len(open_now) < self.limits.max_connections:
            return True
        idle = [h for h in open_now if isinstance(h, EdgeRequestHandler) and h.waiting_for_request]
        if not idle:
            return False
        min(idle, key=lambda h: h.idle_since).close_idle()
        return True


EDGE_LIMITS = web.AppKey("edge_limits", EdgeLimits)
"""Each listener's application carries its limits, so the daemon and tests serve it alike."""

Refusal = Callable[[web.BaseRequest, web.HTTPException], web.StreamResponse]
EDGE_REFUSALS: web.AppKey[Refusal] = web.AppKey("edge_refusals")
"""A listener's own answer to aiohttp's refusals (default: `http_exception_fault`)."""


class EdgeRunner(web.AppRunner):
    """`web.AppRunner` whose server is an `EdgeServer` with the app's `EDGE_LIMITS`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_SECONDS)
        super().__init__(app, **kwargs)
        self._limits = app.get(EDGE_LIMITS) or EdgeLimits(listener="app")

    async def _make_server(self) -> Server:
        base = await super()._make_server()
        app_handler = base.request_handler
        refusal = self.app.get(EDGE_REFUSALS) or http_exception_fault

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            # Refusals aiohttp raises outside any handler (no route, an unknown `Expect`)
            # would otherwise go out as its plain text.
            try:
                return await app_handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return refusal(request, exc)

        return EdgeServer(
            handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            **base._kwargs,  # the handler settings AppRunner gathered
        )


def set_edge_limits(
    listeners: dict[str, tuple[web.Application, int]],
    *,
    header_timeout: float,
    registry: CollectorRegistry,
) -> None:
    """Give each listener's app (by name: app and connection bound) its `EDGE_LIMITS`."""
    closed = Counter(
        "qbo_gateway_connections_closed",
        "Connections the gateway closed at its edge (header deadline, connection bound)",
        ["listener", "reason"],
        registry=registry,
    )

    def count(listener: str, reason: str) -> None:
        closed.labels(listener=listener, reason=reason).inc()

    for name, (app, bound) in listeners.items():
        app[EDGE_LIMITS] = EdgeLimits(
            listener=name, header_timeout=header_timeout, max_connections=bound, on_close=count
        )
