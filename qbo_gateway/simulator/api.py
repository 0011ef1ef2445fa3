"""The front door of the Accounting API: what happens before an endpoint sees a request.

Every `/v3/company/{realm}/...` request is counted (in flight, per realm, recorded), checked
against Intuit's own limits when they are switched on, run past the injected fault rules and
the bearer token, and only then handed to `accounting.dispatch`; each answer carries an
`intuit_tid` as Intuit's do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import web

from qbo_gateway.simulator.accounting import dispatch
from qbo_gateway.simulator.answers import drop, unauthorized
from qbo_gateway.simulator.faults import STREAMED_KINDS, FaultRule, take_faults
from qbo_gateway.simulator.injected import api_fault, streamed_fault
from qbo_gateway.simulator.records import record

if TYPE_CHECKING:
    from qbo_gateway.simulator.core import Simulator


class ApiRoutes:
    """The handler of `/v3/company/{realm}/{tail}`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        realm_id = request.match_info["realm"]
        tail = request.match_info["tail"]
        tid = f"1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"
        sim.in_flight += 1
        sim.max_in_flight = max(sim.max_in_flight, sim.in_flight)
        realm_now = sim.in_flight_by_realm.get(realm_id, 0) + 1
        sim.in_flight_by_realm[realm_id] = realm_now
        sim.max_in_flight_by_realm[realm_id] = max(
            sim.max_in_flight_by_realm.get(realm_id, 0), realm_now
        )
        try:
            recorded = await record(request, sim.clock)
            sim.api_requests.append(recorded)
            sim.api_request_count += 1
            keep = sim.keep_requests
            if keep is not None and len(sim.api_requests) > 2 * keep:
                del sim.api_requests[:-keep]
            if self._over_limit(realm_id, realm_now):
                sim.throttled += 1
                return api_fault(request, FaultRule("throttle"), tid, sim.clock())
            delay, rule = take_faults(sim.faults, "api", request.method, realm_id, tail)
            await asyncio.sleep(sim.latency + delay)
            if rule is not None and rule.kind in STREAMED_KINDS:
                return await streamed_fault(request, rule, tid)
            if rule is not None and not (rule.kind == "disconnect" and rule.after):
                return api_fault(request, rule, tid, sim.clock())
            auth_fault = self._check_bearer(request, realm_id)
            if auth_fault is not None:
                response: web.StreamResponse = unauthorized(sim.clock())
            else:
                realm = sim.realms[realm_id]
                response = await dispatch(request, recorded, realm, tail, sim.clock())
            if rule is not None:
                return drop(request)
            response.headers["intuit_tid"] = tid
            return response
        finally:
            sim.in_flight -= 1
            sim.in_flight_by_realm[realm_id] -= 1

    def _over_limit(self, realm_id: str, realm_in_flight: int) -> bool:
        sim = self.sim
        if sim.concurrency_limit is not None and realm_in_flight > sim.concurrency_limit:
            return True
        if sim.rate_limit_per_minute is None:
            return False
        now = sim.clock()
        window = sim.admitted_at.setdefault(realm_id, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= sim.rate_limit_per_minute:
            return True
        window.append(now)
        return False

    def _check_bearer(self, request: web.Request, realm_id: str) -> str | None:
        sim = self.sim
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return "missing bearer"
        grant = sim.access_grants.get(token.strip())
        if grant is None or realm_id not in sim.realms:
            return "unknown token"
        if grant.realm_id != realm_id:
            return "token for another realm"
        if grant.expires_at <= sim.clock():
            return "expired"
        return None
