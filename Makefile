# One command runs every check CI runs: `make check`.
PY ?= .venv/bin/python
VENV ?= .venv

.PHONY: install sdk-deps check lint types test demo bench deploy-check image-check

$(VENV)/bin/python:
	python3 -m venv $(VENV)

install: $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev]'

# node-quickbooks, pinned in tests/sdk/package-lock.json, for the SDK tests (tests/test_sdks.py).
SDK_STAMP = tests/sdk/node_modules/.package-lock.json
$(SDK_STAMP): tests/sdk/package.json tests/sdk/package-lock.json
	cd tests/sdk && npm ci --no-audit --no-fund

sdk-deps: $(SDK_STAMP)

lint:
	$(PY) -m ruff check qbo_gateway tests bench
	$(PY) -m ruff format --check qbo_gateway tests bench

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest -q

# deploy-check runs before test: it fetches promtool, which the deploy tests use.
# image-check runs before test, so pytest's summary is the last line of the run.
check: install sdk-deps lint types deploy-check image-check test

demo: install
	$(VENV)/bin/qbo-gateway demo

# Builds and runs the container image with podman; says "skipped" where podman is missing.
image-check:
	deploy/image-check.sh

deploy-check:
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH deploy/check.sh

bench:
	$(PY) bench/compare.py
