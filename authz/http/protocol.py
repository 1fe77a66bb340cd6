"""One HTTP/1.1 connection of the HTTP door (httptools): parse, answer in order, enforce every bound.

Request line and headers are bounded in size and count and must arrive within
``header_timeout``; idle keep-alive connections close after ``idle_timeout``; a malformed
request, an upgrade or CONNECT is answered 4xx and the connection closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, cast

import httptools

from authz.http.wire import closing, render

if TYPE_CHECKING:
    from authz.http.door import HttpDoor

__all__ = ["Connection", "RawHeaders"]

_log = logging.getLogger("authz.http")
_MAX_PIPELINE = 32

RawHeaders = list[tuple[bytes, bytes]]


class Connection(asyncio.Protocol):
    """One client connection: parse, answer in order, enforce every bound."""

    def __init__(self, door: HttpDoor) -> None:
        self.door = door
        self.settings = door.settings
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: RawHeaders = []
        self.header_bytes = 0
        self.header_count = 0
        self.body_bytes = 0
        self.requests = 0
        self.closing = False
        self.rejected = 0  # the status of a limit a callback enforced
        self.in_message = False
        self.queue: collections.deque[tuple[asyncio.Future[bytes], bool]] = collections.deque()
        self.deadline = 0.0  # monotonic time at which the current wait (headers, idle) ends; 0: none
        self.finished = False  # the last answer is decided: no further request is answered
        self.draining = False  # the door is stopping: close once the waiting answers are out

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport (uvloop's is not an asyncio.Transport subclass: no isinstance).
        transport = self.transport = cast(asyncio.Transport, transport)
        if len(self.door.connections) >= self.settings.max_connections:
            transport.write(render(503, [], b"", close=True))
            transport.close()
            return
        self.door.connections.add(self)
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.settings.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.finished:
            return
        if not self.in_message:
            self._arm(self.settings.header_timeout)  # a new request: its headers must come in time
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # httptools wraps what a callback raises; a limit we enforced says its status.
            self._fail(self.rejected or 400)
        except httptools.HttpParserUpgrade:
            # Not reached (on_headers_complete refuses an upgrade first); never let it out.
            self._fail(400)

    def connection_lost(self, exc: Exception | None) -> None:
        self.door.connections.discard(self)
        self._disarm()
        for pending, _last in self.queue:
            pending.cancel()

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = []
        self.header_bytes = self.header_count = self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if len(self.url) > 8192:
            self._reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        self.header_count += 1
        if (
            self.header_bytes > self.settings.max_header_bytes
            or self.header_count > self.settings.max_headers
        ):
            self._reject(431)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.parser.should_upgrade():
            # CONNECT, or Upgrade named in Connection (websocket, h2c): a check never
            # switches protocols, and what follows such a request is not HTTP. 400 and
            # close, like any request that is not a check; undecided, so never a 200.
            # Envoy does not forward Upgrade/Connection to the door (allowed_headers).
            self._reject(400)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.settings.max_body_bytes:
            self._reject(413)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.finished:
            return  # after the request whose answer is the last (keep-alive bound, close): not answered
        self.requests += 1
        try:
            answer = self.door.answer_raw(self.parser.get_method() or b"GET", self.url, self.headers)
        except Exception:  # noqa: BLE001 - never reached: answer() fails closed; still, no crash
            _log.exception("http door failed to answer")
            self._send(render(500, [], b"", close=True), last=True)
            return
        last = (
            not self.parser.should_keep_alive() or self.requests >= self.settings.max_requests_per_connection
        )
        self._send(answer, last)

    def _reject(self, status: int) -> None:
        self.rejected = status
        raise _Reject(status)

    # -- answering -------------------------------------------------------------

    def _send(self, answer: bytes | asyncio.Task[bytes], last: bool) -> None:
        """Answers leave in request order, even when one of them waits for a key refetch.

        Once the last answer is decided (``last``), nothing else is answered on
        this connection: it is written after those before it, then the connection closes.
        """
        if last:
            self.finished = True
        if isinstance(answer, bytes) and not self.queue and self.transport is not None:
            self.transport.write(closing(answer) if last else answer)
            self._after_response(last)
            return
        future: asyncio.Future[bytes]
        if isinstance(answer, bytes):
            future = asyncio.get_running_loop().create_future()
            future.set_result(answer)
        else:
            future = answer
        self.queue.append((future, last))
        future.add_done_callback(lambda _: self._flush())
        if len(self.queue) >= _MAX_PIPELINE and self.transport is not None:
            self.transport.pause_reading()

    def _flush(self) -> None:
        if self.closing:
            return
        last = False
        while self.queue and self.queue[0][0].done() and self.transport is not None:
            future, last = self.queue.popleft()
            # Draining (close_when_idle): the answer that empties the queue is the last one.
            last = last or (self.draining and not self.queue and not self.in_message)
            if not future.cancelled():
                answer = future.result()
                self.transport.write(closing(answer) if last else answer)
            if last:
                break
        if self.transport is not None and (last or not self.queue):
            self.transport.resume_reading()
            self._after_response(last)

    def _after_response(self, last: bool) -> None:
        if last:
            self.closing = self.finished = True
            for future, _ in self.queue:
                future.cancel()  # nothing may follow the last answer
            self.queue.clear()
            if self.transport is not None:
                self.transport.close()
        else:
            self._arm(self.settings.idle_timeout)

    def _fail(self, status: int) -> None:
        """An error answer that ends the connection, after the answers still waiting (in order)."""
        if self.finished:
            return  # the last answer is decided: nothing may follow it
        self._send(render(status, [], b"", close=True), last=True)
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()  # waiting for earlier answers: read nothing more

    def close_when_idle(self) -> None:
        if not self.in_message and not self.queue and self.transport is not None:
            self.closing = self.finished = True
            self.transport.close()
        else:
            self.draining = True  # the answer that empties the queue closes the connection
            self.requests = self.settings.max_requests_per_connection  # the current one is the last

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- deadlines (checked by the door's sweep) --------------------------------

    def _arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def _disarm(self) -> None:
        self.deadline = 0.0

    def expired(self) -> None:
        self.deadline = 0.0
        if self.transport is None or self.closing:
            return
        if self.in_message:
            self._fail(408)  # headers too slow: a slowloris costs no more than this socket
        elif not self.queue:
            self.closing = True
            self.transport.close()  # idle keep-alive connection


class _Reject(Exception):  # noqa: N818 - a control-flow signal out of the parser callbacks
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
