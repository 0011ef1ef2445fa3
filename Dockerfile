# syntax=docker/dockerfile:1
# qbo-gateway container image: a slim Python runtime holding only the installed package.
# Build: docker build -t qbo-gateway .   Run: docker run -p 9090:9090 qbo-gateway
# Without Docker: deploy/image-check.sh builds it with podman on a locally made base.
# No secret is baked in: settings come from the environment or files in QBO_SECRETS_DIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# A virtualenv makes the runtime stage a single COPY with no build tools in it.
RUN python -m venv /opt/qbo-gateway
ENV PATH=/opt/qbo-gateway/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qbo_gateway ./qbo_gateway
# pip and setuptools are build tools: once the package is in, they leave the venv, so the
# runtime stage carries no installer. A build that must reach the package index through a
# private CA passes a pip configuration and the CA bundle as build secrets (pip_conf, ca):
# they are mounted for this step only and never stored in a layer. Without them pip uses its
# own defaults.
RUN --mount=type=secret,id=pip_conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=ca,target=/run/secrets/ca.crt \
    PIP_CONFIG_FILE=/run/secrets/pip.conf pip install --no-cache-dir . \
    && python -m pip uninstall -q -y pip setuptools \
    && python -m compileall -q /opt/qbo-gateway

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="qbo-gateway" \
      org.opencontainers.image.description="Sidecar reverse proxy for QuickBooks Online"
# A fixed numeric id lets Kubernetes prove runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 qbo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/qbo-gateway --shell /usr/sbin/nologin qbo \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/qbo-gateway
COPY --from=build /opt/qbo-gateway /opt/qbo-gateway
# Bytecode was compiled at build time, so a read-only root filesystem costs nothing.
ENV PATH=/opt/qbo-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QBO_STATE_DIR=/var/lib/qbo-gateway \
    QBO_OPS_HOST=0.0.0.0 \
    QBO_OPS_PORT=9090
# The only writable path the gateway needs (embedded mode's SQLite token store and key).
VOLUME ["/var/lib/qbo-gateway"]
WORKDIR /var/lib/qbo-gateway
USER 10001:10001
# 8080 is the proxy (loopback by default: reached from the same pod); 9090 is ops.
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["qbo-gateway", "check"]
# Exec form: Python is PID 1 and receives SIGTERM itself, so draining works.
ENTRYPOINT ["qbo-gateway"]
CMD ["serve"]
