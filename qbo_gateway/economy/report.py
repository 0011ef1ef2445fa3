"""The month's use as JSON, for `/health/summary` and `/health/dashboard`.

Reads the month's whole hash once (on demand, not on the request path): the fleet's use,
the limit, the projection, the top realms, callers and entities, and the monitor's spend.
"""

from __future__ import annotations

import time
from typing import Any

from qbo_gateway.economy.meter import Meter
from qbo_gateway.economy.records import (
    CALLER_PREFIX,
    CORE,
    ENTITY_PREFIX,
    PROBE,
    REALM_PREFIX,
)
from qbo_gateway.state.errors import StateUnavailable


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _top(counts: dict[str, int], prefix: str, label: str, n: int) -> list[dict[str, Any]]:
    found = [(v, k[len(prefix) :]) for k, v in counts.items() if k.startswith(prefix)]
    found.sort(key=lambda item: (-item[0], item[1]))
    return [{label: name, "calls": calls} for calls, name in found[:n]]


async def month_report(meter: Meter, *, guard: str, top: int = 10) -> dict[str, Any]:
    """The `coreplus` section; the breakdowns are empty while the backend is unreachable."""
    await meter.drained_quietly()
    fig = await meter.refresh()
    try:
        counts = await meter.backend.read(fig.month.label)
    except StateUnavailable:
        counts = {}
    return {
        "month": fig.month.label,
        "resets_at": _iso(fig.month.end),
        "used": fig.used,
        "limit": fig.limit,
        "used_ratio": round(fig.ratio, 4),
        "rate_per_hour": round(fig.rate_per_hour, 1),
        "projected": round(fig.projected),
        "projected_ratio": round(fig.projected / fig.limit, 4) if fig.limit else 0.0,
        "guard": {"policy": guard, "active": meter.guard_active},
        "probe_calls": counts.get(PROBE, 0),
        "core_calls": counts.get(CORE, 0),
        "top_realms": _top(counts, REALM_PREFIX, "realm_id", top),
        "top_callers": _top(counts, CALLER_PREFIX, "caller", top),
        "top_entities": _top(counts, ENTITY_PREFIX, "entity", top),
    }
