"""The Sentinel and cluster+TLS overlays build into settings the gateway accepts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from qbo_gateway.settings import load_settings
from tests.test_deploy import DEPLOY, _build, _by_kind


def _settings_of(overlay: str) -> tuple[dict[str, str], dict[str, bytes]]:
    objs = _build(DEPLOY / f"kubernetes/overlays/{overlay}")
    (config,) = _by_kind(objs, "ConfigMap")
    (secret,) = _by_kind(objs, "Secret")
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    return dict(config["data"]), files


@pytest.mark.parametrize(
    ("overlay", "mode", "scheme"),
    [
        ("example-app-sentinel", "sentinel", "redis"),
        ("example-app-cluster-tls", "cluster", "rediss"),
    ],
)
def test_topology_overlay_settings_load(
    overlay: str, mode: str, scheme: str, tmp_path: Path
) -> None:
    env, files = _settings_of(overlay)
    assert env["QBO_REDIS_MODE"] == mode
    assert files["qbo_redis_url"].decode().startswith(f"{scheme}://")
    values = {k.removeprefix("QBO_").lower(): v for k, v in env.items()}
    ca = env.get("QBO_REDIS_CA_FILE")
    if ca is not None:
        # The CA travels in the secret, mounted at QBO_SECRETS_DIR.
        assert Path(ca).parent == Path(env["QBO_SECRETS_DIR"])
        assert b"BEGIN CERTIFICATE" in files[Path(ca).name]
        local = tmp_path / Path(ca).name
        local.write_bytes(files[Path(ca).name])
        values["redis_ca_file"] = str(local)
    values.pop("secrets_dir")
    values["callers_file"] = None
    values["proxy_host"] = "127.0.0.1"
    settings = load_settings(
        **values,
        redis_url=files["qbo_redis_url"].decode().strip(),
        token_keys=files["qbo_token_keys"].decode().strip(),
    )
    topology = settings.redis_topology
    assert topology is not None and topology.mode == mode
    if mode == "sentinel":
        assert len(topology.sentinels) == 3 and topology.sentinel_master == "mymaster"
    else:
        assert topology.tls and topology.ca_file == values["redis_ca_file"]
    assert settings.replica_count == 3
