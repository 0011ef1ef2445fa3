#!/usr/bin/env bash
# Build the container image without a Docker engine, then run it as the README documents and
# check what a cluster would rely on. Uses Debian's podman, buildah, mmdebstrap and runc:
#
#   1. base     a bookworm root made by mmdebstrap from Debian's packages (deploy/image/base.sh),
#               imported as localhost/qbo-base:bookworm
#   2. build    the project's own Dockerfile on that base (--format docker keeps HEALTHCHECK);
#               pip reaches the package index with the host's CA bundle, mounted read-only
#               for the build only, never copied into a layer
#   3. checks   demo and serve (against the simulator, itself run from the image) with a
#               read-only root filesystem and state on a volume: /readyz, a proxied read,
#               uid 10001, nothing writable but the state path, HEALTHCHECK healthy, SIGTERM
#               with a request in flight drains it and exits 0 in time, no secret or token in
#               the image's layers or history
#
# Usage: deploy/image-check.sh            (IMAGE_CHECK_FRESH=1 rebuilds the base even when
#                                          one made from the same recipe is present)
# Exits 0 with a "skipped" line when podman or mmdebstrap is missing (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

for tool in podman mmdebstrap curl python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "image-check skipped: $tool is not installed (apt-get install podman buildah" \
            "mmdebstrap runc uidmap; .ci/run does it)"
        exit 0
    fi
done

export CONTAINERS_CONF=$ROOT/deploy/image/containers.conf
BASE=localhost/qbo-base:bookworm
IMAGE=${IMAGE:-localhost/qbo-gateway:check}
WORK=$(mktemp -d /tmp/qbo-image-check.XXXXXX)
NAME=qbo-image-check-$$
# Host networking keeps the check free of CNI setup; every port is a free loopback port.
RUN=(podman run --network host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
failed=()
declare -A took

cleanup() {
    podman rm -f -i "$NAME-demo" "$NAME-sim" "$NAME-serve" >/dev/null 2>&1 || true
    podman volume rm -f "$NAME-demo" "$NAME-serve" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
check() {  # check NAME CMD...: run, remember a failure, carry on
    local name=$1
    shift
    if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; failed+=("$name"); fi
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() {  # wait_http URL SECONDS: until the URL answers 200
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# --- 1. base ---------------------------------------------------------------------------------
t=$(now)
recipe=$(sha256sum deploy/image/base.sh | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "qbo.base-recipe"}}' "$BASE" 2>/dev/null || true)
if [ "${IMAGE_CHECK_FRESH:-0}" = 1 ] || [ "$have" != "$recipe" ]; then
    deploy/image/base.sh "$WORK/base.tar"
    podman import --change "LABEL qbo.base-recipe=$recipe" "$WORK/base.tar" "$BASE" >/dev/null
    rm -f "$WORK/base.tar"
else
    echo "base: $BASE from this recipe ($recipe) is present; IMAGE_CHECK_FRESH=1 rebuilds it"
fi
took[base]=$(since "$t")

# --- 2. build --------------------------------------------------------------------------------
t=$(now)
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
printf '[global]\ncert = /run/secrets/ca.crt\n' >"$WORK/pip.conf"
podman build --quiet --format docker --build-arg PYTHON_IMAGE="$BASE" \
    --secret id=ca,src="$ca" --secret id=pip_conf,src="$WORK/pip.conf" \
    --tag "$IMAGE" . >/dev/null
took[build]=$(since "$t")
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE")
echo "image: $IMAGE $((size / 1000000)) MB (base $((base_size / 1000000)) MB, the rest is the venv)"

# --- 3. checks -------------------------------------------------------------------------------
t=$(now)
check "image runs as uid 10001" test "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001"
check "image keeps its HEALTHCHECK" podman image inspect --format '{{.Config.Healthcheck.Test}}' "$IMAGE"
check "no pip or setuptools in the runtime" \
    "${RUN[@]}" --rm --entrypoint sh "$IMAGE" -c '! ls /opt/qbo-gateway/bin/pip* /opt/qbo-gateway/lib/python3*/site-packages/setuptools >/dev/null 2>&1'

# demo: read-only root, state on a volume, the simulator inside the same process.
proxy=$(free_port)
ops=$(free_port)
simport=$(free_port)
podman volume create "$NAME-demo" >/dev/null
"${RUN[@]}" -d --name "$NAME-demo" --read-only --read-only-tmpfs=false \
    -v "$NAME-demo:/var/lib/qbo-gateway" -e QBO_PROXY_PORT="$proxy" -e QBO_OPS_PORT="$ops" \
    -e QBO_SHUTDOWN_TIMEOUT_SECONDS=10 -e QBO_LOG_FORMAT=json \
    "$IMAGE" demo --simulator-port "$simport" >/dev/null 2>"$WORK/demo-run.err"
realm=9130349226472226
check "demo: /readyz answers 200" wait_http "http://127.0.0.1:$ops/readyz" 60
check "demo: a proxied read answers 200" \
    curl -fsS -o /dev/null "http://127.0.0.1:$proxy/v3/company/$realm/companyinfo/$realm"
check "demo: the process runs as uid 10001" \
    test "$(podman exec "$NAME-demo" sh -c "awk '/^Uid:/{print \$2}' /proc/1/status")" = 10001
# Walk the whole root as the gateway's user: the state volume must be the only writable path.
writable=$(podman exec "$NAME-demo" python -c '
import os
found = set()
for top in ("/",):
    for path, dirs, _ in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(path, d) not in ("/proc", "/sys", "/dev")]
        if os.access(path, os.W_OK):
            found.add(path)
roots = sorted(p for p in found if not any(p.startswith(q + "/") for q in found))
print(" ".join(roots))')
echo "writable paths: $writable"
check "demo: nothing but the state path is writable" test "$writable" = /var/lib/qbo-gateway
check "demo: the HEALTHCHECK command reports healthy" podman healthcheck run "$NAME-demo"

# SIGTERM with a request in flight: QBO answers in 3 s, the signal comes 1 s in.
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$simport/_sim/latency" \
    -H 'Content-Type: application/json' -d '{"api": 3}'
curl -sS -o /dev/null -w '%{http_code}' \
    "http://127.0.0.1:$proxy/v3/company/$realm/query?query=select%20*%20from%20Customer" \
    >"$WORK/inflight.code" 2>/dev/null &
inflight=$!
sleep 1
stop_t=$(now)
podman kill --signal TERM "$NAME-demo" >/dev/null
code=$(podman wait "$NAME-demo")
stopped_in=$(since "$stop_t")
wait "$inflight" || true
echo "SIGTERM: exit code $code after ${stopped_in}s; the request in flight answered $(cat "$WORK/inflight.code")"
check "demo: the request in flight was answered 200" test "$(cat "$WORK/inflight.code")" = 200
check "demo: SIGTERM exits 0" test "$code" = 0
check "demo: SIGTERM exits within QBO_SHUTDOWN_TIMEOUT_SECONDS (10)" \
    python3 -c "import sys; sys.exit(float(sys.argv[1]) >= 10)" "$stopped_in"
podman logs "$NAME-demo" >"$WORK/demo.log" 2>&1 || true

# serve: the simulator from the image, then the gateway with credentials from a secrets dir.
simport=$(free_port)
proxy=$(free_port)
ops=$(free_port)
"${RUN[@]}" -d --name "$NAME-sim" --read-only "$IMAGE" simulator --port "$simport" --print-tokens \
    >/dev/null 2>>"$WORK/sim-run.err"
wait_http "http://127.0.0.1:$simport/_sim/stats" 30 || true
podman logs "$NAME-sim" 2>/dev/null | grep '^{' | head -n 1 >"$WORK/sim-tokens.json"
mkdir -m 0700 "$WORK/secrets"
python3 - "$WORK/sim-tokens.json" "$WORK/secrets" <<'PY'
import json, pathlib, secrets, sys
pair = json.loads(pathlib.Path(sys.argv[1]).read_text())
out = pathlib.Path(sys.argv[2])
(out / "QBO_REALM_ID").write_text(pair["realm_id"])
(out / "QBO_REFRESH_TOKEN").write_text(pair["refresh_token"])
(out / "QBO_CLIENT_ID").write_text("sim-client")
(out / "QBO_CLIENT_SECRET").write_text("sim-secret")
(out / "QBO_ADMIN_TOKEN").write_text(secrets.token_urlsafe(24))
PY
chmod 0444 "$WORK"/secrets/*
chmod 0755 "$WORK/secrets"
podman volume create "$NAME-serve" >/dev/null
"${RUN[@]}" -d --name "$NAME-serve" --read-only --read-only-tmpfs=false \
    -v "$NAME-serve:/var/lib/qbo-gateway" -v "$WORK/secrets:/run/qbo-secrets:ro" \
    -e QBO_SECRETS_DIR=/run/qbo-secrets -e QBO_PROXY_PORT="$proxy" -e QBO_OPS_PORT="$ops" \
    -e QBO_API_BASE_URL="http://127.0.0.1:$simport" \
    -e QBO_TOKEN_URL="http://127.0.0.1:$simport/oauth2/v1/tokens/bearer" \
    -e QBO_MONITOR_AUTOSTART=false -e QBO_SHUTDOWN_TIMEOUT_SECONDS=10 \
    "$IMAGE" serve >/dev/null 2>>"$WORK/serve-run.err"
realm=$(cat "$WORK/secrets/QBO_REALM_ID")
check "serve: /readyz answers 200" wait_http "http://127.0.0.1:$ops/readyz" 60
check "serve: a proxied read answers 200 (token refreshed from the secrets dir)" \
    curl -fsS -o /dev/null "http://127.0.0.1:$proxy/v3/company/$realm/companyinfo/$realm"
check "serve: the HEALTHCHECK command reports healthy" podman healthcheck run "$NAME-serve"
podman kill --signal TERM "$NAME-serve" >/dev/null
check "serve: SIGTERM exits 0" test "$(podman wait "$NAME-serve")" = 0
podman logs "$NAME-serve" >"$WORK/serve.log" 2>&1 || true

# The needles: every secret of these runs. The simulator's client credential is left out: it
# is the simulator's published default, in its source on purpose.
mkdir "$WORK/needles"
cp "$WORK/secrets/QBO_REFRESH_TOKEN" "$WORK/secrets/QBO_ADMIN_TOKEN" "$WORK/needles/"
python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_token"])' \
    "$WORK/sim-tokens.json" >"$WORK/needles/access_token"
for vol in "$NAME-demo" "$NAME-serve"; do
    key=$(podman volume inspect --format '{{.Mountpoint}}' "$vol")/token.key
    check "state: $vol holds the generated token key, mode 0600" \
        test "$(stat -c %a "$key" 2>/dev/null)" = 600
    [ -f "$key" ] && cp "$key" "$WORK/needles/token-key-$vol"
done

# No secret or token of these runs, and nothing of the build's pip setup, in the image.
podman save --format docker-archive -o "$WORK/image.tar" "$IMAGE" >/dev/null
podman history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$WORK/history.txt"
check "no secret, token or build credential in the image's layers or history" \
    python3 deploy/image/scan_image.py "$WORK/image.tar" "$WORK/history.txt" "$WORK/needles" "$ca"
check "no secret or token in the gateway's logs" \
    python3 deploy/image/scan_image.py --logs "$WORK/demo.log" "$WORK/serve.log" -- "$WORK/needles"
took[checks]=$(since "$t")

echo "times: base ${took[base]}s, build ${took[build]}s, checks ${took[checks]}s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "image checks FAILED: ${failed[*]}"
    for f in "$WORK"/*.err "$WORK"/*.log; do
        [ -s "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }
    done
    exit 1
fi
echo "image checks passed"
