"""The gateway's own faults: one table of names, numeric codes and statuses, one body shape.

SDKs read the body's `code` as a number (python-quickbooks calls `int()` on it), so every
refusal must carry a decimal code; the `GW-` name travels in `X-QBO-Gateway-Error`. The
expected table is written out here, not read from the module, so a changed code fails.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from qbo_gateway import faults
from qbo_gateway.client import (
    CircuitOpen,
    GatewayFault,
    MethodNotAllowed,
    RateLimited,
    ReadBudget,
)
from qbo_gateway.client.answers import interpret
from qbo_gateway.client.errors import FAULT_CODE_NAMES, GW_CODES

TABLE: list[tuple[type[faults.GatewayError], str, str, int]] = [
    (faults.BadPath, "GW-BAD-PATH", "9400", 400),
    (faults.Unauthenticated, "GW-UNAUTHENTICATED", "9401", 401),
    (faults.Forbidden, "GW-FORBIDDEN", "9403", 403),
    (faults.UnknownRealm, "GW-UNKNOWN-REALM", "9404", 404),
    (faults.MethodNotAllowed, "GW-METHOD-NOT-ALLOWED", "9405", 405),
    (faults.ReconnectRequired, "GW-RECONNECT-REQUIRED", "9410", 401),
    (faults.PayloadTooLarge, "GW-PAYLOAD-TOO-LARGE", "9413", 413),
    (faults.RateLimited, "GW-RATE-LIMITED", "3001", 429),
    (faults.ReadBudget, "GW-READ-BUDGET", "3001", 429),
    (faults.CircuitOpen, "GW-CIRCUIT-OPEN", "9503", 503),
    (faults.UpstreamUnavailable, "GW-UPSTREAM-UNAVAILABLE", "9502", 502),
    (faults.UpstreamTimeout, "GW-UPSTREAM-TIMEOUT", "9504", 504),
]


def _body(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


@pytest.mark.parametrize(("cls", "name", "code", "status"), TABLE)
def test_each_refusal_renders_its_numeric_code(
    cls: type[faults.GatewayError], name: str, code: str, status: int
) -> None:
    response = faults.render_fault(cls("why", retry_after=2.2))
    doc = _body(response)
    assert response.status == status
    assert response.headers["X-QBO-Gateway-Error"] == name
    assert response.headers["Retry-After"] == "3"
    assert doc["Fault"]["type"] == "GatewayFault"
    (error,) = doc["Fault"]["Error"]
    assert error["code"] == code and int(error["code"]) > 0
    assert error["Detail"] == "why" and error["Message"] == cls.default_message
    assert doc["time"].endswith("Z")


def test_the_table_is_complete() -> None:
    assert {name for _, name, _, _ in TABLE} <= set(faults.FAULT_CODES)
    assert set(GW_CODES) == {name for _, name, _, _ in TABLE}
    # Every numeric code maps back to a name (3001 to the rate refusal, which it shares).
    assert {FAULT_CODE_NAMES[code] for _, _, code, _ in TABLE} == {
        name for _, name, _, _ in TABLE if name != "GW-READ-BUDGET"
    }


def test_gateway_fault_builds_the_same_shape_outside_an_exception() -> None:
    response = faults.gateway_fault(
        "GW-METHOD-NOT-ALLOWED", 405, "No", headers={"Allow": "GET, POST"}
    )
    doc = _body(response)
    assert response.headers["Allow"] == "GET, POST"
    assert response.headers["X-QBO-Gateway-Error"] == "GW-METHOD-NOT-ALLOWED"
    assert doc["Fault"]["Error"][0] == {"Message": "No", "Detail": "No", "code": "9405"}


@pytest.mark.parametrize(
    ("header", "code", "expected"),
    [
        ("GW-READ-BUDGET", "3001", ReadBudget),
        ("GW-METHOD-NOT-ALLOWED", "9405", MethodNotAllowed),
        (None, "9503", CircuitOpen),  # header dropped by something on the way
        (None, "3001", RateLimited),
        (None, "9999", GatewayFault),
    ],
)
def test_client_maps_from_header_or_numeric_code(
    header: str | None, code: str, expected: type[GatewayFault]
) -> None:
    body = {"Fault": {"Error": [{"Message": "m", "Detail": "d", "code": code}]}}
    body["Fault"]["type"] = "GatewayFault"  # type: ignore[index]
    headers = {"X-QBO-Gateway-Error": header} if header else {}
    with pytest.raises(GatewayFault) as caught:
        interpret(429, headers, json.dumps(body).encode())
    assert type(caught.value) is expected
    assert caught.value.fault_code == code
    assert caught.value.code == (header or FAULT_CODE_NAMES.get(code, "GW-UNKNOWN"))
