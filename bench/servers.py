"""The processes a benchmark run stands up: nginx as QBO, the bare proxy, gateways, Redis.

nginx (from the distribution) serves fixed QBO-shaped JSON, so the upstream is never the
bottleneck and costs the same for every path measured. Every process gets free loopback
ports and a private temporary directory; `Fleet.stop` ends exactly the processes it
started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
REALM = "9130349226472226"
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def companyinfo_body(realm: str = REALM) -> bytes:
    """About 200 bytes, like QBO's companyinfo read."""
    doc = {
        "CompanyInfo": {
            "CompanyName": "Bench Gardens",
            "Country": "US",
            "Id": "1",
            "SyncToken": "4",
            "domain": "QBO",
            "MetaData": {"CreateTime": "2024-01-02T03:04:05-08:00"},
        },
        "time": "2026-01-01T00:00:00.000-08:00",
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def customer_page_body(count: int = 40) -> bytes:
    """A query page of `count` Customers (about 32 KB for 40), DefaultTaxCodeRef included."""
    customers = []
    for i in range(1, count + 1):
        customers.append(
            {
                "Taxable": True,
                "BillAddr": {
                    "Id": str(100 + i),
                    "Line1": f"{i} Orchard Lane, Building {i % 7}, Suite {i * 3}",
                    "City": "Half Moon Bay",
                    "CountrySubDivisionCode": "CA",
                    "PostalCode": "94213",
                },
                "Job": False,
                "BillWithParent": False,
                "Balance": round(i * 17.25, 2),
                "CurrencyRef": {"value": "USD", "name": "United States Dollar"},
                "DefaultTaxCodeRef": {"value": "2"},
                "domain": "QBO",
                "sparse": False,
                "Id": str(i),
                "SyncToken": "0",
                "MetaData": {
                    "CreateTime": "2024-05-01T16:48:43-07:00",
                    "LastUpdatedTime": "2024-05-09T13:32:03-07:00",
                },
                "GivenName": f"Given{i}",
                "FamilyName": f"Family{i}",
                "FullyQualifiedName": f"Customer Number {i} of Bench Gardens",
                "CompanyName": f"Customer {i} Landscaping and Irrigation Company",
                "DisplayName": f"Customer Number {i} of Bench Gardens",
                "Active": True,
                "PrimaryPhone": {"FreeFormNumber": f"(650) 555-{1000 + i}"},
                "PrimaryEmailAddr": {"Address": f"customer{i}@example.com"},
            }
        )
    doc = {
        "QueryResponse": {"Customer": customers, "startPosition": 1, "maxResults": count},
        "time": "2026-01-01T00:00:00.000-08:00",
    }
    return json.dumps(doc, separators=(",", ":")).encode()


PATHS = {
    "companyinfo": f"/v3/company/{REALM}/companyinfo/{REALM}",
    "query": f"/v3/company/{REALM}/query?query=select%20%2A%20from%20Customer",
}


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Fleet:
    """Every process and directory one benchmark run started, stopped together."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def tempdir(self, prefix: str) -> Path:
        path = tempfile.mkdtemp(prefix=prefix)
        self.dirs.append(path)
        return Path(path)

    def spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def nginx(self) -> tuple[subprocess.Popen[bytes], str]:
        """nginx with one worker serving the fixed answers; returns (process, base URL)."""
        home = self.tempdir("qbogw-nginx-")
        (home / "companyinfo.json").write_bytes(companyinfo_body())
        (home / "query.json").write_bytes(customer_page_body())
        port = free_port()
        conf = home / "nginx.conf"
        conf.write_text(
            f"""
daemon off; master_process off; worker_processes 1; pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path {home}; proxy_temp_path {home}; fastcgi_temp_path {home};
  uwsgi_temp_path {home}; scgi_temp_path {home};
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    add_header intuit_tid bench-tid-1;
    location ~ ^/v3/company/[0-9]+/companyinfo/ {{ alias {home}/companyinfo.json; }}
    location ~ ^/v3/company/[0-9]+/query {{ alias {home}/query.json; }}
    location = /ready {{ return 200 "ok"; }}
  }}
}}
"""
        )
        proc = self.spawn([NGINX, "-p", str(home), "-c", str(conf)])
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/ready")
        return proc, base

    def bare(
        self, upstream: str, *, command: list[str] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """The bare proxy; `command` replaces `python bench/bare_proxy.py` (a profiler)."""
        port = free_port()
        command = command or [sys.executable, str(ROOT / "bench" / "bare_proxy.py")]
        proc = self.spawn([*command, upstream, str(port)])
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/ready")
        return proc, base

    def gateway(
        self,
        upstream: str,
        *,
        redis_url: str | None = None,
        extra: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], str, str]:
        """A gateway process (`serve`); returns (process, proxy URL, ops URL).

        `command` replaces `python -m qbo_gateway` (a profiler's wrapper)."""
        proxy_port, ops_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
        env.update(gateway_env(upstream, self.tempdir("qbogw-bench-"), proxy_port, ops_port))
        if redis_url:
            env["QBO_REDIS_URL"] = redis_url
        env.update(extra or {})
        command = command or [sys.executable, "-m", "qbo_gateway"]
        proc = self.spawn([*command, "serve"], env)
        wait_http(f"http://127.0.0.1:{ops_port}/readyz")
        return proc, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{ops_port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        for path in self.dirs:
            subprocess.run(["rm", "-rf", path], check=False)


def gateway_env(upstream: str, state: Path, proxy_port: int, ops_port: int) -> dict[str, str]:
    """A gateway whose QBO is `upstream`, with a stored access token valid for a day.

    The token endpoint is never called (the token does not near expiry during a run).
    """
    return {
        "QBO_CLIENT_ID": "bench-client",
        "QBO_CLIENT_SECRET": "bench-secret-not-real",
        "QBO_API_BASE_URL": upstream,
        "QBO_TOKEN_URL": f"{upstream}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_ACCESS_TOKEN": "bench-access-token-0123456789",
        "QBO_REFRESH_TOKEN": "bench-refresh-token-0123456789",
        "QBO_ACCESS_TOKEN_EXPIRES_AT": str(int(time.time()) + 86400),
        "QBO_TOKEN_KEYS": Fernet.generate_key().decode(),
        "QBO_STATE_DIR": str(state),
        "QBO_PROXY_PORT": str(proxy_port),
        "QBO_OPS_PORT": str(ops_port),
        "QBO_OPS_HOST": "127.0.0.1",
        "QBO_LOG_LEVEL": "info",
        "QBO_MONITOR_AUTOSTART": "false",
        # The benchmark measures the gateway's own cost, not QBO's limits.
        "QBO_RATE_LIMIT_PER_MINUTE": "100000000",
        "QBO_RATE_LIMIT_PER_SECOND": "1000000",
        "QBO_CONCURRENCY_LIMIT": "10000",
    }
