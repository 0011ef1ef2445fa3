"""Shared fixtures: a private redis-server per session, a fresh key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share one server without FLUSHDB races."""
    return f"t{uuid.uuid4().hex[:10]}"
