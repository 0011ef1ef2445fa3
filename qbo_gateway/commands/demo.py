"""`qbo-gateway demo`: the bundled simulator and the gateway, wired together, in one process.

A newcomer runs one command and gets a working gateway in front of a simulated QuickBooks
company, plus curl lines that work exactly as printed. It runs embedded (SQLite tokens,
in-process state) unless QBO_REDIS_URL is set, in which case it uses that Redis (with
QBO_TOKEN_KEYS), so other `serve` replicas can share it. It says where its state lives, sets
an admin token when QBO_ADMIN_TOKEN is unset (and prints it: the fault step leaves a circuit
open, and closing it is an admin action), and honours the other QBO_ settings.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from qbo_gateway.app import Gateway
from qbo_gateway.commands.serve import serve
from qbo_gateway.logs import configure_logging
from qbo_gateway.settings import Settings, SettingsError, default_state_dir, load_settings
from qbo_gateway.simulator import Simulator
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.crypto import KEY_FILE_NAME
from qbo_gateway.tokens.store_sqlite import DB_FILE_NAME

DEMO_REALM = "9130349226472226"
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - the simulator's own demo credential
_JSON = "-H 'Content-Type: application/json'"


def _state_dir() -> Path:
    if os.environ.get("QBO_STATE_DIR"):
        return Path(os.environ["QBO_STATE_DIR"])
    try:
        base = default_state_dir() / "demo"
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        return Path(tempfile.mkdtemp(prefix="qbo-gateway-demo-"))


def where_state_lives(settings: Settings) -> str:
    if settings.embedded:
        return (
            f"embedded, in {settings.state_dir} ({DB_FILE_NAME}, and {KEY_FILE_NAME} unless "
            "QBO_TOKEN_KEYS is set); delete the directory to start afresh"
        )
    url = urlsplit(settings.redis_url or "")
    where = f"{url.scheme}://{url.hostname}:{url.port or 6379}{url.path}"
    return f"Redis at {where} ({settings.redis_mode}, keys prefixed {settings.redis_prefix})"


def curl_lines(proxy: str, ops: str, simulator: str, realm: str) -> list[str]:
    api = f"{proxy}/v3/company/{realm}"
    query = "select%20*%20from%20Customer%20MAXRESULTS%203"
    return [
        f"curl -s {api}/companyinfo/{realm}",
        f"curl -s '{api}/query?query={query}'",
        f'curl -s -X POST {api}/customer {_JSON} -d \'{{"DisplayName":"Demo Customer"}}\'',
        f"curl -s {ops}/health/summary",
        f"curl -s '{ops}/readyz?verbose'",
        f"curl -s {ops}/metrics | grep qbo_gateway_requests_total",
        "# make QBO fail, then read again: the cached read comes back marked degraded",
        f"curl -s -X POST {simulator}/_sim/faults {_JSON} "
        '-d \'{"target":"api","kind":"server_error","times":20}\'',
        f"curl -si '{api}/query?query={query}' | grep -i -E 'HTTP/|degraded|age|cache-status'",
    ]


def circuit_lines(
    proxy: str, ops: str, simulator: str, realm: str, settings: Settings, admin: str
) -> list[str]:
    """The rest of the fault step: open the circuit, see it refuse, close it."""
    write = f'-X POST {proxy}/v3/company/{realm}/customer {_JSON} -d \'{{"DisplayName":"x"}}\''
    auth = f"-H 'Authorization: Bearer {admin}'"
    threshold = settings.breaker_failure_threshold
    return [
        f"# writes are never answered from the cache; {threshold} failures in a row "
        "(QBO_BREAKER_FAILURE_THRESHOLD) open the realm's circuit:",
        f"for i in $(seq {threshold}); do curl -s -o /dev/null -w '%{{http_code}} ' {write}; "
        "done; echo",
        f"curl -si {write} | grep -i -E 'HTTP/|x-qbo-gateway-error|retry-after'",
        f"curl -s -X DELETE {simulator}/_sim/faults",
        "# QBO answers again, but the open circuit keeps refusing (503 GW-CIRCUIT-OPEN, code 9503)",
        f"# until it recovers by itself: after QBO_BREAKER_RECOVERY_SECONDS="
        f"{settings.breaker_recovery_seconds:g} one request goes through",
        "# as a probe, and its success closes the circuit. To close it now (admin token):",
        f"curl -s -X POST {ops}/admin/realms/{realm}/reset-circuit {auth}",
        f"curl -s {ops}/health/business/{realm} {auth}",
    ]


async def run_demo(*, simulator_port: int = 0) -> int:
    admin_token = os.environ.get("QBO_ADMIN_TOKEN") or secrets.token_urlsafe(18)
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
            admin_token=admin_token,
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
        print(f"  simulated QBO: {sim_url}", flush=True)
        print(f"  state: {where_state_lives(settings)}", flush=True)
        print(f"  admin token: {admin_token}   (QBO_ADMIN_TOKEN, for admin actions)", flush=True)
        print("  try:", flush=True)
        lines = curl_lines(proxy_url, ops_url, sim_url, DEMO_REALM)
        lines += circuit_lines(proxy_url, ops_url, sim_url, DEMO_REALM, settings, admin_token)
        for line in lines:
            print(f"    {line}", flush=True)
        print(flush=True)

    announcer = asyncio.create_task(announce())
    try:
        return await serve(settings, ready_event=started, after_build=seed)
    except StateUnavailable as exc:
        print(f"qbo-gateway demo: the state backend is unreachable ({exc})")
        return 1
    finally:
        announcer.cancel()
        await sim_runner.cleanup()
