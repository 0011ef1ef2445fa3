"""The monitor's metered reads over a month at 10,000 realms: its probe budget against the
old policy (every idle realm every interval).

Builds the health subsystem over N fake realms with the read economy's meter and probe
budget (embedded mode, the defaults: 5% of a 500,000 limit, a day's idle age) on a
ManualClock, and runs the monitor's cycle every interval for a whole calendar month
(January 2027, 31 days), as the daemon's loop does. A probe is counted by the meter as the
gateway's own and answered like QBO would: a success, or a failure while its realm is in an
outage. The fleet, deterministic from the seed: a tenth of the realms have live traffic in
business hours (weekdays 08-18 UTC), the rest are idle; every day a few realms go through an
outage (failing reads for an hour, the circuit open), a throttle, and a failing token
refresh; one in a thousand must be reconnected. The old policy's figure is what the same
cycles would have probed: every realm without a live success within the interval and not
needing a reconnect.

    .venv/bin/python bench/probe_month.py [--realms 10000] [--days 31] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import sys
import time
from collections import Counter
from datetime import UTC
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import ManualClock
from qbo_gateway.economy.backend_memory import MemoryMeterBackend
from qbo_gateway.economy.meter import Meter, MeterOptions
from qbo_gateway.economy.probe_budget import ProbeBudget
from qbo_gateway.economy.records import PROBE, month_of
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.store_memory import MemoryHealthStore
from qbo_gateway.health.wiring import Health, HealthOptions, HealthSources, build_health
from qbo_gateway.metrics import Metrics
from qbo_gateway.settings import Settings
from qbo_gateway.tokens.records import TokenStatus

DAY = 86400.0
HOUR = 3600.0


@dataclasses.dataclass
class Fleet:
    """The month's events, drawn once from the seed."""

    ids: list[str]
    active: list[str]  # live traffic in business hours
    outages: dict[str, float] = dataclasses.field(default_factory=dict)  # realm -> ends at
    tokens: dict[str, TokenStatus] = dataclasses.field(default_factory=dict)


def business_hours(now: float) -> bool:
    t = time.gmtime(now)
    return t.tm_wday < 5 and 8 <= t.tm_hour < 18


async def run(args: argparse.Namespace) -> dict[str, object]:
    defaults = Settings.model_fields
    share = float(defaults["probe_budget_share"].default)
    limit = int(defaults["coreplus_monthly_limit"].default)
    interval = float(defaults["monitor_interval_seconds"].default)
    idle = float(defaults["probe_idle_seconds"].default)
    rng = random.Random(args.seed)
    clock = ManualClock()
    month = month_of(clock.now(), UTC)
    clock.advance(month.start - clock.now())  # the month's first second
    ids = [str(9_100_000_000_000_000 + i) for i in range(args.realms)]
    fleet = Fleet(ids=ids, active=rng.sample(ids, args.realms // 10))
    now = clock.now()
    for i, realm in enumerate(ids):
        fleet.tokens[realm] = TokenStatus(
            realm_id=realm,
            access_expires_at=now + 3600,
            refresh_expires_at=now + 90 * DAY,
            refresh_hard_expires_at=None,
            needs_reconnect=i % 1000 == 0,
            version=1,
        )
    metrics = Metrics(CollectorRegistry())
    meter = Meter(
        MemoryMeterBackend(),
        clock=clock,
        metrics=metrics,
        options=MeterOptions(monthly_limit=limit),
    )
    monitor: Health

    async def realm_ids() -> list[str]:
        return fleet.ids

    async def token_statuses() -> list[TokenStatus]:
        return list(fleet.tokens.values())

    async def token_status(realm_id: str) -> TokenStatus | None:
        return fleet.tokens.get(realm_id)

    async def load(realm_id: str) -> RealmLoad:
        return RealmLoad(BreakerState.CLOSED, 0, None, None, 0, 0, 0, 0)

    async def probe(realm_id: str) -> None:
        meter.count(realm_id, "", f"companyinfo/{realm_id}", coreplus=True, probe=True)
        down = fleet.outages.get(realm_id, 0.0) > clock.now()
        monitor.observer.request_finished(
            realm_id,
            outcome="upstream",
            status=503 if down else 200,
            latency=0.2,
            fault=FaultClass.UPSTREAM_FAILURE if down else FaultClass.OK,
            probe=True,
        )
        if not down:
            monitor.observer.breaker_changed(realm_id, BreakerState.CLOSED)

    monitor = build_health(
        HealthOptions(autostart=False, interval=interval, probe_idle_seconds=idle),
        store=MemoryHealthStore(history_seconds=DAY),
        clock=clock,
        metrics=metrics,
        sources=HealthSources(
            realm_ids=realm_ids,
            token_statuses=token_statuses,
            token_status=token_status,
            load=load,
            probe=probe,
        ),
    )
    budget = ProbeBudget(meter, store=monitor.store, clock=clock, share=share, interval=interval)
    monitor.cycle.budget = budget
    await monitor.open(background=False)

    reasons: Counter[str] = Counter()
    old_policy = 0
    cycles = 0
    started = time.perf_counter()
    end = min(month.end, month.start + args.days * DAY)
    next_day = clock.now()
    while clock.now() < end:
        now = clock.now()
        if now >= next_day:  # the day's troubles
            next_day += DAY
            for realm in rng.sample(ids, args.outages):
                fleet.outages[realm] = now + rng.uniform(0, DAY - HOUR) + HOUR
            for realm in rng.sample(ids, args.throttles):
                monitor.observer.throttled(realm, until=now + rng.uniform(0, DAY))
            for realm in rng.sample(ids, args.refresh_failures):
                fleet.tokens[realm] = dataclasses.replace(fleet.tokens[realm], refresh_failing=True)
        for realm, ends in list(fleet.outages.items()):
            if ends - HOUR <= now < ends:
                monitor.observer.request_finished(
                    realm,
                    outcome="error",
                    status=502,
                    latency=0.1,
                    fault=FaultClass.UPSTREAM_FAILURE,
                )
                monitor.observer.breaker_changed(realm, BreakerState.OPEN)
            elif now >= ends:
                del fleet.outages[realm]
        if business_hours(now):
            for realm in fleet.active:
                monitor.observer.request_finished(
                    realm, outcome="upstream", status=200, latency=0.2, fault=FaultClass.OK
                )
        report = await monitor.cycle.run_cycle()
        old_policy += report.realms - report.skipped_busy - report.skipped_reconnect
        reasons.update(report.reasons)
        cycles += 1
        await meter.drained()
        await monitor.flush()
        clock.advance(interval)
    spent = await meter.backend.count(month.label, PROBE)  # the month's, now it is over
    await monitor.close()
    await meter.close()
    return {
        "realms": args.realms,
        "month": month.label,
        "days": round((end - month.start) / DAY, 2),
        "cycles": cycles,
        "interval_seconds": interval,
        "old_policy_probes": old_policy,
        "old_policy_every_idle_realm_30d": args.realms * 30 * DAY / interval,
        "budget": budget.budget,
        "probes": spent,
        "probes_by_strongest_reason": dict(reasons.most_common()),
        "old_over_new": round(old_policy / max(1, spent)),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(json.dumps(await run(args), indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realms", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=31.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--outages", type=int, default=5, help="realms in an outage each day")
    parser.add_argument("--throttles", type=int, default=5, help="realms throttled each day")
    parser.add_argument("--refresh-failures", type=int, default=2, help="each day")
    asyncio.run(main(parser.parse_args()))
