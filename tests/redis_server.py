"""A private redis-server for tests: started on a free port, stoppable and restartable.

Tests never touch the machine's shared Redis on 6379. Options cover what the topology
fixtures need (cluster and replica flags, TLS with a test CA, an ACL user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis as sync_redis

if TYPE_CHECKING:
    from tests.tls_files import TlsFiles


# Ports already handed out in this process: the kernel may give a just-closed ephemeral
# port again at once, and two free_port() calls in a row must never name one port twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        *,
        persistent: bool = False,
        extra: list[str] | None = None,
        tls: TlsFiles | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.extra = extra or []
        self.tls = tls
        self.username = username
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="qbogw-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.tls.ca_cert),
            "--tls-auth-clients",
            "no",
        ]

    def sync_client(self) -> sync_redis.Redis:
        tls = {"ssl_ca_certs": str(self.tls.ca_cert)} if self.tls else {}
        return sync_redis.Redis.from_url(self.url, socket_timeout=0.5, **tls)

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        persistence = ["--appendonly", "yes"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                exe,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.sync_client()
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except (sync_redis.RedisError, OSError):
                    time.sleep(0.02)  # waiting on another process to listen
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if not os.environ.get("QBOGW_KEEP_REDIS_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)
