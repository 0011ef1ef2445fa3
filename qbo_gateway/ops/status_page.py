"""The client status page: overall status, components with 24 hours of uptime bars, incidents.

Plain HTML and CSS (no JavaScript) that refreshes itself, built from `public_status`: what
clients may see, in plain words, with no realm ids and no secrets; every value escaped. The
bars come from the fleet's history buckets, one per hour: QuickBooks connectivity (time
without an outage, over all realms), the token service (renewals that succeeded) and the
gateway (requests it answered without an error of its own).
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Any

from qbo_gateway.health.alert_rules import iso
from qbo_gateway.health.sla import running_outages
from qbo_gateway.health.timeline import component_bars
from qbo_gateway.health.wiring import Health

_STATUS_WORDS = {"operational": "Operational", "degraded": "Degraded", "outage": "Outage"}


def _template() -> Template:
    text = resources.files("qbo_gateway.ops").joinpath("templates", "status_page.html")
    return Template(text.read_text("utf-8"))


def render_status_page(model: dict[str, Any]) -> str:
    esc = html.escape
    components = "\n".join(_component_html(c) for c in model["components"])
    if model["incidents"]:
        incidents = "\n".join(
            '    <article class="incident">'
            f"<h3>{esc(i['title'])}</h3>"
            f"<p>{esc(i['detail'])}</p>"
            f'<p class="muted">Affecting {esc(i["affected"])} since '
            f'<time datetime="{esc(i["since"] or "")}">{esc(_readable(i["since"]))}</time>.</p>'
            "</article>"
            for i in model["incidents"]
        )
    else:
        incidents = '    <p class="muted">No incidents right now.</p>'
    return _template().substitute(
        headline=esc(model["headline"]),
        overall=esc(model["overall"]),
        components=components,
        incidents=incidents,
        updated_at=esc(model["updated_at"] or ""),
        updated_at_text=esc(_readable(model["updated_at"])),
    )


def _percent(ratio: float | None) -> str:
    if ratio is None:
        return "no data"
    return f"{ratio * 100:.2f}%".replace("100.00%", "100%")


def _level(ratio: float | None) -> str:
    if ratio is None:
        return "none"
    if ratio >= 0.999:
        return "ok"
    return "minor" if ratio >= 0.99 else "major"


def _component_html(c: dict[str, Any]) -> str:
    esc = html.escape
    name = esc(c["name"])
    bars = "".join(
        f'<span class="bar {_level(b["ratio"])}" '
        f'title="{esc(_hour(b["start"]))} to {esc(_hour(b["end"]))} UTC: '
        f'{esc(_percent(b["ratio"]))}"></span>'
        for b in c.get("bars", [])
    )
    day = esc(_percent(c.get("day")))
    return (
        f'    <li><div class="head"><span class="name">{name}</span>'
        f'<span class="state {esc(c["status"])}">{esc(_STATUS_WORDS[c["status"]])}</span></div>'
        f'<div class="bars" role="img" aria-label="{name}: {day} over the last 24 hours">'
        f"{bars}</div>"
        '<div class="legend muted"><span>24 hours ago</span>'
        f"<span>{day} uptime</span><span>Now</span></div></li>"
    )


def _hour(at: float) -> str:
    stamp = iso(at) or ""
    return stamp[11:16]


def _readable(stamp: str | None) -> str:
    if not stamp:
        return "unknown"
    return stamp.replace("T", " ").replace("Z", " UTC")


async def public_status(health: Health) -> dict[str, Any]:
    """What clients may see: components and incidents in plain words, no realm ids."""
    now = health.clock.now()
    affected, since = _affected(health)
    components = await _components(health, affected)
    worst = max(components, key=lambda c: _COMPONENT_RANK[c["status"]])["status"]
    incidents = []
    for kind in _INCIDENT_ORDER:
        realms = affected.get(kind)
        if not realms:
            continue
        count = len(realms)
        incidents.append(
            {
                "title": _INCIDENT_WORDS[kind][0],
                "detail": _INCIDENT_WORDS[kind][1],
                "affected": f"{count} connected {'company' if count == 1 else 'companies'}",
                "since": iso(since[kind]),
            }
        )
    return {
        "overall": worst,
        "headline": _HEADLINES[worst],
        "components": components,
        "incidents": incidents,
        "updated_at": iso(now),
    }


def _affected(health: Health) -> tuple[dict[str, set[str]], dict[str, float]]:
    """Realms with each active alert kind, and since when the kind is active."""
    affected: dict[str, set[str]] = {}
    since: dict[str, float] = {}
    for alert in health.alerts.active():
        if alert.kind == "refresh_token_expiring" and alert.severity != "critical":
            continue
        affected.setdefault(alert.kind, set()).add(alert.realm_id)
        since[alert.kind] = min(since.get(alert.kind, alert.started_at), alert.started_at)
    return affected, since


async def _components(health: Health, affected: dict[str, set[str]]) -> list[dict[str, Any]]:
    n = max(1, len(health.table.realms))
    down = len(
        affected.get("circuit_open", set())
        | {
            a.realm_id
            for a in health.alerts.active()
            if a.kind == "consecutive_failures" and a.severity == "critical"
        }
    )
    connectivity_any = set().union(
        *(
            affected.get(k, set())
            for k in ("consecutive_failures", "circuit_open", "slow_responses", "throttled")
        )
    )
    token_any = set().union(
        *(
            affected.get(k, set())
            for k in ("refresh_failing", "reconnect_required", "refresh_token_expiring")
        )
    )
    series, window = await health.views.fleet_history()
    outages = running_outages(health.alerts)
    seen = window.observed_since(series)
    first_seen = min([*outages, *([seen] if seen is not None else [])], default=window.now)
    bars = component_bars(
        series, window, realms=n, outage_begins=outages, since=max(window.start, first_seen)
    )
    gateway = "operational" if health.backend_up() else "degraded"
    return [
        {
            "name": "QuickBooks connectivity",
            "status": _component_status(down, len(connectivity_any), n),
            **bars["connectivity"],
        },
        {
            "name": "Token service",
            "status": _component_status(0, len(token_any), n),
            **bars["tokens"],
        },
        {"name": "Gateway", "status": gateway, **bars["gateway"]},
    ]


_COMPONENT_RANK = {"operational": 0, "degraded": 1, "outage": 2}
_HEADLINES = {
    "operational": "All systems operational",
    "degraded": "Some services are degraded",
    "outage": "Major service disruption",
}
_INCIDENT_ORDER = (
    "circuit_open",
    "consecutive_failures",
    "reconnect_required",
    "slow_responses",
    "throttled",
    "refresh_failing",
    "refresh_token_expiring",
)
_INCIDENT_WORDS = {
    "circuit_open": (
        "QuickBooks Online is unreachable for some companies",
        "Requests are paused briefly and retried automatically; recent data may be shown "
        "from a saved copy.",
    ),
    "consecutive_failures": (
        "Requests to QuickBooks Online are failing for some companies",
        "We are retrying automatically; recent data may be shown from a saved copy.",
    ),
    "reconnect_required": (
        "Some companies need to reconnect QuickBooks",
        "An account owner must sign in to QuickBooks again to restore the connection.",
    ),
    "slow_responses": (
        "QuickBooks Online is responding slowly",
        "Requests are completing, but more slowly than usual.",
    ),
    "throttled": (
        "QuickBooks Online is limiting request rates",
        "Requests are delayed briefly and complete once the limit lifts.",
    ),
    "refresh_failing": (
        "Renewing QuickBooks access is being retried",
        "Service continues normally while renewal is retried.",
    ),
    "refresh_token_expiring": (
        "QuickBooks authorization expires soon for some companies",
        "An account owner should reconnect QuickBooks to avoid an interruption.",
    ),
}


def _component_status(down: int, affected: int, total: int) -> str:
    if down and down * 2 >= total:
        return "outage"
    if affected:
        return "degraded"
    return "operational"
