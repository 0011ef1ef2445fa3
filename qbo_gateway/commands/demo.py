"""`qbo-gateway demo`: the bundled simulator and the gateway, wired together, in one process.

A newcomer runs one command and gets a working gateway in embedded mode (SQLite tokens,
in-process state) in front of a simulated QuickBooks company, plus curl lines that work
exactly as printed. It honours QBO_PROXY_PORT, QBO_OPS_PORT and QBO_STATE_DIR.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from aiohttp import web

from qbo_gateway.app import Gateway
from qbo_gateway.commands.serve import serve
from qbo_gateway.logs import configure_logging
from qbo_gateway.settings import SettingsError, default_state_dir, load_settings
from qbo_gateway.simulator import Simulator

DEMO_REALM = "9130349226472226"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - the simulator's own demo credential


def _state_dir() -> Path:
    if os.environ.get("QBO_STATE_DIR"):
        return Path(os.environ["QBO_STATE_DIR"])
    try:
        base = default_state_dir() / "demo"
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        return Path(tempfile.mkdtemp(prefix="qbo-gateway-demo-"))


def curl_lines(proxy: str, ops: str, simulator: str, realm: str) -> list[str]:
    api = f"{proxy}/v3/company/{realm}"
    query = "select%20*%20from%20Customer%20MAXRESULTS%203"
    return [
        f"curl -s {api}/companyinfo/{realm}",
        f"curl -s '{api}/query?query={query}'",
        f"curl -s -X POST {api}/customer -H 'Content-Type: application/json' "
        '-d \'{"DisplayName":"Demo Customer"}\'',
        f"curl -s {ops}/health/summary",
        f"curl -s '{ops}/readyz?verbose'",
        f"curl -s {ops}/metrics | grep qbo_gateway_requests_total",
        "# make QBO fail, then read again: the cached read comes back marked degraded",
        f"curl -s -X POST {simulator}/_sim/faults -H 'Content-Type: application/json' "
        '-d \'{"target":"api","kind":"server_error","times":20}\'',
        f"curl -si '{api}/query?query={query}' | grep -i -E 'HTTP/|degraded|age|cache-status'",
        f"curl -s -X DELETE {simulator}/_sim/faults",
    ]


async def run_demo(*, simulator_port: int = 0) -> int:
    sim = Simulator(client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    pair = sim.add_realm(DEMO_REALM)
    sim_runner = web.AppRunner(sim.make_app(), access_log=None)
    await sim_runner.setup()
    site = web.TCPSite(sim_runner, "127.0.0.1", simulator_port)
    await site.start()
    sim_url = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"
    try:
        settings = load_settings(
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            api_base_url=sim_url,
            token_url=f"{sim_url}/oauth2/v1/tokens/bearer",
            authorize_url=f"{sim_url}/connect/oauth2",
            revoke_url=f"{sim_url}/v2/oauth2/tokens/revoke",
            state_dir=_state_dir(),
            redis_url=None,
            log_format=os.environ.get("QBO_LOG_FORMAT", "console"),
        )
    except SettingsError as exc:
        print(f"qbo-gateway demo: invalid settings: {exc}")
        await sim_runner.cleanup()
        return 2
    configure_logging(settings.log_level, settings.log_format)

    async def seed(gw: Gateway) -> None:
        # Each demo run starts a new simulator, so its freshly issued tokens replace any
        # left in the demo's state dir by an earlier run.
        await gw.tokens.import_tokens(
            DEMO_REALM,
            pair.refresh_token,
            pair.access_token,
            pair.access_expires_at,
            refresh_expires_at=pair.refresh_expires_at,
            force=True,
        )

    ops_host = "127.0.0.1" if settings.ops_host in ("0.0.0.0", "::") else settings.ops_host  # noqa: S104
    proxy_url = f"http://{settings.proxy_host}:{settings.proxy_port}"
    ops_url = f"http://{ops_host}:{settings.ops_port}"
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        print("\nqbo-gateway demo is running (Ctrl-C to stop)", flush=True)
        print(f"  simulated QBO: {sim_url}   state: {settings.state_dir}\n  try:", flush=True)
        for line in curl_lines(proxy_url, ops_url, sim_url, DEMO_REALM):
            print(f"    {line}", flush=True)
        print(flush=True)

    announcer = asyncio.create_task(announce())
    try:
        return await serve(settings, ready_event=started, after_build=seed)
    finally:
        announcer.cancel()
        await sim_runner.cleanup()
