"""A TCP relay a test can freeze: a network partition between the gateway and Redis.

While frozen, bytes sent either way are held and never delivered (a blackhole, not a
refused connection: the sender's socket stays open and its reads time out). Thawing drops
every connection that was frozen, with what it held, and lets new ones through.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._generation = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def retarget(self, port: int) -> None:
        """Send new connections to another server (a failover); old ones are dropped."""
        self.target_port = port
        self.thaw()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._generation += 1
        for writer in list(self._writers):  # frozen connections die with what they held
            writer.close()
        self._open.set()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        generation = self._generation
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, generation), self._pump(up_reader, writer, generation)
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._open.wait()
                if generation != self._generation:
                    return  # frozen meanwhile: what it held is dropped
                writer.write(data)
                await writer.drain()
        writer.close()
