"""Metered (CorePlus) reads with the read economy off and on, for a mixed workload.

Replays one simulated hour of several services' traffic over 1,000 realms through a whole
gateway (embedded mode) in front of the simulator, both on local sockets, with the economy
off (no write-through, no per-entity freshness, no CDC refresh, no guard), on without the
guard, and on (defaults, CDC refresh included); then, without the guard and with customers
and invoices fresh for a minute, without and with CDC refresh (what renewing expired entity
reads with one CDC call per realm saves over reading each again):

- a billing service reading the same customers and invoices again and again,
- an order service creating and updating customers and reading them right after,
- every service looking up reference data (accounts, terms),
- customer edits made in QuickBooks itself (not through the gateway, but seen by QBO's
  change data capture), which is what can make an answer from the cache stale.

It reports CorePlus calls per hour in each run (the gateway's own meter), the saving, the
stale-answer rate (answers from the cache that differ from what QBO held at that moment)
and the monitor's probe spend at 10,000 realms (the old policy's against the budget's). Time is a ManualClock: the hour passes in
seconds of wall time.

    .venv/bin/python bench/economy.py [--realms 1000] [--requests 6000] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qbo_gateway.app import Gateway, build_gateway
from qbo_gateway.clock import ManualClock
from qbo_gateway.economy.freshness import DEFAULT_ENTITY_FRESH
from qbo_gateway.economy.probe_budget import monthly_budget
from qbo_gateway.settings import Settings, load_settings
from qbo_gateway.simulator import Simulator

HOUR = 3600.0
MONITOR_INTERVAL = 300.0  # QBO_MONITOR_INTERVAL_SECONDS' default
OFF = {
    "cache_write_through_seconds": 0,
    "cache_entity_fresh_seconds": ",".join(f"{name}=0" for name in DEFAULT_ENTITY_FRESH),
    "coreplus_guard": "off",
    "cache_cdc_interval_seconds": 0,
}
# Customers and invoices fresh for a minute: entity reads that CDC refresh can renew (the
# guard off, so that answers from the cache are only what freshness and CDC allow).
ENTITY_FRESH = {"cache_entity_fresh_seconds": "customer=60,invoice=60", "coreplus_guard": "off"}


@dataclass
class Tally:
    answers: int = 0
    from_cache: int = 0
    stale: int = 0
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    sim: Simulator
    gateway: Gateway
    clock: ManualClock
    url: str
    session: aiohttp.ClientSession
    realms: list[str]
    tally: Tally = field(default_factory=Tally)


async def start(realms: int, overrides: dict[str, Any], state: Path) -> tuple[Run, list[Any]]:
    clock = ManualClock()
    sim = Simulator(client_id="bench", client_secret="bench-secret", clock=clock.now)
    sim_runner = web.AppRunner(sim.make_app(), access_log=None)
    await sim_runner.setup()
    sim_site = web.TCPSite(sim_runner, "127.0.0.1", 0)
    await sim_site.start()
    sim_url = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"
    settings = load_settings(
        client_id="bench",
        client_secret="bench-secret",
        api_base_url=sim_url,
        token_url=f"{sim_url}/oauth2/v1/tokens/bearer",
        state_dir=state,
        redis_url=None,
        callers_file=None,
        realm_id=None,
        refresh_token=None,
        access_token=None,
        log_level="error",
        rate_limit_per_second=1000,
        rate_limit_per_minute=100000,
        **overrides,
    )
    gateway = await build_gateway(settings, clock=clock, registry=CollectorRegistry())
    ids: list[str] = []
    for n in range(realms):
        realm_id = str(9_200_000_000_000_000 + n)
        pair = sim.add_realm(realm_id)
        await gateway.tokens.import_tokens(
            realm_id, pair.refresh_token, pair.access_token, pair.access_expires_at, force=True
        )
        ids.append(realm_id)
    runner = web.AppRunner(gateway.proxy_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    run = Run(sim, gateway, clock, url, aiohttp.ClientSession(), ids)
    return run, [runner, sim_runner]


async def read(run: Run, realm: str, rest: str, truth: Any) -> None:
    """One read; `truth()` is what QBO holds now, to judge an answer from the cache."""
    async with run.session.get(f"{run.url}/v3/company/{realm}/{rest}") as resp:
        body = await resp.read()
        cache_status = resp.headers.get("Cache-Status", "")
    tally = run.tally
    tally.answers += 1
    if resp.status != 200:
        tally.errors += 1
        return
    if "; hit" in cache_status:
        tally.from_cache += 1
        if truth is not None and truth(json.loads(body)) is False:
            tally.stale += 1


async def write(run: Run, realm: str, rest: str, payload: dict[str, Any]) -> dict[str, Any]:
    url = f"{run.url}/v3/company/{realm}/{rest}"
    async with run.session.post(url, json=payload) as resp:
        body = await resp.json()
    run.tally.answers += 1
    if resp.status != 200:
        run.tally.errors += 1
        return {}
    entity: dict[str, Any] = body["Customer"]
    return entity


def same_customer(run: Run, realm: str, cid: str) -> Any:
    def check(answer: dict[str, Any]) -> bool:
        return bool(answer.get("Customer") == run.sim.entity(realm, "Customer", cid))

    return check


async def step(run: Run, rng: random.Random) -> str:
    """One piece of some service's traffic; returns its kind."""
    # A few busy realms and a long tail, as in a real fleet.
    realm = run.realms[min(len(run.realms) - 1, int(rng.paretovariate(1.2)) - 1)]
    roll = rng.random()
    hot = str(rng.randint(1, 5))
    if roll < 0.35:
        await read(run, realm, f"customer/{hot}", same_customer(run, realm, hot))
        return "customer_read"
    if roll < 0.50:
        await read(run, realm, f"invoice/{hot}", None)
        return "invoice_read"
    if roll < 0.65:
        made = await write(run, realm, "customer", {"DisplayName": f"New {rng.random()}"})
        if made:
            cid = made["Id"]
            await read(run, realm, f"customer/{cid}", same_customer(run, realm, cid))
        return "write_then_read"
    if roll < 0.90:
        what = rng.choice(["Account", "Term"])
        await read(run, realm, f"query?query=select%20*%20from%20{what}", None)
        return "reference_lookup"
    if roll < 0.98:
        await read(run, realm, "query?query=select%20*%20from%20Customer%20maxresults%2010", None)
        return "customer_query"
    # Someone edits a customer in QuickBooks itself: the gateway never sees it.
    run.sim.edit(realm, "Customer", hot, {"DisplayName": f"Edited {rng.random()}"})
    return "edit_in_quickbooks"


async def replay(overrides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qbogw-economy-") as state:
        run, runners = await start(args.realms, overrides, Path(state))
        try:
            rng = random.Random(args.seed)
            tick = HOUR / args.requests
            kinds: dict[str, int] = {}
            for _ in range(args.requests):
                kind = await step(run, rng)
                kinds[kind] = kinds.get(kind, 0) + 1
                run.clock.advance(tick)
            await run.gateway.meter.drained()
            month = run.gateway.meter.figures()
            cdc_calls = sum(1 for r in run.sim.api_requests if r.path.endswith("/cdc"))
            return {
                "coreplus_per_hour": month.used,
                "cdc_calls": cdc_calls,
                "answers": run.tally.answers,
                "from_cache": run.tally.from_cache,
                "stale_answers": run.tally.stale,
                "stale_rate": round(run.tally.stale / max(1, run.tally.answers), 5),
                "errors": run.tally.errors,
                "kinds": kinds,
            }
        finally:
            await run.session.close()
            await run.gateway.close()
            for runner in runners:
                await runner.cleanup()


def probe_spend(realms: int) -> dict[str, float]:
    """The monitor's metered reads a month at `realms` idle realms: the old policy (one
    companyinfo per idle realm and interval) against the probe budget at the defaults,
    which caps it whatever the fleet (bench/probe_month.py runs the month to measure it)."""
    per_hour = realms * HOUR / MONITOR_INTERVAL
    fields = Settings.model_fields
    budget = monthly_budget(
        float(fields["probe_budget_share"].default),
        int(fields["coreplus_monthly_limit"].default),
    )
    return {
        "realms": realms,
        "old_policy_per_hour": per_hour,
        "old_policy_per_month_30d": per_hour * 24 * 30,
        "budget_per_month": budget,
    }


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    off = await replay(OFF, args)
    # The economy without the guard (write-through, reference data), then with it: this
    # workload's projection passes the free tier's limit, so the guard's default (`stale`)
    # answers what is stored while the month is heading past the cap.
    spend_fewer = await replay({"coreplus_guard": "off"}, args)
    on = await replay({}, args)
    fresh_no_cdc = await replay({**ENTITY_FRESH, "cache_cdc_interval_seconds": 0}, args)
    fresh_cdc = await replay(ENTITY_FRESH, args)
    saving = 1 - on["coreplus_per_hour"] / max(1, off["coreplus_per_hour"])
    print(
        json.dumps(
            {
                "realms": args.realms,
                "requests": args.requests,
                "off": off,
                "on_without_guard": spend_fewer,
                "on": on,
                "saving": round(saving, 4),
                "entity_fresh_60s_without_cdc": fresh_no_cdc,
                "entity_fresh_60s_with_cdc": fresh_cdc,
                "saving_fresh_60s_with_cdc": round(
                    1 - fresh_cdc["coreplus_per_hour"] / max(1, off["coreplus_per_hour"]), 4
                ),
                "cdc_saving_over_fresh_60s": round(
                    1 - fresh_cdc["coreplus_per_hour"] / max(1, fresh_no_cdc["coreplus_per_hour"]),
                    4,
                ),
                "probe_spend_idle_fleet": probe_spend(10_000),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realms", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
