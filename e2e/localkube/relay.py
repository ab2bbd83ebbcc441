"""TCP relays from the node's gateway address to services on the host's loopback.

Pods live in their own network namespaces, where 127.0.0.1 is the pod itself; the relay makes
the API server and the host's test services (PostgreSQL, MinIO) reachable at the bridge's
gateway address instead (see ``network``). Started by ``controlplane.up`` as
``python -m localkube relay LISTEN_HOST:PORT=TARGET_HOST:PORT ...``: one asyncio loop, bytes
copied both ways per connection, half-closes passed on, both sides closed when both are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("relay")
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Route:
    """Connections to ``listen`` are relayed to ``target`` (both host, port)."""

    listen: tuple[str, int]
    target: tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> Route:
        """``10.201.3.1:443=127.0.0.1:6443`` -> Route."""
        listen, _, target = text.partition("=")
        if not target:
            raise ValueError(f"a route looks like HOST:PORT=HOST:PORT, got {text!r}")
        return cls(_address(listen), _address(target))

    def __str__(self) -> str:
        return f"{self.listen[0]}:{self.listen[1]}={self.target[0]}:{self.target[1]}"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until end of stream, then passes the half-close on."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(route: Route) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*route.target)
        except OSError as error:
            log.warning("%s: cannot reach the target: %s", route, error)
            writer.close()
            return
        try:
            await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer))
        finally:
            for side in (writer, upstream_writer):
                side.close()

    return handle


async def serve(routes: list[Route]) -> None:
    """Listens on every route's address until cancelled."""
    servers = [await asyncio.start_server(_handler(r), *r.listen) for r in routes]
    for route in routes:
        log.info("relaying %s", route)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> None:
    """Entry point of ``python -m localkube relay ROUTE...``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    routes = [Route.parse(arg) for arg in argv]
    if not routes:
        sys.exit("usage: localkube relay LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(routes))
