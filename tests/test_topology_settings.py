"""The Redis topology settings: each bad combination is refused naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from qbo_gateway.settings import SettingsError, load_settings
from qbo_gateway.state.topology import RedisTopology
from tests.test_cli import run_cli

KEYS = Fernet.generate_key().decode()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"redis_mode": "sentinel"}, "QBO_REDIS_SENTINELS is required"),
        (
            {"redis_mode": "sentinel", "redis_sentinels": "10.0.0.1:26379,nohost"},
            "QBO_REDIS_SENTINELS",
        ),
        ({"redis_mode": "sentinel", "redis_sentinels": "a:0"}, "QBO_REDIS_SENTINELS"),
        ({"redis_url": "redis://r:6379/0", "redis_sentinels": "a:1"}, "QBO_REDIS_MODE=sentinel"),
        ({"redis_mode": "cluster"}, "QBO_REDIS_URL"),
        ({"redis_mode": "cluster", "redis_url": "redis://r:6379/2"}, "QBO_REDIS_URL"),
        ({"redis_mode": "ring"}, "QBO_REDIS_MODE"),
        ({"redis_url": "redis://r:6379/0", "redis_ca_file": "CA"}, "QBO_REDIS_CA_FILE"),
        ({"redis_url": "rediss://r:6379/0", "redis_ca_file": "/nonexistent"}, "QBO_REDIS_CA_FILE"),
        ({"redis_mode": "sentinel", "redis_sentinels": "a:1"}, "QBO_TOKEN_KEYS"),
    ],
)
def test_bad_topology_settings_name_the_setting(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    values = {k: (str(ca) if v == "CA" else v) for k, v in env.items()}
    keys = {} if name == "QBO_TOKEN_KEYS" else {"token_keys": KEYS}
    with pytest.raises(SettingsError, match=name):
        load_settings(state_dir=tmp_path, **keys, **values)


def test_each_topology_is_described(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----")
    base = {"state_dir": tmp_path, "token_keys": KEYS}
    assert load_settings(state_dir=tmp_path).redis_topology is None  # embedded
    sentinel = load_settings(
        **base,
        redis_mode="Sentinel",
        redis_sentinels="10.0.0.1:26379, [::1]:26380",
        redis_url="rediss://gw:pw@ignored/2",
        redis_ca_file=str(ca),
    )
    assert not sentinel.embedded
    assert sentinel.redis_topology == RedisTopology(
        mode="sentinel",
        url="rediss://gw:pw@ignored/2",
        sentinels=(("10.0.0.1", 26379), ("::1", 26380)),
        sentinel_master="mymaster",
        ca_file=str(ca),
    )
    assert sentinel.redis_topology is not None and sentinel.redis_topology.tls
    cluster = load_settings(**base, redis_mode="cluster", redis_url="redis://node-0:6379")
    assert cluster.redis_topology == RedisTopology(mode="cluster", url="redis://node-0:6379")


def test_check_config_names_a_bad_sentinel_list(tmp_path: Path) -> None:
    env = {
        "QBO_STATE_DIR": str(tmp_path),
        "QBO_TOKEN_KEYS": KEYS,
        "QBO_REDIS_MODE": "sentinel",
        "QBO_REDIS_SENTINELS": "sentinel-0:26379,sentinel-1",
    }
    result = run_cli("check-config", env=env)
    assert result.returncode != 0
    assert "QBO_REDIS_SENTINELS" in result.stderr and "sentinel-1" in result.stderr
    env["QBO_REDIS_SENTINELS"] = "sentinel-0:26379,sentinel-1:26379"
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "sentinel mode" in result.stdout + result.stderr
