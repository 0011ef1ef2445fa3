"""Fault rules: what to break, for which requests, how many times.

Every misbehaviour the simulator can show (throttles, 5xx, faults inside a 200, dropped
connections, dead refresh tokens) is a `FaultRule` that tests inject; this module validates
rules and decides which of them a request consumes. How a rule is answered is `injected.py`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from qbo_gateway.simulator.records import JSONDict

API_FAULT_KINDS = frozenset(
    {
        "throttle",
        "server_error",
        "server_error_html",
        "gateway_timeout",
        "unauthorized",
        "forbidden",
        "fault_in_200",
        "delay",
        "disconnect",
        "broken_body",
        "slow_body",
        "leaky_headers",
    }
)
# Answered by streaming a body (see injected.streamed_fault), not with one response.
STREAMED_KINDS = frozenset({"broken_body", "slow_body"})
TOKEN_FAULT_KINDS = frozenset(
    {"invalid_grant", "invalid_client", "server_error", "delay", "disconnect"}
)


@dataclass
class FaultRule:
    """What to break, for which requests, how many times.

    `path` is a regex searched in the part of the path after `/v3/company/{realm}/` (for
    token rules, in the whole path). `realm_id` on a token rule matches the realm of the
    presented refresh token. `times=None` applies until cleared. A "delay" rule adds `delay`
    seconds and lets later rules still apply; any other kind answers the request.
    A "disconnect" rule with `after=True` processes the request first (the write happens,
    the refresh rotates) and then drops the connection: the response is lost.
    "broken_body" answers 200 with the start of a chunked JSON body, then drops the
    connection (no terminating chunk); "slow_body" answers 200 at once and sends five
    chunks, each after `delay` seconds; "leaky_headers" answers 200 with credential headers
    (`Authorization`, `Proxy-Authorization`, `Set-Cookie`) a proxy must not pass on.
    """

    kind: str
    target: str = "api"
    method: str | None = None
    realm_id: str | None = None
    path: str | None = None
    times: int | None = None
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    xml: bool = False
    after: bool = False

    def __post_init__(self) -> None:
        kinds = {"api": API_FAULT_KINDS, "token": TOKEN_FAULT_KINDS}.get(self.target)
        if kinds is None:
            raise ValueError(f"target must be 'api' or 'token', not {self.target!r}")
        if self.kind not in kinds:
            raise ValueError(f"unknown {self.target} fault kind {self.kind!r}")
        if self.path is not None:
            re.compile(self.path)
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError("a fault rule is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault rule needs a kind")
        return cls(**data)

    def to_json(self) -> JSONDict:
        return asdict(self)

    def matches(self, method: str, realm_id: str | None, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.realm_id is not None and self.realm_id != realm_id:
            return False
        return self.path is None or re.search(self.path, path) is not None


def take_faults(
    rules: list[FaultRule], target: str, method: str, realm_id: str | None, path: str
) -> tuple[float, FaultRule | None]:
    """Consume matching rules: the summed delays and the first answering rule."""
    delay = 0.0
    for rule in list(rules):
        if rule.target != target or not rule.matches(method, realm_id, path):
            continue
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                rules.remove(rule)
        if rule.kind == "delay":
            delay += rule.delay
            continue
        return delay, rule
    return delay, None
