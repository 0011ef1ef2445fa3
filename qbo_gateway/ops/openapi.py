"""The ops listener's OpenAPI 3.1 description, shipped in the package and served by it.

`openapi.yaml` (next to this module) is the description operators and tools read; a test
runs schemathesis against a live gateway with it, so it stays true. It is served as written
(`GET /openapi.yaml`) and as JSON (`GET /openapi.json`, YAML anchors resolved).
"""

from __future__ import annotations

import json
from importlib import resources

import yaml
from aiohttp import web


def openapi_text() -> str:
    return resources.files("qbo_gateway.ops").joinpath("openapi.yaml").read_text("utf-8")


def add_openapi_routes(app: web.Application) -> None:
    text = openapi_text()
    as_json = json.dumps(yaml.safe_load(text), separators=(",", ":"))

    async def as_yaml(_request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="application/yaml", charset="utf-8")

    async def json_doc(_request: web.Request) -> web.Response:
        return web.Response(text=as_json, content_type="application/json", charset="utf-8")

    app.router.add_get("/openapi.yaml", as_yaml)
    app.router.add_get("/openapi.json", json_doc)
