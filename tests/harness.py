"""A whole gateway in front of the simulator, both on real loopback sockets.

`start_stack` is what most end-to-end tests use: it starts the simulator, builds the
gateway through the real composition root (`app.build_gateway`) with settings pointing at
the simulator, seeds a realm, and serves the proxy and ops applications.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from prometheus_client import CollectorRegistry

from qbo_gateway.app import Gateway, build_gateway
from qbo_gateway.clock import Clock, SystemClock
from qbo_gateway.edge.server import EdgeRunner
from qbo_gateway.settings import load_settings
from qbo_gateway.simulator import Simulator, TokenPair

REALM = "9130349226472226"
OTHER_REALM = "4620816365178923"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret-value"


class EdgeTestServer(TestServer):
    """A test server that runs an app the way `qbo-gateway serve` does (`EdgeRunner`)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return EdgeRunner(self.app, **kwargs)


@dataclass
class Stack:
    sim: Simulator
    sim_server: TestServer
    gateway: Gateway
    proxy_server: TestServer
    ops_server: TestServer
    session: ClientSession
    pair: TokenPair
    registry: CollectorRegistry

    @property
    def proxy_url(self) -> str:
        return str(self.proxy_server.make_url("")).rstrip("/")

    @property
    def ops_url(self) -> str:
        return str(self.ops_server.make_url("")).rstrip("/")

    @property
    def sim_url(self) -> str:
        return str(self.sim_server.make_url("")).rstrip("/")

    def api(self, rest: str, realm: str = REALM) -> str:
        return f"{self.proxy_url}/v3/company/{realm}/{rest}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def settings_for(sim_url: str, state_dir: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "api_base_url": sim_url,
        "token_url": f"{sim_url}/oauth2/v1/tokens/bearer",
        "authorize_url": f"{sim_url}/connect/oauth2",
        "revoke_url": f"{sim_url}/v2/oauth2/tokens/revoke",
        "state_dir": state_dir,
        "token_keys": "",
        "realm_id": None,
        "refresh_token": None,
        "access_token": None,
        "callers_file": None,
        "redis_url": None,
        "proxy_host": "127.0.0.1",
        "admin_token": "admin-token-for-tests",
    }
    values.update(overrides)
    return load_settings(**values)


async def start_sim(aiohttp_server: Any, **sim_kwargs: Any) -> tuple[Simulator, TestServer]:
    sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **sim_kwargs)
    server = await aiohttp_server(sim.make_app())
    return sim, server


async def start_gateway(
    aiohttp_server: Any,
    sim: Simulator,
    sim_server: TestServer,
    state_dir: Path,
    *,
    clock: Clock | None = None,
    seed: TokenPair | None = None,
    realm: str = REALM,
    redis_prefix: str | None = None,
    redis_time: bool | None = None,
    **overrides: Any,
) -> tuple[Gateway, TestServer, TestServer, CollectorRegistry]:
    registry = CollectorRegistry()
    sim_url = str(sim_server.make_url("")).rstrip("/")
    settings = settings_for(sim_url, state_dir, **overrides)
    gateway = await build_gateway(
        settings,
        clock=clock or SystemClock(),
        registry=registry,
        redis_prefix=redis_prefix,
        redis_time=redis_time,
    )
    if seed is not None:
        await gateway.tokens.import_tokens(
            realm, seed.refresh_token, seed.access_token, seed.access_expires_at, force=True
        )
    proxy_server = await aiohttp_server(gateway.proxy_app)
    ops_server = await aiohttp_server(gateway.ops_app)
    return gateway, proxy_server, ops_server, registry


async def start_stack(
    aiohttp_server: Any,
    tmp_path: Path,
    *,
    sim_kwargs: dict[str, Any] | None = None,
    clock: Clock | None = None,
    seed: bool = True,
    **overrides: Any,
) -> Stack:
    sim, sim_server = await start_sim(aiohttp_server, **(sim_kwargs or {}))
    pair = sim.add_realm(REALM)
    gateway, proxy_server, ops_server, registry = await start_gateway(
        aiohttp_server,
        sim,
        sim_server,
        tmp_path / "state",
        clock=clock,
        seed=pair if seed else None,
        **overrides,
    )
    session = ClientSession()
    return Stack(sim, sim_server, gateway, proxy_server, ops_server, session, pair, registry)


async def stop_stack(stack: Stack) -> None:
    await stack.session.close()
    await stack.gateway.close()
