"""Requests for realm ids the gateway holds no tokens for leave nothing behind, anywhere.

Every per-realm structure (admission, retry budget, health table, history rings and
events, token copies and outcomes, the meter, the cache, alerts) is a container keyed or
filled by realm id, so the proof is general: after the requests, no container reachable
from the gateway (or the gateway's modules) has an unknown id as a key or an element.
"""

from __future__ import annotations

import gc
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import FrameType, FunctionType, ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.harness import REALM, Stack, start_stack, stop_stack

UNKNOWN = [str(7_700_000_000 + i) for i in range(150)]


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(aiohttp_server, tmp_path)
    yield s
    await stop_stack(s)


def _has(items: Iterable[object], ids: set[str]) -> bool:
    for item in items:
        if type(item) is str:
            if item in ids:
                return True
        elif type(item) is tuple and any(type(x) is str and x in ids for x in item):
            return True
    return False


_CODE = (ModuleType, type, FunctionType)


def _ours(obj: object) -> bool:
    name = obj.__name__ if isinstance(obj, ModuleType) else getattr(obj, "__module__", "")
    return isinstance(name, str) and name.startswith("qbo_gateway")


def holders(root: object, ids: set[str]) -> list[str]:
    """Every container reachable from `root` (and the gateway's modules) that holds one of
    `ids` as a key or an element. Walked with `gc.get_referents`, which also yields the
    dicts of plain values the collector does not track (and `gc.get_objects` misses)."""
    todo = [root, *(m for n, m in sys.modules.items() if n.startswith("qbo_gateway"))]
    seen: set[int] = set()
    found = []
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, FrameType) or (isinstance(obj, _CODE) and not _ours(obj)):
            continue  # a running frame's locals, other code's modules, classes, globals
        if isinstance(obj, dict):
            hit = _has(obj.keys(), ids)
        elif isinstance(obj, (set, frozenset, list, tuple, deque)):
            hit = _has(obj, ids)
        else:
            hit = False
        if hit:
            found.append(f"{type(obj).__name__}: {str(obj)[:160]}")
        todo.extend(gc.get_referents(obj))
    return found


async def test_unknown_realm_ids_leave_nothing_in_any_container(stack: Stack) -> None:
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 200  # a known realm: every per-realm structure exists
    for realm in UNKNOWN:
        for method, path in (("GET", "companyinfo/1"), ("POST", "customer")):
            async with stack.session.request(method, stack.api(path, realm=realm)) as resp:
                assert resp.status == 404
    await stack.gateway.health.flush()
    assert holders(stack.gateway, set(UNKNOWN)) == []
    assert holders(stack.gateway, {REALM}) != []  # the walk does reach per-realm state


def test_the_search_finds_a_realm_id_held_as_a_key_an_element_or_in_a_tuple_key() -> None:
    rid = str(7799)  # made at run time: a literal would also sit in the code's constants
    makers = (
        lambda: {rid: 1.5},  # a dict of plain values: untracked by the collector
        lambda: {(rid, "kind"): 1},
        lambda: ["x", rid],
        lambda: {rid},
        lambda: deque([rid]),
    )
    for make in makers:
        root = SimpleNamespace(inner=SimpleNamespace(held=make()))
        assert holders(root, {rid}), root
    assert holders(SimpleNamespace(held={"other": rid}), {rid}) == []  # values are no keys
