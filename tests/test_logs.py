"""Redaction with the real logging configuration: no secret reaches a rendered line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from qbo_gateway.logs import (
    REDACTED,
    SecretRegistry,
    access_line,
    configure_logging,
    failure,
    register_secrets,
)
from qbo_gateway.simulator import FaultRule
from tests.harness import REALM, start_stack, stop_stack


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("debug", "json", stream=buffer)
    yield buffer
    configure_logging("warning", "console")


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_secret_fields_are_redacted(log_output: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info(
        "event",
        access_token="eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.abc",
        refresh_token="AB11712345678901234567890",
        client_secret="s3cr3t-value-123456",
        authorization="Bearer caller-key-0123456789",
        headers={"Cookie": "session=abcdef0123456789", "X-Other": "fine"},
        token_calls=3,
        realm_id=REALM,
    )
    (line,) = lines(log_output)
    for field in ("access_token", "refresh_token", "client_secret", "authorization"):
        assert line[field] == REDACTED
    assert line["headers"]["Cookie"] == REDACTED
    assert line["headers"]["X-Other"] == "fine"
    assert line["token_calls"] == 3
    assert line["realm_id"] == REALM


def test_registered_secrets_and_auth_headers_are_scrubbed_anywhere(
    log_output: io.StringIO,
) -> None:
    register_secrets(["admin-token-value-xyz-123"])
    log = structlog.get_logger("t")
    log.warning("oops", detail="admin token admin-token-value-xyz-123 leaked?")
    log.warning("oops", detail="sent Authorization: Bearer abcdefghijklmnop1234")
    logging.getLogger("aiohttp.client").error("stdlib: token=admin-token-value-xyz-123 failed")
    text = log_output.getvalue()
    assert "admin-token-value-xyz-123" not in text
    assert "abcdefghijklmnop1234" not in text
    assert text.count(REDACTED) == 3


def _fail_with_secret(secret: str) -> None:
    raise RuntimeError(f"refused Authorization: Bearer caller-key-9876543210 for {secret}")


def test_a_caught_exception_is_logged_with_message_and_traceback_redacted(
    log_output: io.StringIO,
) -> None:
    secret = "refresh-token-in-a-message-0123"
    register_secrets([secret])
    try:
        _fail_with_secret(secret)
    except RuntimeError as exc:
        structlog.get_logger("t").warning("step_failed", **failure(exc))
    try:
        _fail_with_secret(secret)
    except RuntimeError:
        # The stdlib bridge (aiohttp, redis) renders tracebacks through the same chain.
        logging.getLogger("aiohttp.server").exception("stdlib failure")
    first, second = lines(log_output)
    assert first["error"].startswith("RuntimeError: refused Authorization: Bearer ")
    for line in (first, second):
        assert "Traceback (most recent call last)" in line["exception"]
        assert "_fail_with_secret" in line["exception"]
    text = log_output.getvalue()
    assert secret not in text
    assert "caller-key-9876543210" not in text


def test_registry_forgets_old_tokens_but_keeps_static_secrets() -> None:
    registry = SecretRegistry(max_tokens=2)
    registry.add("static-secret-0123456789")
    registry.add_token("token-aaaaaaaaaaaa", "token-bbbbbbbbbbbb", "token-cccccccccccc")
    scrubbed = registry.scrub(
        "static-secret-0123456789 token-aaaaaaaaaaaa token-bbbbbbbbbbbb x=token-cccccccccccc"
    )
    assert scrubbed == f"{REDACTED} token-aaaaaaaaaaaa {REDACTED} x={REDACTED}"


async def test_no_token_in_any_line_of_a_gateway_run(
    aiohttp_server: Any, tmp_path: Path, log_output: io.StringIO
) -> None:
    s = await start_stack(aiohttp_server, tmp_path)
    try:
        s.sim.expire_access_token(REALM)  # forces a refresh and a replay
        caller_key = "caller-key-should-never-appear-42"
        headers = {"Authorization": f"Bearer {caller_key}"}
        async with s.session.get(s.api(f"companyinfo/{REALM}"), headers=headers) as resp:
            assert resp.status == 200
        s.sim.inject(FaultRule(target="token", kind="invalid_grant"))
        s.sim.expire_access_token(REALM)
        no_stale = {**headers, "Cache-Control": "no-cache"}
        async with s.session.get(s.api(f"companyinfo/{REALM}"), headers=no_stale) as resp:
            assert resp.status == 401
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-RECONNECT-REQUIRED"
        record = await s.gateway.store.get(REALM)
        assert record is not None
        text = log_output.getvalue()
        events = {line["event"] for line in lines(log_output)}
        assert {"request", "token_reconnect_required"} <= events
        for secret in (
            s.pair.access_token,
            s.pair.refresh_token,
            record.access_token,
            record.refresh_token,
            caller_key,
            "test-client-secret-value",
        ):
            assert secret not in text
    finally:
        await stop_stack(s)


async def test_summary_line_is_one_json_line_with_outside_text_scrubbed(
    aiohttp_server: Any, tmp_path: Path, log_output: io.StringIO
) -> None:
    register_secrets(["pasted-secret-value-0042"])
    s = await start_stack(aiohttp_server, tmp_path)
    try:
        headers = {"X-Request-Id": "req:pasted-secret-value-0042"}
        path = s.api(f"companyinfo/{REALM}") + "/pasted-secret-value-0042"
        async with s.session.get(path, headers=headers) as resp:
            await resp.read()
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 200
            request_id = resp.headers["X-Request-Id"]
    finally:
        await stop_stack(s)
    summaries = [line for line in lines(log_output) if line["event"] == "request"]
    assert len(summaries) == 2
    pasted, plain = summaries
    assert "pasted-secret-value-0042" not in json.dumps(pasted)
    assert REDACTED in pasted["request_id"] and REDACTED in pasted["path"]
    assert plain["request_id"] == request_id
    assert plain["realm_id"] == REALM and plain["status"] == 200
    assert plain["outcome"] == "upstream" and plain["intuit_tid"]
    assert plain["level"] == "info" and plain["logger"] == "qbo_gateway.access"
    assert plain["timestamp"].endswith("Z") and plain["duration_ms"] >= plain["upstream_ms"]


def test_summary_line_follows_the_level(log_output: io.StringIO) -> None:
    from qbo_gateway.logs import access_line

    configure_logging("warning", "json", stream=log_output)
    access_line({"event": "request", "request_id": "r1"}, untrusted=("request_id",))
    assert log_output.getvalue() == ""
    configure_logging("info", "json", stream=log_output)
    access_line({"event": "request", "request_id": "r2"}, untrusted=("request_id",))
    (line,) = lines(log_output)
    assert line["request_id"] == "r2"


def test_a_remembered_scrub_is_forgotten_when_a_secret_is_added() -> None:
    registry = SecretRegistry()
    path = "companyinfo/late-registered-token-0042"
    assert registry.scrub_recurring(path) == path
    registry.add_token("late-registered-token-0042")
    assert registry.scrub_recurring(path) == f"companyinfo/{REDACTED}"
    registry.add("later-static-secret-0042")
    assert registry.scrub_recurring("x/later-static-secret-0042") == f"x/{REDACTED}"


def test_summary_line_keeps_undecodable_header_text(log_output: io.StringIO) -> None:
    access_line(
        {"event": "request", "request_id": "r3", "intuit_tid": "tid-\udcff"},
        untrusted=("request_id",),
        recurring=("intuit_tid",),
    )
    (line,) = lines(log_output)
    assert line["request_id"] == "r3" and line["intuit_tid"].startswith("tid-")
