"""Shared fixtures: test servers shaped like the daemon's listeners, private Redis topologies per
session, a fresh key prefix per test.

Each topology starts only when a test asks for it, so running one test file starts only
what that file uses. Behaviour suites parametrize over `redis_topologies.REDIS_TARGETS`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from qbo_gateway.edge.server import EDGE_LIMITS
from tests.harness import EdgeTestServer
from tests.redis_server import RedisServer
from tests.redis_topologies import RedisClusterSet, SentinelSet, tls_acl_server
from tests.tls_files import TlsFiles, make_tls_files


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[Any]:
    """pytest-aiohttp's factory, serving the gateway's listeners as the daemon does.

    An app that carries `EDGE_LIMITS` (the proxy and ops apps) gets the edge request
    handler (fault-shaped parser errors, header deadline, connection bound); others (the
    simulator) get aiohttp's plain server.
    """
    servers: list[BaseTestServer] = []

    async def go(
        app: web.Application, *, host: str = "127.0.0.1", port: int | None = None, **kw: Any
    ) -> BaseTestServer:
        kind = EdgeTestServer if EDGE_LIMITS in app else TestServer
        server = kind(app, host=host, port=port)
        await server.start_server(**kw)
        servers.append(server)
        return server

    yield go
    while servers:
        await servers.pop().close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    sentinels = SentinelSet()
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.cleanup()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def redis_tls_server(tls_files: TlsFiles) -> Iterator[RedisServer]:
    server = tls_acl_server(tls_files)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share one server without FLUSHDB races."""
    return f"t{uuid.uuid4().hex[:10]}"
