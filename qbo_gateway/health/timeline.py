"""The history window cut into points (one per hour for a day): a realm's timeline, the
status page's bars.

Each point sums its buckets: requests, failures, uptime (downtime in the buckets plus the
part of a running outage that falls in the point), average and p95 response time, and,
for the status page, how token renewals and the gateway's own answers fared.
"""

from __future__ import annotations

from typing import Any

from qbo_gateway.health.alert_rules import iso
from qbo_gateway.health.buckets import Series, Totals, total
from qbo_gateway.health.sla import Window, overlap, uptime

POINT_SECONDS = 3600.0


def points(window: Window, *, point_seconds: float = POINT_SECONDS) -> list[tuple[int, int]]:
    """(first, last) bucket numbers of each point, oldest first: whole clock hours (for a
    day), the oldest and the newest cut by the window's edges."""
    per = max(1, round(point_seconds / window.width))
    out: list[tuple[int, int]] = []
    first = window.first
    while first <= window.last and first * window.width < window.now:
        last = min(window.last, (first // per + 1) * per - 1)
        out.append((first, last))
        first = last + 1
    return out


def realm_timeline(
    series: Series, window: Window, outage_begin: float | None, since: float
) -> list[Any]:
    """Points of one realm; uptime counts from `since` (when it was first seen)."""
    begins = [] if outage_begin is None else [outage_begin]
    out = []
    for first, last in points(window):
        start, end = first * window.width, min(window.now, (last + 1) * window.width)
        start = min(end, max(start, since))
        t = total(series, first, last)
        down_now = overlap(begins, start, end)
        ratio = uptime(t, down_now, end - start) if t.counts or down_now > 0 else None
        avg = t.avg_latency()
        out.append(
            {
                "start": iso(start),
                "requests": t.get("req"),
                "failed_requests": t.get("fail"),
                "uptime_ratio": None if ratio is None else round(ratio, 6),
                "avg_response_seconds": None if avg is None else round(avg, 4),
                "p95_response_seconds": t.p95_latency(),
            }
        )
    return out


def component_bars(
    series: Series, window: Window, *, realms: int, outage_begins: list[float], since: float
) -> dict[str, dict[str, Any]]:
    """Per component: one bar per point (its uptime; None: nothing to measure) and the
    figure over the whole window."""
    out: dict[str, dict[str, Any]] = {
        name: {"bars": [], "day": None} for name in ("connectivity", "tokens", "gateway")
    }
    spans = [*points(window), (window.first, window.last)]
    for i, (first, last) in enumerate(spans):
        start, end = first * window.width, min(window.now, (last + 1) * window.width)
        start = min(end, max(start, since))
        ratios = _component_ratios(
            total(series, first, last), overlap(outage_begins, start, end), end - start, realms
        )
        for name, ratio in ratios.items():
            if i == len(spans) - 1:
                out[name]["day"] = ratio
            else:
                out[name]["bars"].append({"start": start, "end": end, "ratio": ratio})
    return out


def _component_ratios(
    t: Totals, down_now: float, span: float, realms: int
) -> dict[str, float | None]:
    token_calls = t.get("tok_ok") + t.get("tok_fail") + t.get("tok_reconnect")
    seen = bool(t.counts) or down_now > 0
    return {
        "connectivity": uptime(t, down_now, span, max(1, realms)) if seen else None,
        "tokens": t.get("tok_ok") / token_calls if token_calls else None,
        "gateway": 1.0 - t.get("gw_err") / t.get("req") if t.get("req") else None,
    }
