"""The README's "Using it from a service" examples, run as they stand against `qbo-gateway demo`.

Every ```python block of that section is executed in its own interpreter against one demo
(simulator + gateway, as a subprocess on free ports), with `QBO_GATEWAY_URL` and
`QBO_GATEWAY_OPS_URL` pointing at it, so the examples cannot rot. The section is read from
README.md when it has one, else from docs/using-from-a-service.md (where it is written before
it is merged into the README).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Using it from a service"
SOURCES = (ROOT / "README.md", ROOT / "docs" / "using-from-a-service.md")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Example:
    source: str
    heading: str
    line: int
    code: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{slug or 'intro'}-line{self.line}"


def python_blocks(text: str, source: str, section: str = SECTION) -> list[Example] | None:
    """The ```python blocks under the heading `section` (until the next heading of the same
    or a higher level); None when the text has no such heading. Fenced code is skipped when
    looking for headings, so a `# comment` in an example never ends the section."""
    lines = text.splitlines()
    level: int | None = None
    heading = ""
    fence: str | None = None
    lang = ""
    start = 0
    body: list[str] = []
    found: list[Example] = []
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                if level is not None and lang == "python":
                    found.append(Example(source, heading, start, "\n".join(body) + "\n"))
                fence = None
            else:
                body.append(line)
            continue
        opened = _FENCE.match(line)
        if opened:
            fence, lang, start, body = opened.group(1), opened.group(2).lower(), number, []
            continue
        match = _HEADING.match(line)
        if not match:
            continue
        depth, title = len(match.group(1)), match.group(2)
        if level is None:
            if title.strip().lower() == section.lower():
                level, heading = depth, title
        elif depth <= level:
            break
        else:
            heading = title
    return found if level is not None else None


def load_examples() -> list[Example]:
    for path in SOURCES:
        if path.exists():
            blocks = python_blocks(path.read_text("utf-8"), path.name)
            if blocks is not None:
                return blocks
    return []


EXAMPLES = load_examples()


def test_the_section_exists_and_has_examples() -> None:
    names = [e.source for e in EXAMPLES]
    assert len(EXAMPLES) >= 3, f"expected the three examples of '{SECTION}', found {names}"
    assert any("quickbooks" in e.code for e in EXAMPLES)
    assert any("QBOGatewayClient" in e.code for e in EXAMPLES)
    assert any("QBOGatewaySyncClient" in e.code for e in EXAMPLES)


def test_extractor_prefers_the_section_and_ignores_comments_in_code() -> None:
    text = (
        "# Project\n\n```python\nprint('not in the section')\n```\n\n"
        "## Using it from a service\n\nIntro.\n\n```python\n# a comment, not a heading\n"
        "print(1)\n```\n\n### Sync\n\n```text\nnot python\n```\n\n```python\nprint(2)\n```\n\n"
        "## Deploying\n\n```python\nprint('after the section')\n```\n"
    )
    blocks = python_blocks(text, "README.md")
    assert blocks is not None
    assert [b.code for b in blocks] == ["# a comment, not a heading\nprint(1)\n", "print(2)\n"]
    assert [b.heading for b in blocks] == ["Using it from a service", "Sync"]
    assert python_blocks("# Other\n```python\nx\n```\n", "README.md") is None


@dataclass
class Demo:
    proxy_url: str
    ops_url: str
    log: Path


def _pump(proc: subprocess.Popen[bytes], log: Path, running: threading.Event) -> None:
    """Copy the demo's output to a file (so its pipe never fills) and note when it is up."""
    assert proc.stdout is not None
    with log.open("ab") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if b"demo is running" in line:
                running.set()
    running.set()  # the demo exited: stop waiting, the caller sees why


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    state = tmp_path_factory.mktemp("demo-state")
    proxy_port, ops_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    env.update(
        {
            "QBO_PROXY_PORT": str(proxy_port),
            "QBO_OPS_PORT": str(ops_port),
            "QBO_OPS_HOST": "127.0.0.1",
            "QBO_STATE_DIR": str(state),
        }
    )
    log = state / "demo.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qbo_gateway", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    running = threading.Event()
    pump = threading.Thread(target=_pump, args=(proc, log, running), daemon=True)
    pump.start()
    try:
        if not running.wait(30) or proc.poll() is not None:
            pytest.fail(f"qbo-gateway demo did not start:\n{log.read_text()[-3000:]}")
        yield Demo(f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{ops_port}", log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pump.join(5)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs_against_the_demo(example: Example, demo: Demo, tmp_path: Path) -> None:
    if "quickbooks" in example.code and importlib.util.find_spec("quickbooks") is None:
        pytest.skip(
            "python-quickbooks is not installed (pip install python-quickbooks==0.9.12; "
            "it belongs in the dev extras)"
        )
    script = tmp_path / "example.py"
    script.write_text(example.code, "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    env.update({"QBO_GATEWAY_URL": demo.proxy_url, "QBO_GATEWAY_OPS_URL": demo.ops_url})
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    where = f"{example.source} line {example.line} ({example.heading})"
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{where} printed nothing"
    assert "Sandbox Company" in result.stdout or "invoices" in result.stdout
