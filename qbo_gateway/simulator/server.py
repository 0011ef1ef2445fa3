"""`run()`: the `qbo-gateway simulator` command, one simulator served until a signal.

Benchmarks and manual testing need the simulator as its own process, as Intuit is in
production; this binds it, prints the address (and, only when asked, the seeded realm's
tokens as one JSON line for a script to read) and shuts down cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import asdict

from aiohttp import web

from qbo_gateway.simulator.core import SIM_CLIENT_ID, SIM_CLIENT_SECRET, Simulator
from qbo_gateway.simulator.records import TokenPair

DEFAULT_REALM_ID = "9130349226472226"


def run(
    host: str,
    port: int,
    *,
    realm_id: str | None = None,
    print_tokens: bool = False,
    client_id: str = SIM_CLIENT_ID,
    client_secret: str = SIM_CLIENT_SECRET,
) -> None:
    """Serve a simulator with one seeded realm until SIGINT/SIGTERM (blocking)."""
    sim = Simulator(client_id=client_id, client_secret=client_secret)
    pair = sim.add_realm(realm_id or DEFAULT_REALM_ID)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sim, host, port, realm_id or DEFAULT_REALM_ID, pair, print_tokens))


async def _serve(
    sim: Simulator, host: str, port: int, realm_id: str, pair: TokenPair, print_tokens: bool
) -> None:
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"qbo simulator listening on http://{host}:{bound} realm={realm_id}", flush=True)
    if print_tokens:
        line = {"realm_id": realm_id, **asdict(pair)}
        print(json.dumps(line), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
