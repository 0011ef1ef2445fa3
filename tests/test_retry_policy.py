"""The retry policy: what is repeated, when, and how much, with injected randomness."""

from __future__ import annotations

import pytest

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.admission.retry import Failure, RetryBudget, RetryPolicy
from qbo_gateway.proxy.paths import Target, is_read

REALM = "123"
QUERY = "/v3/company/123/query"
INVOICE = "/v3/company/123/invoice"


def policy(**kwargs: object) -> RetryPolicy:
    kwargs.setdefault("random", lambda: 1.0)
    kwargs.setdefault("budget", RetryBudget(initial=100, cap=100))
    return RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "read"),
    [
        ("GET", INVOICE + "/1", True),
        ("post", QUERY, True),
        ("POST", QUERY + "/", True),
        ("POST", INVOICE, False),
        ("POST", "/v3/company/123/batch", False),
        ("DELETE", INVOICE, False),
        ("PUT", QUERY, False),
        ("get", "reports/ProfitAndLoss", True),
        ("POST", "Query/", True),
        ("POST", "invoice?operation=delete", False),
    ],
)
def test_what_counts_as_a_read(method: str, path: str, read: bool) -> None:
    assert is_read(method, path) is read


@pytest.mark.parametrize("status", [502, 503, 504])
def test_reads_retry_gateway_errors_with_growing_full_jitter(status: int) -> None:
    plan = policy(base_delay=0.5, max_delay=1.5).start(REALM, read=True)
    first = plan.after_failure(Failure.STATUS, status=status, remaining=30)
    assert first.retry and first.delay == pytest.approx(0.5) and first.why == f"status_{status}"
    second = plan.after_failure(Failure.STATUS, status=status, remaining=30)
    assert second.retry and second.delay == pytest.approx(1.0)
    third = plan.after_failure(Failure.STATUS, status=status, remaining=30)
    assert not third.retry and third.why == "attempts"


def test_full_jitter_uses_the_random_source() -> None:
    plan = policy(random=lambda: 0.25, base_delay=1.0).start(REALM, read=True)
    assert plan.after_failure(Failure.CONNECTION, remaining=30).delay == pytest.approx(0.25)


def test_backoff_is_capped() -> None:
    p = policy(base_delay=1.0, max_delay=3.0)
    assert p.backoff(10) == pytest.approx(3.0)


def test_a_500_is_retried_once_only() -> None:
    plan = policy(max_attempts=5).start(REALM, read=True)
    assert plan.after_failure(Failure.STATUS, status=500, remaining=30).retry
    again = plan.after_failure(Failure.STATUS, status=500, remaining=30)
    assert not again.retry
    assert plan.after_failure(Failure.STATUS, status=503, remaining=30).retry


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 501])
def test_other_statuses_are_never_retried(status: int) -> None:
    plan = policy().start(REALM, read=True)
    decision = plan.after_failure(Failure.STATUS, status=status, remaining=30)
    assert not decision.retry and decision.why == "not_retryable"


def test_writes_retry_only_when_qbo_never_received_them() -> None:
    p = policy()
    refused = p.start(REALM, read=False).after_failure(Failure.REFUSED, remaining=30)
    assert refused.retry and refused.why == "connect_refused"
    for failure, status in [(Failure.CONNECTION, None), (Failure.STATUS, 503)]:
        decision = p.start(REALM, read=False).after_failure(failure, status=status, remaining=30)
        assert not decision.retry and decision.why == "unsafe_write"


def test_retry_after_is_honoured() -> None:
    plan = policy(base_delay=0.1).start(REALM, read=True)
    decision = plan.after_failure(Failure.STATUS, status=503, retry_after=7, remaining=30)
    assert decision.retry and decision.delay == 7


def test_never_past_the_deadline() -> None:
    plan = policy().start(REALM, read=True)
    decision = plan.after_failure(Failure.STATUS, status=503, retry_after=7, remaining=6.9)
    assert not decision.retry and decision.why == "deadline"


@pytest.mark.parametrize("state", [BreakerState.OPEN, BreakerState.HALF_OPEN])
def test_no_retries_unless_the_circuit_is_closed(state: BreakerState) -> None:
    plan = policy().start(REALM, read=True)
    decision = plan.after_failure(Failure.CONNECTION, remaining=30, breaker=state)
    assert not decision.retry and decision.why == "circuit"


def test_budget_keeps_retries_near_a_fifth_of_requests() -> None:
    p = RetryPolicy(random=lambda: 0.0, budget=RetryBudget(ratio=0.2, cap=10, initial=3))
    retries = 0
    for _ in range(1000):  # a long outage: every attempt fails
        plan = p.start(REALM, read=True)
        while plan.after_failure(Failure.STATUS, status=503, remaining=30).retry:
            retries += 1
    assert 200 <= retries <= 203
    # Budgets are per realm: another realm still holds its initial three retries.
    assert [p.budget.try_spend("other-realm") for _ in range(4)] == [True, True, True, False]
    denied = p.start(REALM, read=True)
    p.budget.try_spend(REALM)  # empty what the new request deposited
    assert denied.after_failure(Failure.CONNECTION, remaining=30).why == "budget"


def test_requestid_added_to_writes_once() -> None:
    target = Target(REALM, "invoice", "minorversion=75")
    ids = iter(["first", "second"])
    tagged = target.with_requestid(lambda: next(ids))
    assert tagged.query == "minorversion=75&requestid=first"
    assert tagged.with_requestid(lambda: next(ids)) == tagged
    assert Target(REALM, "bill", "").with_requestid(lambda: "x").query == "requestid=x"


def test_requestid_from_the_caller_is_kept() -> None:
    mine = Target(REALM, "invoice", "RequestId=abc")
    assert mine.with_requestid(lambda: "new") == mine
