"""Keeps the alert rules and the Grafana dashboard honest about the gateway's real metrics.

A PromQL expression that names a metric the gateway does not export (a typo, a renamed
counter, `_total` forgotten) parses fine and silently never fires or draws. So this module
reads every expression in deploy/prometheus and deploy/grafana with promql-parser (the
Prometheus grammar, compiled: no hand-written PromQL reading here), pulls out the metric names,
label names and fixed label values it selects, and compares them with what
`qbo_gateway.metrics.Metrics` really registers. It also keeps prometheusrule.yaml equal to
the plain rule file promtool tests, and has promtool parse every dashboard expression.

Run from the repository root: `.venv/bin/python deploy/check_observability.py [--promtool P]`.
Exit status 1 and one line per problem when anything is off.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import promql_parser
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path starts at deploy/: the package must come from this checkout.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qbo_gateway.metrics import Metrics  # noqa: E402 - needs the path set just above
from qbo_gateway.admission.records import BreakerState  # noqa: E402 - as above

RULES = ROOT / "deploy/prometheus/qbo-gateway.rules.yaml"
RULE_TESTS = ROOT / "deploy/prometheus/qbo-gateway.rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy/prometheus/prometheusrule.yaml"
DASHBOARD = ROOT / "deploy/grafana/qbo-gateway.json"

# Labels Prometheus adds to every scraped series (PodMonitor target labels), not the gateway.
TARGET_LABELS = frozenset(
    {"__name__", "namespace", "pod", "container", "job", "instance", "endpoint", "service"}
)

# Label values fixed by the code (the README lists the metrics and their labels); a matcher
# asking for any other value selects nothing, forever. Labels not listed here are not value-checked.
KNOWN_VALUES: dict[str, frozenset[str]] = {
    "outcome": frozenset({"upstream", "cache_hit", "stale", "rejected", "error"}),
    "to": frozenset(state.value for state in BreakerState),
    "status": frozenset({"healthy", "degraded", "unhealthy", "needs_reconnect"}),
    "severity": frozenset({"warning", "critical"}),
}
# Per metric, where one label name means different things on different metrics.
KNOWN_VALUES_BY_METRIC: dict[tuple[str, str], frozenset[str]] = {
    ("qbo_gateway_token_refreshes_total", "result"): frozenset(
        {"success", "failure", "invalid_grant", "invalid_client", "skipped"}
    ),
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
def exported_metrics(registry: CollectorRegistry | None = None) -> dict[str, frozenset[str]]:
    """Every sample name the gateway can expose, with the label names it carries.

    Built from a real `Metrics` on a fresh registry. Labelled metrics expose no sample until
    a label set is used, so names come from each family's type, as prometheus_client writes
    them, and label names from the metric objects themselves.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    labels_by_family: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # Private attributes: the only place prometheus_client keeps the label names.
            labels_by_family[value._name] = tuple(value._labelnames)
    exported: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        labels = frozenset(labels_by_family.get(family.name, ()))
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            exported[family.name + suffix] = labels | extra
        for sample in family.samples:  # what a scrape shows right now, to be sure
            exported.setdefault(sample.name, labels | frozenset(sample.labels))
    return exported


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


@dataclass
class ParsedExpr:
    selectors: list[Selector]
    grouping_labels: set[str]


# promql-parser's MatchOp members are not hashable: look them up by name.
_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def parse_promql(expr: str) -> ParsedExpr:
    """Metric selectors and grouping labels of a PromQL expression, from promql-parser's AST.

    Raises ValueError when the expression is not PromQL.
    """
    selectors: list[Selector] = []
    grouping: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [
                (m.name, _OPS[str(m.op).rpartition(".")[2]], m.value)
                for m in node.matchers.matchers
            ]
            names = [value for label, _op, value in matchers if label == "__name__"]
            selectors.append(Selector(node.name or (names[0] if names else None), matchers))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return ParsedExpr(selectors, grouping)


def _plain_alternatives(value: str) -> list[str] | None:
    """`a|b|c` -> [a, b, c] when the regex is only alternatives of plain words."""
    parts = value.split("|")
    return parts if all(re.fullmatch(r"[A-Za-z0-9_\-]+", p) for p in parts) else None


def check_expr(
    where: str, expr: str, exported: dict[str, frozenset[str]], *, grafana: bool = False
) -> list[str]:
    """Problems with one expression: unknown metric, label or fixed label value."""
    if grafana:
        expr = grafana_to_promql(expr)
    try:
        parsed = parse_promql(expr)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    problems: list[str] = []
    known_labels = set(TARGET_LABELS)
    if not parsed.selectors:
        problems.append(f"{where}: selects no metric: {expr.strip()!r}")
    for sel in parsed.selectors:
        if sel.metric is None:
            problems.append(f"{where}: a selector without a metric name")
            continue
        if sel.metric not in exported:
            problems.append(f"{where}: metric {sel.metric!r} is not exported by the gateway")
            continue
        labels = exported[sel.metric] | TARGET_LABELS
        known_labels |= labels
        for label, op, value in sel.matchers:
            if label not in labels:
                problems.append(f"{where}: {sel.metric} has no label {label!r}")
                continue
            allowed = KNOWN_VALUES_BY_METRIC.get((sel.metric, label), KNOWN_VALUES.get(label))
            if allowed is None or op not in ("=", "=~"):
                continue
            values = [value] if op == "=" else _plain_alternatives(value)
            for v in values or []:
                if v not in allowed:
                    problems.append(
                        f"{where}: {sel.metric}{{{label}={v!r}}} never exists "
                        f"(values: {', '.join(sorted(allowed))})"
                    )
    for label in sorted(parsed.grouping_labels - known_labels):
        problems.append(f"{where}: groups by {label!r}, which no selected metric carries")
    return problems


_GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables so the expression is plain PromQL."""
    for var, value in _GRAFANA_DURATIONS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def rule_exprs(path: Path = RULES) -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            yield f"{path.name}:{name}", rule["expr"]


def rule_test_exprs(path: Path = RULE_TESTS) -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    for test in doc["tests"]:
        for series in test.get("input_series", []):
            yield f"{path.name}:{test['name']}:input", series["series"]
        for case in test.get("promql_expr_test", []):
            yield f"{path.name}:{test['name']}:expr", case["expr"]


def dashboard_exprs(path: Path = DASHBOARD) -> Iterator[tuple[str, str]]:
    """Every PromQL expression in the dashboard: panels, rows, variables, annotations."""
    dash = json.loads(path.read_text())

    def panels(items: Iterable[dict[str, object]]) -> Iterator[dict[str, object]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # type: ignore[arg-type]

    for panel in panels(dash.get("panels", [])):
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            yield f"{path.name}:panel {panel.get('title')!r}", target["expr"]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and isinstance(text, str):
            inner = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", text)
            yield f"{path.name}:variable {var['name']!r}", inner.group(1) if inner else text
    for ann in dash.get("annotations", {}).get("list", []):
        if "expr" in ann:
            yield f"{path.name}:annotation {ann.get('name')!r}", ann["expr"]


def check_metric_names(
    *,
    rules: Path = RULES,
    rule_tests: Path = RULE_TESTS,
    dashboard: Path = DASHBOARD,
) -> list[str]:
    exported = exported_metrics()
    problems: list[str] = []
    for where, expr in [*rule_exprs(rules), *rule_test_exprs(rule_tests)]:
        problems += check_expr(where, expr, exported)
    for where, expr in dashboard_exprs(dashboard):
        problems += check_expr(where, expr, exported, grafana=True)
    return problems


_PROMETHEUS_RULE_HEAD = """\
# GENERATED from qbo-gateway.rules.yaml by deploy/check_observability.py --write: edit that
# file (promtool tests it), then regenerate. The Prometheus Operator loads this one.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: qbo-gateway
  labels:
    app.kubernetes.io/name: qbo-gateway
spec:
"""


def render_prometheus_rule(rules_text: str) -> str:
    """The PrometheusRule carrying the rule file's groups (comments kept, indented)."""
    body = rules_text[rules_text.index("groups:") :]
    return _PROMETHEUS_RULE_HEAD + "".join(
        f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True)
    )


def check_prometheus_rule_sync(rules: Path = RULES, rendered: Path = PROMETHEUS_RULE) -> list[str]:
    want = render_prometheus_rule(rules.read_text())
    if not rendered.exists() or rendered.read_text() != want:
        return [f"{rendered.name} is out of date: run deploy/check_observability.py --write"]
    return []


def check_dashboard_parses(promtool: str, dashboard: Path = DASHBOARD) -> list[str]:
    """promtool parses every dashboard expression, each as a recording rule."""
    exprs = list(dashboard_exprs(dashboard))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{n}", "expr": grafana_to_promql(expr)}
                    for n, (_where, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        yaml.safe_dump(rules, tmp)
        tmp.flush()
        done = subprocess.run(  # noqa: S603 - a fixed tool on a file we wrote
            [promtool, "check", "rules", tmp.name], capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        return [f"{dashboard.name}: promtool cannot parse an expression:\n{done.stderr}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool", help="promtool binary: also parse dashboard expressions")
    parser.add_argument("--write", action="store_true", help="regenerate prometheusrule.yaml")
    args = parser.parse_args(argv)
    if args.write:
        PROMETHEUS_RULE.write_text(render_prometheus_rule(RULES.read_text()))
    problems = check_metric_names() + check_prometheus_rule_sync()
    if args.promtool:
        problems += check_dashboard_parses(args.promtool)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("observability: rules, rule tests and dashboard name only exported metrics")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
