"""`run()`: the `qbo-gateway simulator` command, one simulator served until a signal.

Benchmarks and manual testing need the simulator as its own process, as Intuit is in
production; this binds it, prints the address, the settings a `qbo-gateway serve` needs to
use it as its Intuit (shell `export` lines: credentials and the four URLs; the seeded
realm's id and refresh token only when asked, or in the `--env-file`, written 0600), and,
when asked, the seeded realm's tokens as one JSON line for a script to read. It shuts down
cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
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
    env_file: str | None = None,
    url: str | None = None,
    client_id: str = SIM_CLIENT_ID,
    client_secret: str = SIM_CLIENT_SECRET,
) -> None:
    """Serve a simulator with one seeded realm until SIGINT/SIGTERM (blocking)."""
    sim = Simulator(client_id=client_id, client_secret=client_secret)
    pair = sim.add_realm(realm_id or DEFAULT_REALM_ID)
    out = _Output(realm_id or DEFAULT_REALM_ID, pair, print_tokens, env_file, url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sim, host, port, out))


def serve_settings(base: str, client_id: str, client_secret: str) -> list[tuple[str, str]]:
    """What `qbo-gateway serve` needs to take this simulator for Intuit."""
    return [
        ("QBO_CLIENT_ID", client_id),
        ("QBO_CLIENT_SECRET", client_secret),
        ("QBO_API_BASE_URL", base),
        ("QBO_TOKEN_URL", f"{base}/oauth2/v1/tokens/bearer"),
        ("QBO_AUTHORIZE_URL", f"{base}/connect/oauth2"),
        ("QBO_REVOKE_URL", f"{base}/v2/oauth2/tokens/revoke"),
    ]


class _Output:
    def __init__(
        self,
        realm_id: str,
        pair: TokenPair,
        print_tokens: bool,
        env_file: str | None,
        url: str | None,
    ) -> None:
        self.realm_id, self.pair = realm_id, pair
        self.print_tokens, self.env_file, self.url = print_tokens, env_file, url

    def announce(self, sim: Simulator, host: str, bound: int) -> None:
        listening = f"http://{host}:{bound}"
        # In a container the gateways reach it by another name than the one it binds.
        base = (self.url or listening).rstrip("/")
        print(f"# qbo simulator listening on {listening} realm={self.realm_id}", flush=True)
        if self.print_tokens:
            print(json.dumps({"realm_id": self.realm_id, **asdict(self.pair)}), flush=True)
        lines = serve_settings(base, sim.client_id, sim.client_secret)
        realm = [("QBO_REALM_ID", self.realm_id), ("QBO_REFRESH_TOKEN", self.pair.refresh_token)]
        print("# settings for `qbo-gateway serve` to use this simulator as Intuit:", flush=True)
        for name, value in lines + (realm if self.print_tokens else []):
            print(f"export {name}={shlex.quote(value)}", flush=True)
        if not self.print_tokens:
            print("# (--print-tokens or --env-file adds the seeded realm's tokens)", flush=True)
        if self.env_file:
            text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in lines + realm)
            fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            print(f"# written to {self.env_file}", flush=True)


async def _serve(sim: Simulator, host: str, port: int, out: _Output) -> None:
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
    out.announce(sim, host, bound)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
