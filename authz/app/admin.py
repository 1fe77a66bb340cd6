"""The admin HTTP port: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (serving).

A deliberately small HTTP/1.1 server on asyncio: GET only, one request per
connection, bounded request size and read time. It is for probes and
scrapers on a private port, not for clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from authz.telemetry.metrics import Registry

__all__ = ["run_admin"]

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0
_log = logging.getLogger("authz.admin")


@contextlib.asynccontextmanager
async def run_admin(
    listen: str,
    registry: Registry,
    ready: Callable[[], bool],
    *,
    extra: Callable[[], str] | None = None,
) -> AsyncIterator[int]:
    """Serve the admin endpoints on ``listen`` (port 0 picks one); yields the port.

    ``extra`` (the supervisor's merged worker metrics) is appended to ``/metrics``;
    it and ``ready`` then block on other processes, so they run in a thread.
    """
    host, _, port = listen.rpartition(":")
    if extra is not None:
        offloaded, collect = ready, extra

        async def ready_async() -> bool:
            return await asyncio.to_thread(offloaded)

        async def render() -> str:
            return registry.render() + await asyncio.to_thread(collect)
    else:

        async def ready_async() -> bool:
            return ready()

        async def render() -> str:
            return registry.render()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            status, body, content_type, head_only = await _answer(reader, render, ready_async)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, body, content_type = 400, b"bad request\n", "text/plain"
        except Exception:  # noqa: BLE001 - a failing collector: 500, never a hanging scraper
            _log.exception("admin request failed")
            status, body, content_type = 500, b"internal error\n", "text/plain"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            # HEAD: the headers of the GET answer, no body (RFC 9110 9.3.2).
            writer.write(head.encode("ascii") + (b"" if head_only else body))
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
    reader: asyncio.StreamReader,
    render: Callable[[], Awaitable[str]],
    ready: Callable[[], Awaitable[bool]],
) -> tuple[int, bytes, str, bool]:
    """(status, body, content type, head only) of one request."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, b"bad request\n", "text/plain", False
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, b"method not allowed\n", "text/plain", False
    head_only = method == "HEAD"
    if target == "/metrics":
        body = (await render()).encode("utf-8")
        return 200, body, "text/plain; version=0.0.4; charset=utf-8", head_only
    if target == "/healthz":
        return 200, b"ok\n", "text/plain", head_only
    if target == "/readyz":
        if await ready():
            return 200, b"ready\n", "text/plain", head_only
        return 503, b"not ready\n", "text/plain", head_only
    return 404, b"not found\n", "text/plain", head_only


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
