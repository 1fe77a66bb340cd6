"""The admin HTTP port: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (serving).

A deliberately small HTTP/1.1 server on asyncio: GET only, one request per
connection, bounded request size and read time. It is for probes and
scrapers on a private port, not for clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from authz.metrics import Registry

__all__ = ["run_admin"]

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def run_admin(listen: str, registry: Registry, ready: Callable[[], bool]) -> AsyncIterator[int]:
    """Serve the admin endpoints on ``listen`` (port 0 picks one); yields the port."""
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body, content_type = await _answer(reader, registry, ready)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, body, content_type = 400, b"bad request\n", "text/plain"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode("ascii") + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, host.strip("[]") or None, int(port), limit=_MAX_REQUEST)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _answer(
    reader: asyncio.StreamReader, registry: Registry, ready: Callable[[], bool]
) -> tuple[int, bytes, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, b"bad request\n", "text/plain"
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, b"method not allowed\n", "text/plain"
    if target == "/metrics":
        return 200, registry.render().encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8"
    if target == "/healthz":
        return 200, b"ok\n", "text/plain"
    if target == "/readyz":
        return (200, b"ready\n", "text/plain") if ready() else (503, b"not ready\n", "text/plain")
    return 404, b"not found\n", "text/plain"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
