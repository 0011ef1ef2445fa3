"""Two parts of the package must stand alone: the simulator, which imports only aiohttp and
the standard library so it can never agree with the gateway by sharing one of its mistakes,
and the client, which services install or vendor without the gateway."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SIMULATOR = Path(__file__).resolve().parent.parent / "qbo_gateway" / "simulator"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_simulator_imports_only_aiohttp_stdlib_and_itself() -> None:
    files = sorted(SIMULATOR.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top == "aiohttp"
                or module.startswith("qbo_gateway.simulator")
            )
            assert allowed, f"{path.name} imports {module}"


def test_client_imports_only_aiohttp_stdlib_and_its_own_modules() -> None:
    files = sorted((SIMULATOR.parent / "client").glob("*.py"))
    assert len(files) >= 4
    for path in files:
        name = path.name
        for module in imported_modules(path):
            top = module.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top == "aiohttp"
                or module.startswith("qbo_gateway.client")
            )
            assert allowed, f"{name} imports {module}"
