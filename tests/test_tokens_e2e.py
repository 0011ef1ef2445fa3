"""Token refresh through whole gateways: exactly one token call, however many callers.

The realm's access token is inside the refresh margin; many concurrent requests (and, in
Redis mode, three gateways sharing one Redis) must cause exactly one call to the token
endpoint, and every request must reach QBO with the new token.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from qbo_gateway.app import Gateway
from tests.harness import REALM, start_gateway, start_sim
from tests.redis_server import RedisServer

COMPANY = f"companyinfo/{REALM}"


async def seed_inside_margin(gw: Gateway, refresh: str, access: str) -> None:
    # Valid for two more minutes: inside the 900 s margin, so the next use refreshes.
    await gw.tokens.import_tokens(REALM, refresh, access, time.time() + 120, force=True)


async def fire(urls: list[str], count: int) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            url = f"{urls[i % len(urls)]}/v3/company/{REALM}/{COMPANY}"
            async with session.get(url) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_fifty_concurrent_requests_one_token_call(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    pair = sim.add_realm(REALM)
    gw, proxy, _ops, registry = await start_gateway(
        aiohttp_server, sim, sim_server, tmp_path, rate_limit_per_second=100
    )
    try:
        await seed_inside_margin(gw, pair.refresh_token, pair.access_token)
        statuses = await fire([str(proxy.make_url("")).rstrip("/")], 50)
        assert statuses == [200] * 50
        assert sim.token_calls == 1
        record = await gw.store.get(REALM)
        assert record is not None and record.access_token != pair.access_token
        used = {r.headers["Authorization"] for r in sim.api_requests}
        assert used == {f"Bearer {record.access_token}"}
        labels = {"result": "success"}
        assert registry.get_sample_value("qbo_gateway_token_refreshes_total", labels) == 1
    finally:
        await gw.close()


async def test_three_replicas_on_redis_one_token_call(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    pair = sim.add_realm(REALM)
    keys = Fernet.generate_key().decode()
    gateways: list[Gateway] = []
    urls: list[str] = []
    try:
        for i in range(3):
            gw, proxy, _ops, _reg = await start_gateway(
                aiohttp_server,
                sim,
                sim_server,
                tmp_path / f"r{i}",
                redis_url=redis_server.url,
                token_keys=keys,
                redis_prefix=redis_prefix,
                # QBO's own limits would turn most of this burst away; this is about tokens.
                rate_limit_per_second=1000,
                rate_limit_per_minute=100000,
                concurrency_limit=500,
            )
            gateways.append(gw)
            urls.append(str(proxy.make_url("")).rstrip("/"))
        await seed_inside_margin(gateways[0], pair.refresh_token, pair.access_token)
        statuses = await fire(urls, 150)
        assert statuses == [200] * 150
        assert sim.token_calls == 1
        # Every replica serves the one new token; the rotated refresh token is stored once.
        record = await gateways[2].store.get(REALM)
        assert record is not None and record.version == 2
        used = {r.headers["Authorization"] for r in sim.api_requests}
        assert used == {f"Bearer {record.access_token}"}
    finally:
        for gw in gateways:
            await gw.close()
