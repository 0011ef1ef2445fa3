"""Which idle realms a probe tells most about: the realms ranked by doubt.

A probe is a metered (CorePlus) `companyinfo` read, and the monitor has a small monthly
share of the app's limit, so it is spent where a yes-or-no from QBO changes what operators
know. A realm with a live success within the interval is never a candidate: its traffic
is the probe. Among the idle rest, each reason to doubt adds a weight (larger weights for
what a probe settles: is the circuit's trouble over, did the failures stop, does the new
grant work); a realm with no reason is not probed at all. Ties go to the realm whose last
success is oldest (never: oldest of all), then the realm id, so the order is deterministic.

Token health is not a reason: it comes from the token store and the refresh outcomes
(an OAuth refresh is not metered, every refresh token is used at least daily, and the
refresh token's expiry is stored), never from a probe. So the token facts that age
(access or refresh token expiry, the last refresh's time) never enter the score; only a
refresh that failed or whose outcome is unknown does, because then the realm's reads may
be failing too and a probe tells whether they are.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.health.stats import RealmStats, RealmTable
from qbo_gateway.tokens.records import TokenStatus

# Distinct powers of two: one stronger reason outranks every weaker one together.
WEIGHTS: dict[str, int] = {
    "breaker_not_closed": 128,  # the probe is the half-open trial that can close it
    "failing": 64,  # the last outcome QBO gave was a failure
    "reconnected": 32,  # a new grant since the last success
    "refresh_failing": 16,  # token calls fail: reads may fail once the access token ends
    "refresh_outcome_unknown": 8,  # a token call's answer was lost
    "throttled": 4,  # QBO throttled the realm since its last success
    "never_checked": 2,  # nothing seen of it since this process started
    "idle": 1,  # its last success is older than the idle age
}


@dataclass(frozen=True)
class Doubt:
    """One candidate: its score (the sum of its reasons' weights) and the reasons."""

    realm_id: str
    score: int
    reasons: tuple[str, ...]
    last_success_at: float | None


# (-score, last success or -inf, realm id, reasons): tuples order in C, so a cycle over
# 10,000 realms heapifies them and pops only as many as it probes.
_Entry = tuple[int, float, str, tuple[str, ...]]


@dataclass(frozen=True)
class Ranking:
    """The candidates, most doubtful first, and why the others are not candidates."""

    heap: list[_Entry]
    busy: int  # a live success within the interval
    reconnect: int  # must be reconnected: a probe cannot succeed (and is not metered)
    cooling: int  # in QBO's throttle cool-down: admission would refuse the probe
    no_doubt: int  # idle, but nothing against it

    def __len__(self) -> int:
        return len(self.heap)

    def ordered(self) -> Iterator[Doubt]:
        """The candidates most doubtful first, taken one at a time (O(log n) each)."""
        heap = list(self.heap)
        while heap:
            yield _doubt(heapq.heappop(heap))

    @property
    def candidates(self) -> list[Doubt]:
        return [_doubt(entry) for entry in sorted(self.heap)]


def _doubt(entry: _Entry) -> Doubt:
    neg_score, oldest, realm_id, reasons = entry
    return Doubt(realm_id, -neg_score, reasons, None if oldest == _NEVER else oldest)


_NEVER = float("-inf")


def reasons_for(
    stats: RealmStats | None,
    token: TokenStatus | None,
    *,
    breaker_alert: bool,
    now: float,
    idle_seconds: float,
) -> tuple[str, ...]:
    """Why an idle realm is in doubt (empty: it is not)."""
    found: list[str] = []
    last_ok = stats.last_success_at if stats is not None else None
    if breaker_alert or (stats is not None and stats.breaker is not BreakerState.CLOSED):
        found.append("breaker_not_closed")
    if stats is not None and (
        stats.consecutive_failures > 0 or _after(stats.last_failure_at, last_ok)
    ):
        found.append("failing")
    if stats is not None and _after(stats.reconnected_at, last_ok):
        found.append("reconnected")
    # Token trouble counts once per episode: until a success follows its start, a probe
    # tells whether reads still work; after that the token store tells the rest.
    if token is not None and stats is not None and _after(stats.token_trouble_at, last_ok):
        if token.refresh_failing:
            found.append("refresh_failing")
        if token.refresh_outcome_unknown:
            found.append("refresh_outcome_unknown")
    if stats is not None and _after(stats.last_throttled_at, last_ok):
        found.append("throttled")
    if stats is None or (stats.last_check_at is None and last_ok is None):
        found.append("never_checked")
    if last_ok is None or now - last_ok >= idle_seconds:
        found.append("idle")
    return tuple(found)


def rank(
    table: RealmTable,
    *,
    circuit_alerts: set[str],
    now: float,
    idle_seconds: float,
) -> Ranking:
    """Every realm of the table sorted into busy, not probeable now, no doubt, or candidate."""
    heap: list[_Entry] = []
    busy = reconnect = cooling = no_doubt = 0
    for realm_id in table.realms:
        token = table.tokens.get(realm_id)
        if token is not None and token.needs_reconnect:
            reconnect += 1
            continue
        stats = table.stats.get(realm_id)
        if stats is not None:
            live = stats.last_live_success_at
            if live is not None and live > now - table.interval:
                busy += 1
                continue
            if stats.throttled_until is not None and stats.throttled_until > now:
                cooling += 1
                continue
        reasons = reasons_for(
            stats,
            token,
            breaker_alert=realm_id in circuit_alerts,
            now=now,
            idle_seconds=idle_seconds,
        )
        if not reasons:
            no_doubt += 1
            continue
        last_ok = stats.last_success_at if stats is not None else None
        score = sum(WEIGHTS[r] for r in reasons)
        heap.append((-score, _NEVER if last_ok is None else last_ok, realm_id, reasons))
    heapq.heapify(heap)
    return Ranking(heap, busy, reconnect, cooling, no_doubt)


def _after(event: float | None, last_ok: float | None) -> bool:
    return event is not None and (last_ok is None or event > last_ok)
