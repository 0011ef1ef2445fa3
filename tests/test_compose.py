"""compose.yaml, checked offline: the Compose Specification's schema, and that it wires what
it says (two gateways on one Redis and the simulator, Prometheus with the shipped rules and
Grafana with the shipped dashboard), so a rename elsewhere cannot silently break it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
CHECK = Path(sys.executable).parent / "check-jsonschema"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK.exists(), "check-jsonschema is in the dev extra: make install"
    return subprocess.run(
        [str(CHECK), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> Any:
    return load(COMPOSE)


def gateways(compose: Any) -> dict[str, Any]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "qbo-gateway serve" in " ".join(svc.get("entrypoint", []))
    }


def bind_mounts(service: Any) -> dict[str, str]:
    """container path -> host path, for ./relative bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source
    return out


def test_matches_the_compose_specification() -> None:
    done = validate(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    image: redis:7-alpine", "    imagee: redis:7-alpine"),
        ("      condition: service_healthy", "      condition: service_ready"),
        ("      interval: 2s", "      interval: [2s]"),
    ],
)
def test_the_schema_check_catches_a_broken_file(tmp_path: Path, old: str, new: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert validate(broken).returncode != 0


def test_two_gateways_share_redis_and_keys(compose: Any) -> None:
    replicas = gateways(compose)
    assert len(replicas) == 2
    envs = [svc["environment"] for svc in replicas.values()]
    assert all(env == envs[0] for env in envs)  # one configuration, two replicas
    env = envs[0]
    redis = urlsplit(env["QBO_REDIS_URL"])
    assert redis.hostname in compose["services"] and redis.port == 6379
    assert env["QBO_REPLICA_COUNT"] == str(len(replicas))
    assert env["QBO_TOKEN_KEYS"].startswith("${QBO_TOKEN_KEYS:?")  # required, never a default
    assert (ROOT / bind_mounts(replicas["gateway-1"])[env["QBO_CALLERS_FILE"]]).is_file()
    published = [svc["ports"] for svc in replicas.values()]
    assert published == [["8081:8080", "9091:9090"], ["8082:8080", "9092:9090"]]


def test_gateways_read_what_the_simulator_writes(compose: Any) -> None:
    sim = compose["services"]["simulator"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in sim["command"][1:])
    url = urlsplit(options["url"])
    assert url.hostname == "simulator" and str(url.port) == options["port"]
    written = Path(options["env-file"])
    volume = next(v for v in sim["volumes"] if v.endswith(str(written.parent)))
    for svc in gateways(compose).values():
        name = volume.split(":")[0]
        mount = next(v for v in svc["volumes"] if v.startswith(f"{name}:"))
        read_from = Path(mount.split(":")[1]) / written.name
        assert f". {read_from} &&" in svc["entrypoint"][-1]


def test_prometheus_scrapes_both_gateways_with_the_shipped_rules(compose: Any) -> None:
    prom = compose["services"]["prometheus"]
    mounts = bind_mounts(prom)
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config"))
    config = load(ROOT / mounts[config_path])
    rules_dir = Path(config_path).parent
    for rule_file in config["rule_files"]:
        assert mounts[str(rules_dir / rule_file)] == "./deploy/prometheus/qbo-gateway.rules.yaml"
    targets = [
        t for sc in config["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]
    ]
    assert sorted(targets) == sorted(f"{name}:9090" for name in gateways(compose))


def test_grafana_loads_the_shipped_dashboard_from_this_prometheus(compose: Any) -> None:
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    providers = next(v for k, v in mounts.items() if "provisioning/dashboards" in k)
    folder = load(ROOT / providers)["providers"][0]["options"]["path"]
    assert mounts[f"{folder}/qbo-gateway.json"] == "./deploy/grafana/qbo-gateway.json"
    sources = next(v for k, v in mounts.items() if "provisioning/datasources" in k)
    url = urlsplit(load(ROOT / sources)["datasources"][0]["url"])
    prom = compose["services"]["prometheus"]
    assert url.hostname == "prometheus"
    assert f"--web.listen-address=:{url.port}" in prom["command"]


def test_every_bind_mount_exists(compose: Any) -> None:
    for svc in compose["services"].values():
        for source in bind_mounts(svc).values():
            assert (ROOT / source).exists(), source


def test_yaml_is_clean() -> None:
    yamllint = shutil.which("yamllint") or str(Path(sys.executable).parent / "yamllint")
    config = ROOT / "deploy" / ".yamllint.yaml"
    done = subprocess.run(
        [yamllint, "--strict", "-c", str(config), str(COMPOSE), str(ROOT / "deploy" / "compose")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout
