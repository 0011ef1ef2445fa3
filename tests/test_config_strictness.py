"""Settings that look fine but are not: check-config and start-up refuse them, as processes.

A misspelt variable, a secrets dir that is not there, limits that contradict each other, a
state dir the process cannot create a file in (tested as whatever user runs the tests,
root included: /proc refuses even root), and `connect` without the app's credentials.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.redis_server import free_port
from tests.test_cli import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"QBO_RATE_LIMT_PER_MINUTE": "5"},
            "QBO_RATE_LIMT_PER_MINUTE is not a setting; did you mean QBO_RATE_LIMIT_PER_MINUTE?",
        ),
        ({"qbo_admin_tokn": "x"}, "qbo_admin_tokn is not a setting; did you mean QBO_ADMIN_TOKEN?"),
        ({"QBO_SECRETS_DIR": "/nonexistent/secrets"}, "QBO_SECRETS_DIR=/nonexistent/secrets"),
        (
            {"QBO_RATE_LIMIT_PER_SECOND": "20", "QBO_RATE_LIMIT_PER_MINUTE": "15"},
            "QBO_RATE_LIMIT_PER_SECOND=20 is above QBO_RATE_LIMIT_PER_MINUTE=15",
        ),
        (
            {"QBO_BREAKER_RECOVERY_SECONDS": "4000"},
            "QBO_BREAKER_RECOVERY_SECONDS=4000 is above QBO_BREAKER_MAX_RECOVERY_SECONDS=1800",
        ),
        (
            {"QBO_ALERT_FAILURES_WARNING": "9"},
            "QBO_ALERT_FAILURES_WARNING is above QBO_ALERT_FAILURES_CRITICAL",
        ),
    ],
)
def test_refused_with_a_message_naming_the_setting(
    tmp_path: Path, command: str, env: dict[str, str], message: str
) -> None:
    result = run_cli(command, env={"QBO_STATE_DIR": str(tmp_path), **env}, timeout=20)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr


def test_the_service_clients_variables_are_not_misspellings(tmp_path: Path) -> None:
    env = {
        "QBO_STATE_DIR": str(tmp_path),
        "QBO_GATEWAY_URL": "http://127.0.0.1:8080",
        "QBO_GATEWAY_OPS_URL": "http://127.0.0.1:9090",
        "QBO_GATEWAY_KEY": "k",
        "QBO_SECRETS_DIR": str(tmp_path),
    }
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["/proc/qbo-gateway-state", "file"])
def test_a_state_dir_without_room_for_a_file_is_refused(tmp_path: Path, where: str) -> None:
    if where == "file":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        where = str(blocker / "state")
    checked = run_cli("check-config", env={"QBO_STATE_DIR": where})
    assert checked.returncode == 1
    assert f"QBO_STATE_DIR={where}" in checked.stderr
    served = run_cli("serve", env={"QBO_STATE_DIR": where, "QBO_OPS_PORT": str(free_port())})
    assert served.returncode == 2
    assert "state_dir_unusable" in served.stdout + served.stderr


def test_check_config_leaves_a_usable_state_dir_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "kept").write_text("x")
    env = {"QBO_STATE_DIR": str(tmp_path), "QBO_TOKEN_KEYS": Fernet.generate_key().decode()}
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "a file can be created there" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_connect_without_client_credentials_stops(tmp_path: Path) -> None:
    port = str(free_port())
    result = run_cli("connect", "--port", port, env={"QBO_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "QBO_CLIENT_ID" in result.stderr
    assert "http" not in result.stdout  # no authorize URL with an empty client_id
