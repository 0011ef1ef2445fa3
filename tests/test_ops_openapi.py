"""The ops listener against its OpenAPI description: schemathesis on a live gateway.

The gateway (with an admin token and a read token) and the simulator run on real sockets;
schemathesis reads the description the listener serves and sends generated requests to
every operation. It must find no 500 and no answer outside the description (status,
content type, headers, body schema), and 405 with `Allow` for methods a route lacks.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qbo_gateway.ops.openapi import openapi_text
from tests.harness import start_stack, stop_stack

ADMIN = "admin-token-for-tests"
READ = "ops-read-token-for-schemathesis"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
    ]
)


def test_description_is_openapi_3_1_and_names_every_route() -> None:
    doc = yaml.safe_load(openapi_text())
    assert doc["openapi"].startswith("3.1")
    for path in (
        "/livez",
        "/readyz",
        "/metrics",
        "/health/summary",
        "/health/business/{realm_id}",
        "/integrations/qbo/health/alerts",
        "/admin/realms/{realm_id}/refresh",
        "/oauth/connect",
    ):
        assert path in doc["paths"], path


@pytest.mark.slow
async def test_schemathesis_finds_no_500_and_no_answer_outside_the_description(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    s = await start_stack(aiohttp_server, tmp_path, ops_read_token=READ)
    try:
        async with s.session.get(f"{s.ops_url}/openapi.json") as resp:
            assert resp.status == 200
            assert (await resp.json())["openapi"].startswith("3.1")
        report = tmp_path / "schemathesis.json"
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{s.ops_url}/openapi.json",
            "--url",
            s.ops_url,
            "--checks",
            CHECKS,
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-redirects",
            "0",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--workers",
            "2",
            "-H",
            f"Authorization: Bearer {ADMIN}",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
        text = out.decode(errors="replace")
        print(text[-3000:])
        assert proc.returncode == 0, text[-6000:]
    finally:
        await stop_stack(s)
    # Every operation of the description was exercised
    doc = yaml.safe_load(openapi_text())
    operations = sum(
        1 for item in doc["paths"].values() for method in item if method in ("get", "post")
    )
    # (schemathesis leaves out the operation serving the description it reads)
    assert re.search(rf"Tested: {operations - 1}\b", text), text[-2000:]
