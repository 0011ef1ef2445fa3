"""Where health history, alerts and monitor leases live, and the in-process home for them.

The health rules need four kinds of shared state: the history as per-minute buckets per
realm and for the fleet (`buckets`), kept for the history window; the last few checks and
events of each realm (what the business view lists); the alert records (one active per
realm and kind); and a per-realm probe lease so several replicas probe an idle realm once
per interval. `HealthStore` is that interface; `MemoryHealthStore` holds it in process
(embedded mode, and the fallback while Redis is unreachable); `store_redis` shares it
through Redis. Both are proven by one suite (tests/test_health.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from qbo_gateway.health.bucket_ring import BucketRing
from qbo_gateway.health.buckets import Series
from qbo_gateway.health.recent_events import RecentEvents, Row

Severity = Literal["warning", "critical"]
AlertState = Literal["active", "acknowledged", "resolved"]
LeaseResult = Literal["acquired", "busy", "held"]

SEVERITY_RANK: dict[str, int] = {"warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One check or request outcome of a realm, as kept in its history (in process, packed
    by `recent_events`)."""

    at: float  # epoch seconds
    source: str  # check | request | breaker | stale
    ok: bool
    status: int = 0
    latency: float = 0.0
    detail: str = ""  # short, secret-free (outcome, fault class, breaker state)
    live: bool = False  # a live (non-probe) request that succeeded upstream

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def row(self) -> Row:
        return (self.at, self.source, self.ok, self.status, self.latency, self.detail, self.live)

    @classmethod
    def from_json(cls, raw: str | bytes) -> HistoryEntry:
        doc = json.loads(raw)
        doc.pop("n", None)  # the uniqueness nonce the Redis store adds
        return cls(**doc)


@dataclass(frozen=True)
class AlertRecord:
    """One alert: an episode of one condition (kind) on one realm."""

    id: str
    realm_id: str
    kind: str
    severity: str  # warning | critical
    state: str  # active | acknowledged | resolved
    message: str
    started_at: float  # when the condition began (first failure of a run)
    raised_at: float  # when the rule fired
    updated_at: float
    value: float | None = None  # the measured figure (failures, seconds, days left)
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    resolved_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state != "resolved"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AlertRecord:
        known = {f for f in cls.__dataclass_fields__}
        clean = {k: v for k, v in doc.items() if k in known}
        # cjson turns an empty dict into an empty array and null into a sentinel.
        if not isinstance(clean.get("extra"), dict):
            clean["extra"] = {}
        return cls(**clean)

    @classmethod
    def from_json(cls, raw: str | bytes) -> AlertRecord:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True)
class UpsertResult:
    alert: AlertRecord
    created: bool  # a new episode: this caller raised it (and notifies)
    changed: bool  # severity or message changed (escalation notifies)


RECENT_EVENTS = 50  # recent checks and events kept per realm (the history is the buckets)
# Five minutes: hourly timeline points and SLA figures need no finer grain (incident times are
# kept exactly, outside the buckets), and a day then costs a realm 48 KB in Redis instead of
# 242 KB at one minute (in process, a probed realm's day is about 3 KB: `bucket_ring`).
BUCKET_SECONDS = 300.0


class HealthStore(Protocol):
    async def record(self, entries: dict[str, list[HistoryEntry]], *, now: float) -> None:
        """Append recent events per realm; keeps the newest few within the window."""
        ...

    async def history(self, realm_id: str, *, since: float, limit: int) -> list[HistoryEntry]:
        """The newest `limit` recent events at or after `since`, oldest first."""
        ...

    async def add_counts(self, realms: dict[str, Series], fleet: Series, *, now: float) -> None:
        """Add counters into each realm's buckets and the fleet's (sums: replicas add up)."""
        ...

    async def write_batch(
        self,
        realms: dict[str, Series],
        fleet: Series,
        entries: dict[str, list[HistoryEntry]],
        *,
        now: float,
    ) -> None:
        """`add_counts` and `record` as one write (one pipeline in Redis): the history
        writer's batch of a tick, every realm's at once."""
        ...

    async def realm_series(self, realm_id: str, *, first: int, last: int) -> Series:
        """The realm's buckets first..last (bucket numbers, inclusive) that hold anything."""
        ...

    async def fleet_series(self, *, first: int, last: int) -> Series:
        """The fleet's buckets first..last that hold anything."""
        ...

    async def acquire_probe(
        self, realm_id: str, *, owner: str, now: float, interval: float
    ) -> LeaseResult:
        """`busy` when a live request succeeded within `interval` (seen by any replica),
        `held` when the realm's probe lease is held (by anyone: a replica that restarts
        its loop must not probe twice in one interval either), else takes it."""
        ...

    async def upsert_alert(self, alert: AlertRecord) -> UpsertResult:
        """Raise (or update the severity of) the one active alert of (realm, kind)."""
        ...

    async def resolve_alert(self, realm_id: str, kind: str, *, at: float) -> AlertRecord | None:
        """Resolve the active alert of (realm, kind); None when none was active."""
        ...

    async def ack_alert(self, alert_id: str, *, at: float, by: str) -> AlertRecord | None: ...

    async def alerts(self) -> list[AlertRecord]:
        """Every alert kept: active ones and those resolved within the history window."""
        ...

    async def prune(self, *, resolved_before: float, keep_resolved: int) -> int: ...

    async def close(self) -> None: ...


def merge_upsert(current: AlertRecord | None, new: AlertRecord) -> UpsertResult:
    """The one rule both stores apply: keep the episode, take the new severity/message."""
    if current is None or not current.active:
        return UpsertResult(new, created=True, changed=True)
    if current.severity == new.severity and current.message == new.message:
        return UpsertResult(current, created=False, changed=False)
    merged = replace(
        current,
        severity=new.severity,
        message=new.message,
        value=new.value,
        updated_at=new.updated_at,
    )
    return UpsertResult(merged, created=False, changed=current.severity != new.severity)


class MemoryHealthStore:
    """`HealthStore` in process: rings per realm, a dict of alerts, a dict of leases."""

    def __init__(
        self,
        *,
        history_seconds: float,
        bucket_seconds: float = BUCKET_SECONDS,
        recent_events: int = RECENT_EVENTS,
    ) -> None:
        self.history_seconds = history_seconds
        self.bucket_seconds = bucket_seconds
        self.max_entries = recent_events
        self._slots = math.ceil(history_seconds / bucket_seconds) + 1
        self._rings: dict[str, BucketRing] = {}
        self._fleet = BucketRing(self._slots, wide=True)
        self._history = RecentEvents(recent_events)
        self._last_live_ok: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._alerts: dict[str, AlertRecord] = {}
        self._active: dict[tuple[str, str], str] = {}

    async def record(self, entries: dict[str, list[HistoryEntry]], *, now: float) -> None:
        cutoff = now - self.history_seconds
        for realm_id, items in entries.items():
            for entry in items:
                if entry.live and entry.ok:
                    self._last_live_ok[realm_id] = max(
                        entry.at, self._last_live_ok.get(realm_id, 0.0)
                    )
            self._history.add(realm_id, (entry.row() for entry in items), cutoff=cutoff)

    async def history(self, realm_id: str, *, since: float, limit: int) -> list[HistoryEntry]:
        kept = [HistoryEntry(*row) for row in self._history.rows(realm_id) if row[0] >= since]
        return kept[-limit:] if limit > 0 else []

    async def add_counts(self, realms: dict[str, Series], fleet: Series, *, now: float) -> None:
        for realm_id, series in realms.items():
            ring = self._rings.get(realm_id)
            if ring is None:
                ring = self._rings[realm_id] = BucketRing(self._slots)
            for bucket, counts in series.items():
                ring.add(bucket, counts)
        for bucket, counts in fleet.items():
            self._fleet.add(bucket, counts)

    async def write_batch(
        self,
        realms: dict[str, Series],
        fleet: Series,
        entries: dict[str, list[HistoryEntry]],
        *,
        now: float,
    ) -> None:
        await self.add_counts(realms, fleet, now=now)
        await self.record(entries, now=now)

    async def realm_series(self, realm_id: str, *, first: int, last: int) -> Series:
        ring = self._rings.get(realm_id)
        return ring.read(first, last) if ring is not None else {}

    async def fleet_series(self, *, first: int, last: int) -> Series:
        return self._fleet.read(first, last)

    def bucket_bytes(self, realm_id: str) -> int:
        """Bytes the realm's ring holds (reported by the 10,000-realm benchmark)."""
        ring = self._rings.get(realm_id)
        return ring.nbytes() if ring is not None else 0

    async def acquire_probe(
        self, realm_id: str, *, owner: str, now: float, interval: float
    ) -> LeaseResult:
        last_ok = self._last_live_ok.get(realm_id)
        if last_ok is not None and last_ok > now - interval:
            return "busy"
        held = self._leases.get(realm_id)
        if held is not None and held[1] > now:
            return "held"
        self._leases[realm_id] = (owner, now + lease_length(interval))
        return "acquired"

    async def upsert_alert(self, alert: AlertRecord) -> UpsertResult:
        current_id = self._active.get((alert.realm_id, alert.kind))
        current = self._alerts.get(current_id) if current_id else None
        result = merge_upsert(current, alert)
        self._alerts[result.alert.id] = result.alert
        self._active[(alert.realm_id, alert.kind)] = result.alert.id
        return result

    async def resolve_alert(self, realm_id: str, kind: str, *, at: float) -> AlertRecord | None:
        current_id = self._active.pop((realm_id, kind), None)
        current = self._alerts.get(current_id) if current_id else None
        if current is None:
            return None
        resolved = replace(current, state="resolved", resolved_at=at, updated_at=at)
        self._alerts[resolved.id] = resolved
        return resolved

    async def ack_alert(self, alert_id: str, *, at: float, by: str) -> AlertRecord | None:
        current = self._alerts.get(alert_id)
        if current is None:
            return None
        state = current.state if current.state == "resolved" else "acknowledged"
        acked = replace(current, state=state, acknowledged_at=at, acknowledged_by=by)
        self._alerts[alert_id] = acked
        return acked

    async def alerts(self) -> list[AlertRecord]:
        return list(self._alerts.values())

    async def prune(self, *, resolved_before: float, keep_resolved: int) -> int:
        resolved = sorted(
            (a for a in self._alerts.values() if not a.active),
            key=lambda a: a.resolved_at or 0.0,
        )
        excess = max(0, len(resolved) - keep_resolved)
        drop = [
            a.id
            for i, a in enumerate(resolved)
            if i < excess or (a.resolved_at or 0.0) < resolved_before
        ]
        for alert_id in drop:
            del self._alerts[alert_id]
        return len(drop)

    async def close(self) -> None:
        return None


def lease_length(interval: float) -> float:
    """A probe lease ends a little before the next interval so its owner's next tick,
    arriving a hair early, is not blocked by its own lease."""
    return interval * 0.95
