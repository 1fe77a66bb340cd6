"""One HTTP/1.1 connection of the HTTP door (httptools): parse, answer in order, enforce every bound.

What Envoy forwards is decided, on a connection that stays open: a request line and headers
over ``max_header_bytes``/``max_headers`` are no longer stored but still read, then answered
as a recorded deny (a target too long: ``path_invalid``; headers: ``request_malformed``);
a method llhttp cannot parse (HTTP/2 lets clients send ``get`` or ``FOO``) is parsed as GET
and decided as sent (``request_malformed``). Only what cannot be a check is answered 4xx with
the connection closed, counted in ``authz_http_rejections_total`` and logged (at most a line a
second per cause): a malformed request, an upgrade or CONNECT, a head over four times
``max_header_bytes`` (the hard bound on what one request may make us read), a body over
``max_body_bytes``, headers slower than ``header_timeout``. Idle keep-alive connections close
after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import socket
import time
from typing import TYPE_CHECKING, cast

import httptools

from authz.core.request import METHODS
from authz.errors import Reason
from authz.http.wire import closing, render

if TYPE_CHECKING:
    from authz.http.door import HttpDoor

__all__ = ["Connection", "RawHeaders"]

_log = logging.getLogger("authz.http")
_MAX_PIPELINE = 32
# What one request may make us read before its headers end, in multiples of max_header_bytes:
# past the soft limit nothing more is stored, past this the connection closes (431).
_HARD_FACTOR = 4
_END_OF_HEAD = b"\r\n\r\n"
# The methods llhttp is given as they are; any other token is fed as GET and decided as sent.
_PARSED = frozenset(method.encode("ascii") for method in METHODS)
_PARSED_STARTS = tuple(method + b" " for method in _PARSED)  # the common case, in one C call
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_MAX_METHOD = 32
_REQUEST_ID = b"x-request-id"

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
        self.header_bytes = 0  # request target, header names and values of this request, as parsed
        self.header_count = 0
        self.overflow: Reason | None = None  # a soft limit passed: the deny this request gets
        self.head_seen = 0  # bytes received for this request until its headers ended (the hard bound)
        self.head_bound = _HARD_FACTOR * self.settings.max_header_bytes
        self.headers_done = False
        self.method: bytes | None = None  # the method as sent, when it was fed to llhttp as GET
        self.pending = b""  # the start of a request line, until its method is whole
        self.body_bytes = 0
        self.requests = 0
        self.closing = False
        self.rejected = 0  # the status of a limit a callback enforced
        self.cause = ""  # ...and why (authz_http_rejections_total)
        self.in_message = False
        self.queue: collections.deque[tuple[asyncio.Future[bytes], bool]] = collections.deque()
        self.deadline = 0.0  # monotonic time at which the current wait (headers, idle) ends; 0: none
        self.finished = False  # the last answer is decided: no further request is answered
        self.draining = False  # the door is stopping: close once the waiting answers are out

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport (uvloop's is not an asyncio.Transport subclass: no isinstance).
        transport = self.transport = cast(asyncio.Transport, transport)
        self.door.telemetry.http_connections.inc(())
        if len(self.door.connections) >= self.settings.max_connections:
            self.door.rejected(503, "connections")
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
        if self.pending:
            data, self.pending = self.pending + data, b""
        # One request head at a time, so that llhttp says where each request starts (it is
        # between requests when a piece ending at a head's end completes one): only there
        # is a method read, and the head's bytes counted against the hard bound.
        while data and not (self.closing or self.finished):
            if not self.in_message:
                self._arm(self.settings.header_timeout)  # a new request: its headers must come in time
                data = self._method_as_parsed(data)
                if not data:
                    return  # the method is not whole yet
            if self.headers_done:
                piece, data = data, b""
            else:
                end = data.find(_END_OF_HEAD)
                cut = len(data) if end == -1 else end + len(_END_OF_HEAD)
                piece, data = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
                self.head_seen += len(piece)
                if self.head_seen > self.head_bound:
                    self._fail(431, "head_too_large")
                    return
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                # Not reached (on_headers_complete refuses an upgrade first); never let it out.
                self._fail(400, "upgrade")
                return
            except httptools.HttpParserError:
                # httptools wraps what a callback raises; a limit we enforced says its status.
                self._fail(self.rejected or 400, self.cause or "malformed")
                return

    def _method_as_parsed(self, data: bytes) -> bytes:
        """At the start of a request: a method token llhttp does not parse is given to it as GET.

        Envoy's HTTP/2 codec forwards any token (``get``, ``FOO``); llhttp knows a fixed table
        and would fail the connection. Fed as GET, the request is read to its end and decided
        with the method it really has (refused: request_malformed), the connection kept.
        """
        self.method = None
        if data.startswith(_PARSED_STARTS):
            return data
        space = data.find(b" ", 0, _MAX_METHOD + 1)
        if space == -1:
            if len(data) <= _MAX_METHOD and _TOKEN.fullmatch(data):
                self.pending = data  # wait for the rest of the method
                return b""
            return data  # not a method: llhttp refuses it
        token = data[:space]
        if token in _PARSED or not _TOKEN.fullmatch(token):
            return data
        self.method = token
        return b"GET" + data[space:]

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
        self.overflow = None

    def on_url(self, url: bytes) -> None:
        self.header_bytes += len(url)
        if self.overflow is not None:
            return
        if self.header_bytes > self.settings.max_header_bytes:
            self.overflow, self.url = Reason.PATH_INVALID, b""  # a target too long to match
        else:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        self.header_count += 1
        if self.overflow is None and (
            self.header_bytes > self.settings.max_header_bytes
            or self.header_count > self.settings.max_headers
        ):
            self.overflow = Reason.REQUEST_MALFORMED
        if self.overflow is None:
            self.headers.append((name, value))
        elif len(value) <= 128 and name.lower() == _REQUEST_ID:
            self.headers.append((name, value))  # the deny still carries Envoy's request id

    def on_headers_complete(self) -> None:
        self._disarm()
        self.headers_done = True
        if self.parser.should_upgrade():
            # CONNECT, or Upgrade named in Connection (websocket, h2c): a check never
            # switches protocols, and what follows such a request is not HTTP. 400 and
            # close, like any request that is not a check; undecided, so never a 200.
            # Envoy does not forward Upgrade/Connection to the door (allowed_headers).
            self._reject(400, "upgrade")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.settings.max_body_bytes:
            self._reject(413, "body_too_large")

    def on_message_complete(self) -> None:
        self.in_message = self.headers_done = False
        self.head_seen = 0
        method, self.method = self.method or self.parser.get_method() or b"GET", None
        if self.finished:
            return  # after the request whose answer is the last (keep-alive bound, close): not answered
        self.requests += 1
        try:
            if self.overflow is not None:
                answer = self.door.refuse(method, self.headers, self.overflow)
            else:
                answer = self.door.answer_raw(method, self.url, self.headers)
        except Exception:  # noqa: BLE001 - never reached: answer() fails closed; still, no crash
            _log.exception("http door failed to answer")
            self._send(render(500, [], b"", close=True), last=True)
            return
        last = (
            not self.parser.should_keep_alive() or self.requests >= self.settings.max_requests_per_connection
        )
        self._send(answer, last)

    def _reject(self, status: int, cause: str) -> None:
        self.rejected, self.cause = status, cause
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

    def _fail(self, status: int, cause: str) -> None:
        """An error answer that ends the connection, after the answers still waiting (in order)."""
        if self.finished:
            return  # the last answer is decided: nothing may follow it
        self.door.rejected(status, cause)
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
            self._fail(408, "header_timeout")  # headers too slow: a slowloris costs no more than this socket
        elif not self.queue:
            self.closing = True
            self.transport.close()  # idle keep-alive connection


class _Reject(Exception):  # noqa: N818 - a control-flow signal out of the parser callbacks
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
