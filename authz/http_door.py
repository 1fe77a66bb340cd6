"""The HTTP door: Envoy's HTTP ext_authz protocol (``http_service``) on asyncio + httptools.

The gRPC door stays the primary interface; this one exists because it is
cheap: a ``grpc.aio`` call costs hundreds of microseconds of Python per check,
an HTTP/1.1 request parsed by httptools on an ``asyncio.Protocol`` a few tens.
Both doors share the snapshot, the decision, the cache, telemetry and the
decision log; only reading the request and writing the answer differ.

Envoy sends the original method and path (its ``path_prefix`` first, stripped
here) and the headers its ``allowed_headers`` let through (``host`` and
``authorization`` at least; ``traceparent``/``tracestate``/B3 of its own client
span). Allow is 200 with the ``x-authz-*`` identity headers (Envoy copies those
named in ``allowed_upstream_headers``) and ``x-envoy-auth-headers-to-remove``;
deny is 401/403/400 with ``www-authenticate`` and the JSON body (passed to the
client through ``allowed_client_headers``). A HEAD check gets the same status
and headers, ``content-length`` included, without the body (RFC 9110 §9.3.2):
Envoy reads no body after a HEAD, and extra bytes would cost it the connection.

An answer is built before it is recorded: if building it fails (a header value
that cannot be sent, say), the check is answered with an ``internal_error``
deny, and that deny is what the metrics, span and decision log record.

Hostile clients: request line and headers are bounded in size and count, and
must arrive within ``header_timeout`` (a slowloris connection costs one socket
and one deadline); idle keep-alive connections close after ``idle_timeout`` and
after ``max_requests_per_connection`` requests; connections are bounded; a
malformed request is answered 400 and the connection closed, and so is a
request to switch protocols (``CONNECT``, or ``Upgrade`` named in
``Connection``: websocket, h2c): a check never upgrades, and the bytes after
such a request are not HTTP. Timeouts are
deadlines on the connection, checked by one sweep per door (a fraction of the
shortest timeout apart), not a timer per request.

Repeated requests: Envoy asks about the same (method, path, host, token) over
and over. With the token cache on and tracing off, a token's allow is kept,
rendered, in a bounded answer memo of the snapshot (keyed by a digest of the
exact method, target, host and authorization bytes) and served again while it
provably holds: same snapshot (a reload starts an empty memo), the token's
entry in the verified-token cache unchanged (so a JWKS refresh, the token's
expiry or an eviction retire it), and ``now`` inside the claims' time window.
A repeat records the same metrics and decision log line as the first answer.
Only allows of a verified token are kept; anything else is decided afresh, and
so is a request carrying another spelling of an identity header (its answer
names that header for removal).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import cast

import httptools
from opentelemetry import trace
from opentelemetry.context import Context

from authz.config import Config, HttpSettings
from authz.decision import Decision, Verdict, reject
from authz.errors import AuthzError
from authz.jose.nested import VerifiedToken
from authz.request import AuthzRequest, bearer_token, from_http, http_request_id
from authz.response import IDENTITY_HEADERS, identity_spellings, to_http_response
from authz.service import (
    Clock,
    SnapshotHolder,
    answer_failed,
    decide_request,
    refetch_issuer_keys,
    refetch_source,
)
from authz.telemetry import RepeatedAnswer, Telemetry, extract_parent, trace_id_of

__all__ = ["HttpDoor", "HttpSettings"]

_log = logging.getLogger("authz.http")
HTTP_SPAN = "envoy ext_authz http check"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_MAX_PIPELINE = 32
# Request headers the door looks at before deciding whether it has seen this request already.
_HOST, _AUTHORIZATION, _REQUEST_ID, _AUTHORITY = b"host", b"authorization", b"x-request-id", b":authority"
_TRACE_HEADERS = frozenset(
    {b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags",
     b"x-b3-parentspanid"}
)  # fmt: skip
_NOTABLE = frozenset({_HOST, _AUTHORIZATION, _REQUEST_ID, _AUTHORITY}) | _TRACE_HEADERS
# Another spelling of an identity header (x_authz_subject) is named in its answer's removals,
# so a request that carries one is no repeat of one that did not: the memo never answers it.
_SPELLING_LENGTHS = frozenset(len(name) for name in IDENTITY_HEADERS)

RawHeaders = list[tuple[bytes, bytes]]


def memo_key(method: bytes, target: bytes, host: bytes, authorization: bytes) -> bytes:
    """A digest of everything the decision reads from an HTTP-door request.

    A digest, not the bytes themselves: an entry costs the same whatever the
    size of the request target and token (the memo's memory is bounded by its
    entry count). Length prefixes keep the fields apart.
    """
    lengths = b"%d:%d:%d:" % (len(method), len(target), len(host))
    return hashlib.blake2b(lengths + method + target + host + authorization, digest_size=20).digest()


@dataclass(frozen=True, slots=True)
class _Memo:
    """An allow answered once, kept to answer its repeats (see the module docstring)."""

    response: bytes
    record: RepeatedAnswer
    valid_from: float
    valid_until: float
    # The token's key in the verified-token cache, and the entry's token this answer was decided on.
    token: tuple[bytes, VerifiedToken]


class HttpDoor:
    """Listens, accepts, and answers with the shared decision path."""

    def __init__(
        self, holder: SnapshotHolder, clock: Clock, telemetry: Telemetry, settings: HttpSettings
    ) -> None:
        self.holder = holder
        self.clock = clock
        self.telemetry = telemetry
        self.settings = settings
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._memo: dict[bytes, _Memo] = {}
        self._memo_config: Config | None = None

    async def start(self, listen: str, *, reuse_port: bool = False) -> int:
        host, _, port = listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host.strip("[]") or None,
            int(port),
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        sock = self._server.sockets[0]
        self._sweep()
        return int(sock.getsockname()[1])

    @property
    def memo_hits(self) -> int:
        """Checks answered from the memo (``authz_http_memo_hits_total``)."""
        return int(self.telemetry.memo_hits.values.get((), 0))

    @property
    def memo_entries(self) -> int:
        """Answers kept for repeats, in the current snapshot's memo."""
        return len(self._memo)

    def _sweep(self) -> None:
        """Close the connections whose header or idle deadline has passed; then again, a tick later."""
        try:
            now = time.monotonic()
            for connection in list(self.connections):
                if 0.0 < connection.deadline <= now:
                    try:
                        connection.expired()
                    except Exception:  # noqa: BLE001 - one connection's fault must not stop every timeout
                        _log.exception("http door: closing an expired connection failed")
                        connection.abort()
        finally:
            settings = self.settings
            tick = min(1.0, max(0.02, min(settings.header_timeout, settings.idle_timeout) / 8))
            self._sweeper = asyncio.get_running_loop().call_later(tick, self._sweep)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let answers in progress finish (bounded); close the rest."""
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + grace
        for connection in list(self.connections):
            connection.close_when_idle()
        # The sweep keeps cutting slow and idle connections while the others drain.
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()
        self._server = None

    # -- one request -----------------------------------------------------------

    def answer_raw(self, method: bytes, target: bytes, raw: RawHeaders) -> bytes | asyncio.Task[bytes]:
        """Answer a request as the parser delivered it: from the memo if it is a repeat, else decide."""
        start = time.perf_counter()
        config = self.holder.current
        key: bytes | None = None
        if (
            config is not None
            and self.telemetry.tracer is None
            and config.http.memo_size > 0
            and config.cache.max_entries > 0
        ):
            host = authorization = request_id = None
            traced = False
            for name, value in raw:
                lowered = name.lower()
                if lowered not in _NOTABLE:
                    if (
                        len(lowered) in _SPELLING_LENGTHS
                        and lowered[2:7] == b"authz"
                        and identity_spellings((lowered.decode("latin-1"),))
                    ):
                        break  # not a request the memo may answer (see _SPELLING_LENGTHS)
                    continue
                if lowered == _HOST:
                    if host is not None:
                        break  # several: not a request the memo may answer
                    host = value
                elif lowered == _AUTHORIZATION:
                    if authorization is not None:
                        break
                    authorization = value
                elif lowered == _REQUEST_ID:
                    if request_id is None:
                        request_id = value  # the first, as the full path reads it
                elif lowered == _AUTHORITY:
                    break
                else:
                    traced = True
            else:
                if host is not None and authorization is not None:
                    key = memo_key(method, target, host, authorization)
                    answer = self._repeat(config, key, start, request_id, raw if traced else None)
                    if answer is not None:
                        return answer
        elif self._memo_config is not None:
            self._memo, self._memo_config = {}, None  # memo off now: let the old snapshot go
        headers: dict[str, list[str]] = {}
        for name, value in raw:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        plain = {name: tuple(values) for name, values in headers.items()}
        return self.answer(method.decode("latin-1"), target.decode("latin-1"), plain, remember_as=key)

    def _repeat(
        self, config: Config, key: bytes, start: float, request_id: bytes | None, traced: RawHeaders | None
    ) -> bytes | None:
        """The memo's answer to a repeated request, if it still holds; None to decide afresh."""
        if config is not self._memo_config:
            self._memo, self._memo_config = {}, config  # a new snapshot: nothing decided before holds
            return None
        memo = self._memo.get(key)
        if memo is None:
            return None
        try:
            now = self.clock()
        except Exception:  # noqa: BLE001 - the full path answers a failing clock
            return None
        if not memo.valid_from <= now < memo.valid_until:
            return None
        # The verified-token cache decides whether the token's verification still holds
        # (JWKS refresh, expiry, eviction); it also counts the hit.
        if not config.cache.holds(*memo.token, config.token_keys, now):
            return None
        rid = request_id.decode("latin-1") if request_id else ""
        rid = rid if http_request_id({"x-request-id": (rid,)}) else ""
        trace_id = None
        if traced is not None:
            carrier: dict[str, str] = {}
            for name, value in traced:  # the first of each, as the full path reads them
                carrier.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            trace_id = trace_id_of(carrier)
        self.telemetry.memo_hits.inc(())
        self.telemetry.repeat(
            memo.record, request_id=rid, trace_id=trace_id, elapsed=time.perf_counter() - start
        )
        return memo.response

    def _remember(
        self, config: Config | None, key: bytes, request: AuthzRequest, decision: Decision, response: bytes
    ) -> None:
        """Keep a token's allow for its repeats (only what the memo can prove still holds; see _repeat)."""
        if (
            config is None
            or config is not self._memo_config
            or decision.verdict is not Verdict.ALLOW
            or not decision.token_present  # a public rule by host: cheap to decide, tied to no token
        ):
            return
        token = bearer_token(request)
        if token is None:
            return
        cache_key = config.cache.key(token)
        verified = config.cache.peek(cache_key)
        if verified is None:
            return  # not cached (yet): nothing to tie the answer to
        memo = self._memo
        if key not in memo:
            while len(memo) >= config.http.memo_size:
                del memo[next(iter(memo))]  # the oldest first
        memo[key] = _Memo(
            response=response,
            record=RepeatedAnswer.of(decision, request, config.telemetry),
            valid_from=decision.valid_from,
            valid_until=decision.valid_until,
            token=(cache_key, verified),
        )

    def answer(
        self,
        method: str,
        target: str,
        headers: dict[str, tuple[str, ...]],
        *,
        remember_as: bytes | None = None,
    ) -> bytes | asyncio.Task[bytes]:
        """The response bytes, or a task when an unknown kid makes a key refetch worth a wait."""
        start = time.perf_counter()
        config = self.holder.current  # once: the whole check runs on this snapshot
        request: AuthzRequest | None = None
        early: Decision | None = None
        try:
            prefix = config.http.path_prefix if config else ""
            request = from_http(method, target, headers, path_prefix=prefix)
        except AuthzError as exc:
            early = reject(exc.code, exc.detail)
        except Exception as exc:  # noqa: BLE001 - fail closed
            early = reject("request_malformed", f"unexpected {type(exc).__name__}")
        telemetry = self.telemetry
        parent = extract_parent((), request.headers if request else None)
        span = telemetry.open_span(parent, HTTP_SPAN)
        with telemetry.active(span):
            if request is None:
                decision = early or reject("request_malformed")
            else:
                decision = decide_request(config, request, self.clock, telemetry)
        head = method == "HEAD"
        if request is not None and refetch_source(config, decision) is not None:
            # Only an issuer with a jwks_uri can learn a new kid: worth a (bounded) wait.
            return asyncio.ensure_future(
                self._refetch_then_answer(
                    config, request, decision, span=span, parent=parent, start=start, head=head
                )
            )
        request_id = request.request_id if request else http_request_id(headers)
        response, decision = self._finish(
            config, request, decision, span=span, parent=parent, start=start, request_id=request_id, head=head
        )
        if remember_as is not None and request is not None and span is None:
            try:
                # The decision answered (an allow whose answer could not be built is
                # an internal_error deny by now): only an allow is ever kept.
                self._remember(config, remember_as, request, decision, response)
            except Exception:  # noqa: BLE001 - the answer stands; only its repeats are not kept
                _log.exception("http door: keeping an answer for its repeats failed")
        return response

    async def _refetch_then_answer(
        self,
        config: Config | None,
        request: AuthzRequest,
        decision: Decision,
        *,
        span: trace.Span | None,
        parent: Context,
        start: float,
        head: bool,
    ) -> bytes:
        if await refetch_issuer_keys(config, decision):
            with self.telemetry.active(span):
                decision = decide_request(config, request, self.clock, self.telemetry)
        response, _ = self._finish(
            config,
            request,
            decision,
            span=span,
            parent=parent,
            start=start,
            request_id=request.request_id,
            head=head,
        )
        return response

    def _finish(
        self,
        config: Config | None,
        request: AuthzRequest | None,
        decision: Decision,
        *,
        span: trace.Span | None,
        parent: Context,
        start: float,
        request_id: str,
        head: bool,
    ) -> tuple[bytes, Decision]:
        """Build the answer, then record what it says: (the answer, the decision it answers)."""
        try:
            carried = request.headers if request else ()
            status, headers, body = to_http_response(decision, request_id, carried)
            response = _render(status, headers, body, head=head)
        except Exception as exc:  # noqa: BLE001 - e.g. a header value Latin-1 cannot carry
            _log.exception("http door: building the answer failed; answered internal_error")
            decision = answer_failed(decision, exc)
            response = _internal_error(request_id, head=head)
        self.telemetry.finish(
            span,
            decision,
            request,
            request_id=request_id,
            parent=parent,
            elapsed=time.perf_counter() - start,
            settings=config.telemetry if config else None,
        )
        if span is not None:
            span.end()
        return response, decision


def _closing(answer: bytes) -> bytes:
    """The answer with ``connection: close``: the client must not send on this connection again."""
    if b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n":
        return answer
    return answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)


def _render(
    status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool = False, head: bool = False
) -> bytes:
    """The response bytes; for a HEAD request, everything but the body (its length is still said)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


_INTERNAL_ERROR_HEAD = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: %d\r\n"
    b"content-type: application/json\r\ncache-control: no-store\r\n\r\n"
)


def _internal_error(request_id: str, *, head: bool) -> bytes:
    """The ``internal_error`` deny, built from constants: it cannot fail as the answer it replaces did.

    The same bytes as rendering ``reject("internal_error")`` (tests hold them
    equal); ``json.dumps`` escapes any character of the request id to ASCII.
    """
    body = b'{"error": "server_error", "reason": "internal_error", "request_id": %s}' % (
        json.dumps(request_id).encode("ascii")
    )
    return _INTERNAL_ERROR_HEAD % len(body) + (b"" if head else body)


class _Connection(asyncio.Protocol):
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
            transport.write(_render(503, [], b"", close=True))
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
            self._send(_render(500, [], b"", close=True), last=True)
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
            self.transport.write(_closing(answer) if last else answer)
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
                self.transport.write(_closing(answer) if last else answer)
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
        self._send(_render(status, [], b"", close=True), last=True)
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
