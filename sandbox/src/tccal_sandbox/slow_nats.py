"""A slow link to a NATS server for tests: a TCP proxy that holds what the client sends for a while (what the server
sends passes at once), as a loaded host or a long link does. JetStream pull requests then reach the server later than
the client started waiting for them, and outlive the fetches that sent them; the proxy notes when the client sent
each one, read off the wire."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

#: The subject prefix of a JetStream pull request ("next messages") in a client's PUB.
PULL_REQUEST = b"$JS.API.CONSUMER.MSG.NEXT."


@dataclass
class SlowLink:
    #: The NATS URL (credentials kept) pointed at the proxy.
    url: str
    #: time.monotonic() of each pull request the client sent, in order.
    pull_requests: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def slow_upstream(url: str, delay: float) -> AsyncIterator[SlowLink]:
    """A proxy to the NATS server of `url` that delays the client's bytes by `delay` seconds."""
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 4222
    credentials, _, _ = target.netloc.rpartition("@")
    link = SlowLink(url="")

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while chunk := await reader.read(65536):
                now = time.monotonic()
                link.pull_requests.extend(now for _ in range(chunk.count(PULL_REQUEST)))
                held.put_nowait((now + delay, chunk))
            held.put_nowait((time.monotonic() + delay, b""))

        async def write() -> None:
            while True:
                due, chunk = await held.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()

        await asyncio.gather(read(), write())

    async def downstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, port)
        with contextlib.suppress(OSError):
            await asyncio.gather(upstream(client_reader, server_writer), downstream(server_reader, client_writer))

    proxy = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    netloc = f"{credentials}@127.0.0.1:{proxy_port}" if credentials else f"127.0.0.1:{proxy_port}"
    link.url = urlunsplit(target._replace(netloc=netloc))
    try:
        yield link
    finally:
        proxy.close()
