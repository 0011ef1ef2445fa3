"""How QBO's answers are read: a Fault in any shape, and never a success body misread."""

from __future__ import annotations

import json

import pytest

from qbo_gateway.faults import FaultClass, classify, parse_fault
from qbo_gateway.simulator.answers import fault_body

PAGE = json.dumps(
    {
        "QueryResponse": {
            "Customer": [
                {"Id": str(i), "DefaultTaxCodeRef": {"value": "2"}, "Notes": 'said "Fault": no'}
                for i in range(40)
            ]
        },
        "time": "2026-01-01T00:00:00.000-08:00",
    }
).encode()


def _fault(code: str, *, key: str = "Fault", time_first: bool = False) -> bytes:
    inner = {"Error": [{"Message": "m", "Detail": "d", "code": code}], "type": "ValidationFault"}
    doc = {"time": "2026-01-01T00:00:00.000-08:00", key: inner}
    if not time_first:
        doc = {key: inner, "time": doc["time"]}
    return json.dumps(doc).encode()


def test_a_success_page_mentioning_fault_is_not_a_fault() -> None:
    assert parse_fault(PAGE, success=True) is None
    assert classify(200, PAGE) is FaultClass.OK


@pytest.mark.parametrize("key", ["Fault", "fault", "FAULT"])
@pytest.mark.parametrize("time_first", [False, True])
def test_a_fault_inside_a_200_is_found_in_either_casing(key: str, time_first: bool) -> None:
    body = _fault("6000", key=key, time_first=time_first)
    found = parse_fault(body, success=True)
    assert found is not None and found.codes == ("6000",) and found.messages == ("m",)
    assert classify(200, body) is FaultClass.CALLER_ERROR
    assert classify(200, b"  \n" + _fault("6002", key=key)) is FaultClass.UPSTREAM_FAILURE


def test_the_simulators_fault_in_200_is_found() -> None:
    body = json.dumps(fault_body("3001", "Throttled", "d", 0.0)).encode()
    assert classify(200, body) is FaultClass.THROTTLE


def test_a_batch_items_fault_is_not_the_answers() -> None:
    body = json.dumps({"BatchItemResponse": [{"bId": "1", **json.loads(_fault("610"))}]}).encode()
    assert parse_fault(body, success=True) is None
    assert classify(200, body) is FaultClass.OK


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "610", FaultClass.CALLER_ERROR),
        (403, "3100", FaultClass.AUTHORIZATION),
        (401, "3200", FaultClass.AUTHENTICATION),
        (400, "3001", FaultClass.THROTTLE),
        (500, "10000", FaultClass.UPSTREAM_FAILURE),
        (400, "6002", FaultClass.UPSTREAM_FAILURE),
    ],
)
def test_error_bodies_are_read_wherever_the_fault_sits(
    status: int, code: str, expected: FaultClass
) -> None:
    assert classify(status, _fault(code, time_first=True)) is expected
    padded = b'{"time": "t", "extra": {"deep": [1, 2, 3]}, ' + _fault(code)[1:]
    found = parse_fault(padded)
    assert found is not None and found.codes == (code,)


def test_xml_faults_in_either_status() -> None:
    body = (
        b'<?xml version="1.0"?><IntuitResponse><Fault type="ServiceFault">'
        b'<Error code="3001"><Message>Throttled</Message></Error></Fault></IntuitResponse>'
    )
    assert classify(200, body) is FaultClass.THROTTLE
    assert classify(429, body) is FaultClass.THROTTLE
    found = parse_fault(body)
    assert found is not None and found.messages == ("Throttled",)
