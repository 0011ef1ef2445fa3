"""The `/_sim/` control routes: drive the simulator over HTTP from another process.

Benchmarks, the demo and the CLI-level tests run the simulator as a separate process and
cannot call its Python API; these routes expose the same controls (realms, expiring access
tokens, fault rules, latency, Intuit's limits, stats, reset) as small JSON endpoints.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from qbo_gateway.simulator.faults import FaultRule
from qbo_gateway.simulator.records import JSONDict

if TYPE_CHECKING:
    from qbo_gateway.simulator.core import Simulator


class ControlRoutes:
    """The handlers of every `/_sim/...` route."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def realms(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        pair = self.sim.add_realm(str(data["realm_id"]) if data.get("realm_id") else None)
        realm_id = self.sim.refresh_grants[pair.refresh_token].realm_id
        return web.json_response({"realm_id": realm_id, **asdict(pair)})

    async def expire(self, request: web.Request) -> web.StreamResponse:
        self.sim.expire_access_token(request.match_info["realm"])
        return web.json_response({"ok": True})

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            rule = FaultRule.from_json(await _json_body(request))
        except (ValueError, TypeError, re.error) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.sim.inject(rule)
        return web.json_response(rule.to_json(), status=201)

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.sim.clear_faults()
        return web.json_response({"ok": True})

    async def latency(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        data = await _json_body(request)
        try:
            api = float(data.get("api", sim.latency))
            token = float(data.get("token", sim.token_latency))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text="latency values are seconds") from exc
        sim.latency, sim.token_latency = api, token
        return web.json_response({"api": sim.latency, "token": sim.token_latency})

    async def limits(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        data = await _json_body(request)
        try:
            concurrency = _opt_int(data.get("concurrency", sim.concurrency_limit))
            per_minute = _opt_int(data.get("per_minute", sim.rate_limit_per_minute))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text="limits are integers or null") from exc
        sim.concurrency_limit, sim.rate_limit_per_minute = concurrency, per_minute
        return web.json_response(
            {"concurrency": sim.concurrency_limit, "per_minute": sim.rate_limit_per_minute}
        )

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.sim.stats())

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.sim.reset_stats()
        self.sim.clear_faults()
        return web.json_response({"ok": True})


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


async def _json_body(request: web.Request) -> JSONDict:
    if not request.body_exists:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="body must be JSON") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data
