"""`qbo-gateway check-config`: validate settings and files without side effects.

It binds no port and contacts no one (not Intuit, not Redis), so it can run in CI, in an
init container or on an operator's laptop against the production settings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qbo_gateway.economy.probe_budget import monthly_budget
from qbo_gateway.ops.read_guard import open_health_warning
from qbo_gateway.proxy.callers import CallersFileError, load_callers
from qbo_gateway.settings import Settings
from qbo_gateway.tokens.crypto import InvalidKeys, parse_keys


def state_dir_problem(path: Path) -> str | None:
    """Why this process cannot keep state in `path`, or None when it can.

    Permission bits say nothing for root, and a read-only mount refuses even root, so the
    test is to create (and remove) a file: in `path`, or in its nearest existing ancestor
    when `path` is still to be made.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"QBO_STATE_DIR={path}: no part of the path exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"QBO_STATE_DIR={path}: {probe} is not a directory"
    try:
        handle, name = tempfile.mkstemp(dir=probe, prefix=".qbo-gateway-write-test-")
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        return f"QBO_STATE_DIR={path}: cannot create a file in {probe} ({exc.strerror})"
    return None


def _probe_budget_note(settings: Settings) -> str:
    budget = monthly_budget(settings.probe_budget_share, settings.coreplus_monthly_limit)
    if budget <= 0:
        return (
            "warning: QBO_PROBE_BUDGET_SHARE gives the monitor no probes: idle realms go unchecked"
        )
    return (
        f"monitor probe budget: {budget} metered reads a month "
        f"({settings.probe_budget_share:g} of QBO_COREPLUS_MONTHLY_LIMIT)"
    )


def check_config(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, notes): problems name the setting at fault; notes say what was checked."""
    problems: list[str] = []
    notes: list[str] = [f"environment {settings.environment}, API base {settings.api_base}"]
    if settings.callers_file is not None:
        try:
            callers = load_callers(settings.callers_file)
            notes.append(f"QBO_CALLERS_FILE: {len(callers)} caller(s)")
        except CallersFileError as exc:
            problems.append(str(exc))
    else:
        notes.append(f"open mode (no QBO_CALLERS_FILE) on loopback {settings.proxy_host}")
    keys = settings.token_keys.get_secret_value() if settings.token_keys else ""
    if keys:
        try:
            notes.append(f"QBO_TOKEN_KEYS: {len(parse_keys(keys))} key(s)")
        except InvalidKeys as exc:
            problems.append(f"QBO_TOKEN_KEYS: {exc}")
    else:
        notes.append("QBO_TOKEN_KEYS unset: embedded mode keeps a generated key file")
    if settings.embedded:
        problem = state_dir_problem(settings.state_dir)
        if problem is None:
            notes.append(f"QBO_STATE_DIR {settings.state_dir}: a file can be created there")
        else:
            problems.append(problem)
    else:
        notes.append(f"Redis {settings.redis_mode} mode (not contacted by check-config)")
    if not settings.client_id or not settings.client_secret.get_secret_value():
        notes.append("QBO_CLIENT_ID/QBO_CLIENT_SECRET unset: token refresh will fail")
    notes.append(_probe_budget_note(settings))
    exposed = open_health_warning(settings)
    if exposed:
        notes.append(f"warning: {exposed}; set QBO_OPS_READ_TOKEN")
    if settings.proxy_port == settings.ops_port and settings.proxy_port != 0:
        problems.append("QBO_PROXY_PORT and QBO_OPS_PORT must differ")
    return problems, notes
