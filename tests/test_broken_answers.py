"""QBO's answer cut short, slow, or carrying credentials: what the caller gets.

A body QBO breaks off must never look complete to the caller (its connection is aborted,
no terminating chunk) and is never cached; the request deadline covers the body, so a
slowly streamed answer is cut at the deadline and its concurrency slot freed then; the
credential headers of an answer stay at the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qbo_gateway.simulator import FaultRule
from tests.harness import REALM, Stack, start_stack, stop_stack

QUERY = "query?query=select%20*%20from%20Customer"


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(aiohttp_server, tmp_path, request_timeout_seconds=1.0)
    yield s
    await stop_stack(s)


async def read_cut_short(stack: Stack, url: str) -> int:
    """The status of an answer whose body must end in an aborted connection."""
    async with stack.session.get(url) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        return resp.status


async def test_a_body_qbo_breaks_off_aborts_the_callers_connection(stack: Stack) -> None:
    stack.sim.inject(FaultRule(kind="broken_body", path="query", times=1))
    assert await read_cut_short(stack, stack.api(QUERY)) == 200
    # Nothing of it was kept: with QBO failing next, there is no stored read to serve.
    stack.sim.inject(FaultRule(kind="server_error", path="query"))
    async with stack.session.get(stack.api(QUERY)) as resp:
        assert resp.status == 500
        assert "X-QBO-Gateway-Degraded" not in resp.headers
    # A whole answer is kept and serves the next failure.
    stack.sim.faults.clear()
    async with stack.session.get(stack.api(QUERY)) as resp:
        assert resp.status == 200
        await resp.read()
    stack.sim.inject(FaultRule(kind="server_error", path="query"))
    async with stack.session.get(stack.api(QUERY)) as resp:
        assert resp.status == 200
        assert resp.headers["X-QBO-Gateway-Degraded"] == "upstream-error"


async def test_the_deadline_cuts_a_slow_body_and_frees_its_slot(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    # No admission wait: the second read is refused at once while the slot is held, instead
    # of racing the first read's deadline for it (which a loaded machine can lose).
    s = await start_stack(
        aiohttp_server,
        tmp_path,
        request_timeout_seconds=1.0,
        concurrency_limit=1,
        admission_wait_seconds=0,
    )
    try:
        # Five chunks 0.3 s apart: 1.5 s of body against a 1 s deadline.
        s.sim.inject(FaultRule(kind="slow_body", path="query", delay=0.3, times=1))
        first = asyncio.create_task(read_cut_short(s, s.api(QUERY)))
        while not s.sim.in_flight:
            await asyncio.sleep(0.01)
        # While the body streams, the realm's one slot is held: another read is refused.
        async with s.session.get(s.api(QUERY)) as resp:
            assert resp.status == 429
        assert await first == 200  # the deadline cut the body: the connection was aborted
        timeouts = s.metric(
            "qbo_gateway_requests_total",
            {"method": "GET", "outcome": "error", "code": "GW-UPSTREAM-TIMEOUT"},
        )
        assert timeouts == 1
        # The cut freed the slot.
        async with s.session.get(s.api(QUERY)) as resp:
            assert resp.status == 200
        assert s.sim.max_in_flight_by_realm[REALM] == 1
    finally:
        await stop_stack(s)


async def test_the_deadline_before_any_body_byte_is_a_504_fault(stack: Stack) -> None:
    # Headers at once, the first chunk only after 1.5 s: nothing was sent to the caller yet.
    stack.sim.inject(FaultRule(kind="slow_body", path="query", delay=1.5, times=1))
    async with stack.session.get(stack.api(QUERY)) as resp:
        assert resp.status == 504
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-UPSTREAM-TIMEOUT"
        assert (await resp.json())["Fault"]["Error"][0]["code"] == "9504"


async def test_credential_headers_in_qbos_answer_stay_at_the_gateway(stack: Stack) -> None:
    stack.sim.inject(FaultRule(kind="leaky_headers", path="query", times=1))
    async with stack.session.get(stack.api(QUERY)) as resp:
        assert resp.status == 200
        for name in ("Authorization", "Proxy-Authorization", "Set-Cookie"):
            assert name not in resp.headers
        assert b"leaked" not in await resp.read()
