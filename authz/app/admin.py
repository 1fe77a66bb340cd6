"""The admin HTTP port: ``/metrics`` (Prometheus text or OpenMetrics), ``/healthz`` (alive),
``/readyz`` (serving).

A deliberately small HTTP/1.1 server on asyncio: GET only, one request per
connection, bounded request size and read time. It is for probes and
scrapers on a private port, not for clients.

It shares the process's file descriptors with both doors, so it holds at most
``MAX_CONNECTIONS`` at once: at the bound it stops accepting (further connections wait
in the kernel's backlog, holding none of ours) until one ends, at the latest after
``READ_TIMEOUT`` for a request that does not come. A flood of idle connections then
costs the admin port its own answers for a moment, never the doors' descriptors
(attack-19 F). Accept errors (out of descriptors for another reason) are logged once
per 10 s with a count, and accepting resumes shortly after.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from authz.telemetry.logs import Throttle
from authz.telemetry.metrics import Registry

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "run_admin"]

MAX_CONNECTIONS = 32  # Prometheus and (standalone-http) Envoy's health checks: one request each, now and then
READ_TIMEOUT = 1.0  # seconds for a request's head: scrapers and probes send it at once
WRITE_TIMEOUT = 10.0  # seconds for the answer to leave (a /metrics body to a slow scraper)
_BACKLOG = 64
_ACCEPT_RETRY = 0.25  # seconds before accepting again after an accept error
_MAX_REQUEST = 8192
_log = logging.getLogger("authz.admin")


@contextlib.asynccontextmanager
async def run_admin(
    listen: str,
    registry: Registry,
    ready: Callable[[], bool],
    *,
    blocking: bool = False,
    before_scrape: Callable[[], None] | None = None,
) -> AsyncIterator[int]:
    """Serve the admin endpoints on ``listen`` (port 0 picks one); yields the port.

    ``blocking``: the registry's collectors and ``ready`` wait on other processes (the
    supervisor's, on its workers), so they run in a thread. ``before_scrape`` runs before
    each ``/metrics`` answer (a worker writes its multi-process files: the supervisor's
    scrape asks this way).
    """
    host, _, port = listen.rpartition(":")
    if blocking:
        offloaded = ready

        async def ready_async() -> bool:
            return await asyncio.to_thread(offloaded)

        async def render(accept: str) -> tuple[bytes, str]:
            return await asyncio.to_thread(registry.render, accept)
    else:

        async def ready_async() -> bool:
            return ready()

        async def render(accept: str) -> tuple[bytes, str]:
            if before_scrape is not None:
                before_scrape()
            return registry.render(accept)

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
        try:
            # A client that does not read would hold its slot: the answer has WRITE_TIMEOUT.
            async with asyncio.timeout(WRITE_TIMEOUT):
                with contextlib.suppress(ConnectionError):
                    # HEAD: the headers of the GET answer, no body (RFC 9110 9.3.2).
                    writer.write(head.encode("ascii") + (b"" if head_only else body))
                    await writer.drain()
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()

    loop = asyncio.get_running_loop()
    listener = _listen(host.strip("[]") or None, int(port))
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    serving: set[asyncio.Task[None]] = set()
    throttle = Throttle(10.0)

    async def serve_one(conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=_MAX_REQUEST)
        except OSError:
            conn.close()
            return
        await handle(reader, writer)

    async def accept() -> None:
        while True:
            await slots.acquire()  # at the bound: wait here; the kernel holds new connections
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                slots.release()
                left_out = throttle.admit("accept")
                if left_out is not None:
                    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                    _log.warning(
                        "admin port cannot accept a connection",
                        extra={"fields": {"error": name, "left_out": left_out}},
                    )
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            task = loop.create_task(serve_one(conn))
            serving.add(task)
            task.add_done_callback(finished)

    def finished(task: asyncio.Task[None]) -> None:
        serving.discard(task)
        slots.release()

    accepting = loop.create_task(accept())
    try:
        yield listener.getsockname()[1]
    finally:
        accepting.cancel()
        for task in list(serving):
            task.cancel()
        await asyncio.gather(accepting, *serving, return_exceptions=True)
        listener.close()


def _listen(host: str | None, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host`` (None: every IPv4 address) and ``port``."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _answer(
    reader: asyncio.StreamReader,
    render: Callable[[str], Awaitable[tuple[bytes, str]]],
    ready: Callable[[], Awaitable[bool]],
) -> tuple[int, bytes, str, bool]:
    """(status, body, content type, head only) of one request."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, b"bad request\n", "text/plain", False
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, b"method not allowed\n", "text/plain", False
    head_only = method == "HEAD"
    if target == "/metrics":
        # The format the scraper asks for (Prometheus asks for OpenMetrics first), as
        # prometheus-client negotiates it; every Accept field line counts (RFC 9110 5.3).
        fields = (line.partition(":") for line in header_lines)
        accept = ",".join(value for name, _, value in fields if name.strip().lower() == "accept")
        body, content_type = await render(accept)
        return 200, body, content_type, head_only
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
