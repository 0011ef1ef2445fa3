"""Settings that each look valid but are wrong: a misspelt name, or limits that contradict.

A misspelt variable (`QBO_RATE_LIMT_PER_MINUTE=5`) is otherwise silently ignored and the
default applies, which an operator finds out only when QBO throttles; so any `QBO_` name
that is not a setting stops start-up, naming the closest real one. Limits that contradict
each other (a per-second limit above the per-minute one) would make one of them a lie.
`settings.load_settings` applies both, so `serve`, `demo` and `check-config` refuse alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qbo_gateway.settings import Settings

# The service client's variables (qbo_gateway.client) may share the gateway's environment.
CLIENT_VARIABLES = frozenset({"QBO_GATEWAY_URL", "QBO_GATEWAY_OPS_URL", "QBO_GATEWAY_KEY"})


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """One message per `QBO_` variable that is no setting, with the closest real name."""
    names = sorted({name.upper() for name in known} | CLIENT_VARIABLES)
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("QBO_") or upper in names:
            continue
        close = difflib.get_close_matches(upper, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"{variable} is not a setting{hint}")
    return problems


def limit_problems(s: Settings) -> list[str]:
    """Pairs of settings whose values contradict each other."""
    pairs = [
        (
            s.rate_limit_per_second > s.rate_limit_per_minute,
            f"QBO_RATE_LIMIT_PER_SECOND={s.rate_limit_per_second} is above "
            f"QBO_RATE_LIMIT_PER_MINUTE={s.rate_limit_per_minute}",
        ),
        (
            s.breaker_recovery_seconds > s.breaker_max_recovery_seconds,
            f"QBO_BREAKER_RECOVERY_SECONDS={s.breaker_recovery_seconds:g} is above "
            f"QBO_BREAKER_MAX_RECOVERY_SECONDS={s.breaker_max_recovery_seconds:g}",
        ),
        (
            s.alert_slow_warning_seconds > s.alert_slow_critical_seconds,
            "QBO_ALERT_SLOW_WARNING_SECONDS is above QBO_ALERT_SLOW_CRITICAL_SECONDS",
        ),
        (
            s.alert_failures_warning > s.alert_failures_critical,
            "QBO_ALERT_FAILURES_WARNING is above QBO_ALERT_FAILURES_CRITICAL",
        ),
        (
            s.alert_refresh_expiry_warning_days < s.alert_refresh_expiry_critical_days,
            "QBO_ALERT_REFRESH_EXPIRY_WARNING_DAYS is below "
            "QBO_ALERT_REFRESH_EXPIRY_CRITICAL_DAYS (the warning must come first)",
        ),
    ]
    return [message for wrong, message in pairs if wrong]
