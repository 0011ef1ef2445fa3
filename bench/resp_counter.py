"""A loopback relay in front of Redis that counts the commands and round trips clients send.

INFO commandstats also counts commands that Lua scripts run inside the server, which are
not round trips; counting at the wire counts only what the gateway really sends. A burst
of commands read from the socket in one go (a pipeline) is one round trip. The relay runs
its own event loop in a thread, so a synchronous benchmark can use it.
"""

from __future__ import annotations

import asyncio
import threading


class RespCounter:
    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.by_command: dict[str, int] = {}
        self.writes = 0  # client writes that carried commands: round trips
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def reset(self) -> tuple[dict[str, int], int]:
        """The counts so far, and start counting from zero."""
        counts, writes = dict(self.by_command), self.writes
        self.by_command.clear()
        self.writes = 0
        return counts, writes

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def upstream_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        pump = asyncio.create_task(upstream_to_client())
        try:
            while True:
                header = await reader.readline()
                if not header:
                    break
                chunks = [header]
                if header.startswith(b"*"):
                    name = ""
                    for i in range(int(header[1:])):
                        size_line = await reader.readline()
                        data = await reader.readexactly(int(size_line[1:]) + 2)
                        chunks += [size_line, data]
                        if i == 0:
                            name = data[:-2].decode(errors="replace").upper()
                    self.by_command[name] = self.by_command.get(name, 0) + 1
                up_writer.write(b"".join(chunks))
                if not reader._buffer:  # type: ignore[attr-defined]
                    self.writes += 1
                    await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            up_writer.close()
            pump.cancel()
