"""The HTTP door: a listener for Envoy's HTTP ext_authz protocol on asyncio + httptools.

It answers with the core's check sequence, and identical repeats of a token's allow from
the answer memo (authz.core.memo) when tracing is off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from authz.config.holder import SnapshotHolder
from authz.config.settings import HttpSettings
from authz.core.answer import IDENTITY_HEADERS, identity_spellings
from authz.core.check import Answered, Checker, Clock
from authz.core.decision import Decision, reject
from authz.core.memo import NEVER_REPEATED_HEADERS, AnswerMemo, dpop_scheme
from authz.core.request import METHOD_OVERRIDE_HEADERS, XFCC_HEADER, AuthzRequest, plain_request_id
from authz.errors import AuthzError, Reason
from authz.http.protocol import Connection, RawHeaders
from authz.http.wire import HEAD_ANSWERS, HTTP_ANSWERS, from_http, http_request_id
from authz.telemetry.decision_log import RepeatedAnswer
from authz.telemetry.logs import Throttle
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import HTTP_SPAN, trace_id_of

__all__ = ["HttpDoor", "memo_key"]

_log = logging.getLogger("authz.http")
# Request headers the door looks at before deciding whether it has seen this request already.
_HOST, _AUTHORIZATION, _REQUEST_ID, _AUTHORITY = b"host", b"authorization", b"x-request-id", b":authority"
# The client certificate (certificate-bound tokens): its bytes are part of the memo key.
_XFCC = XFCC_HEADER.encode("ascii")
# A DPoP proof is single-use: a request with one is never a memo repeat (core.memo's rule).
_NEVER = frozenset(name.encode("ascii") for name in NEVER_REPEATED_HEADERS)
_TRACE_HEADERS = frozenset(
    {b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags",
     b"x-b3-parentspanid"}
)  # fmt: skip
_NOTABLE = frozenset({_HOST, _AUTHORIZATION, _REQUEST_ID, _AUTHORITY, _XFCC}) | _TRACE_HEADERS
# A method override is decided on (method_override), so a request carrying one is never a memo repeat.
_OVERRIDES = frozenset(name.encode("ascii") for name in METHOD_OVERRIDE_HEADERS) | _NEVER
# Another spelling of an identity header (x_authz_subject) is named in its answer's removals,
# so a request that carries one is no repeat of one that did not: the memo never answers it.
_SPELLING_LENGTHS = frozenset(len(name) for name in IDENTITY_HEADERS)


def memo_key(
    method: bytes, target: bytes, host: bytes, authorization: bytes, certificate: bytes = b""
) -> bytes:
    """A digest of everything the decision reads from an HTTP-door request.

    A digest, not the bytes themselves: an entry costs the same whatever the size of the
    request target and token. Length prefixes keep the fields apart. ``certificate``:
    the x-forwarded-client-cert value (a certificate-bound token's decision reads it).
    """
    lengths = b"%d:%d:%d:%d:" % (len(method), len(target), len(host), len(authorization))
    return hashlib.blake2b(
        lengths + method + target + host + authorization + certificate, digest_size=20
    ).digest()


class HttpDoor:
    """Listens, accepts, and answers each request with the core's check."""

    def __init__(
        self, holder: SnapshotHolder, clock: Clock, telemetry: Telemetry, settings: HttpSettings
    ) -> None:
        self.holder = holder
        self.clock = clock
        self.telemetry = telemetry
        self.settings = settings
        self.checker = Checker(clock, telemetry, holder.replay)
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._memo: AnswerMemo[bytes] = AnswerMemo()
        self._rejections = Throttle(1.0)  # log lines of connection-level refusals: one a second per cause

    async def start(self, listen: str, *, reuse_port: bool = False) -> int:
        host, _, port = listen.rpartition(":")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
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
        """Answer a request as the parser delivered it: from the memo if it is a repeat, else check."""
        start = time.perf_counter()
        config = self.holder.current
        key: bytes | None = None
        if (
            config is not None
            and self.telemetry.tracer is None
            and self._memo.usable(config.snapshot, config.http.memo_size)
        ):
            host = authorization = request_id = certificate = None
            traced = False
            for name, value in raw:
                lowered = name.lower()
                if lowered not in _NOTABLE:
                    if lowered in _OVERRIDES:
                        break
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
                elif lowered == _XFCC:
                    if certificate is not None:
                        break
                    certificate = value
                else:
                    traced = True
            else:
                if host is not None and authorization is not None and not dpop_scheme(authorization):
                    key = memo_key(method, target, host, authorization, certificate or b"")
                    answer = self._repeat(
                        config.snapshot, key, start, request_id, raw if traced else None, certificate or b""
                    )
                    if answer is not None:
                        return answer
        else:
            self._memo.forget()  # memo off now: let the old snapshot go
        return self.answer(method.decode("latin-1"), target.decode("latin-1"), _plain(raw), remember_as=key)

    def refuse(self, method: bytes, raw: RawHeaders, reason: Reason) -> bytes | asyncio.Task[bytes]:
        """The recorded deny of a request read past a soft limit (``raw``: what was kept of it)."""
        if reason is Reason.PATH_INVALID:
            detail = "request target over http.max_header_bytes"
        else:
            detail = "headers over http.max_header_bytes or http.max_headers"
        return self.answer(method.decode("latin-1"), "", _plain(raw), early=reject(reason, detail))

    def rejected(self, status: int, cause: str) -> None:
        """A request answered ``status`` without a decision, its connection closed: counted, and logged."""
        self.telemetry.http_rejections.inc((str(status), cause))
        left_out = self._rejections.admit(cause)
        if left_out is not None:
            _log.warning(
                "http door refused a request and closed its connection",
                extra={"fields": {"status": status, "cause": cause, "left_out": left_out}},
            )

    def _repeat(  # noqa: PLR0917 - the request's parts as answer_raw found them
        self,
        snapshot: Any,
        key: bytes,
        start: float,
        request_id: bytes | None,
        traced: RawHeaders | None,
        certificate: bytes,
    ) -> bytes | None:
        """The memo's answer to a repeated request, if it still holds; None to decide afresh."""
        try:
            now = self.clock()
        except Exception:  # noqa: BLE001 - the full path answers a failing clock
            return None
        kept = self._memo.lookup(snapshot, key, now, certificate=certificate.decode("latin-1"))
        if kept is None:
            return None
        rid = plain_request_id(request_id.decode("latin-1")) if request_id else ""
        trace_id = None
        if traced is not None:
            carrier: dict[str, str] = {}
            for name, value in traced:  # the first of each, as the full path reads them
                carrier.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            trace_id = trace_id_of(carrier)
        self.telemetry.memo_hits.inc(())
        record: RepeatedAnswer = kept.record  # type: ignore[assignment]
        self.telemetry.repeat(record, request_id=rid, trace_id=trace_id, elapsed=time.perf_counter() - start)
        return kept.answer

    def answer(
        self,
        method: str,
        target: str,
        headers: dict[str, tuple[str, ...]],
        *,
        remember_as: bytes | None = None,
        early: Decision | None = None,
    ) -> bytes | asyncio.Task[bytes]:
        """The response bytes, or a task when an unknown kid makes a key refetch worth a wait.

        ``early``: the deny the connection reached itself (a request read past a soft limit).
        """
        start = time.perf_counter()
        config = self.holder.current  # once: the whole check runs on this snapshot
        snapshot = config.snapshot if config is not None else None
        request: AuthzRequest | None = None
        if early is None:
            try:
                prefix = config.http.path_prefix if config else ""
                request = from_http(method, target, headers, path_prefix=prefix)
            except AuthzError as exc:
                early = reject(exc.code, exc.detail)
            except Exception as exc:  # noqa: BLE001 - fail closed
                early = reject(Reason.REQUEST_MALFORMED, f"unexpected {type(exc).__name__}")
        trace = self.telemetry.begin((), request.headers if request else None, HTTP_SPAN, grpc=False)
        answered = self.checker.run(
            snapshot,
            request,
            HEAD_ANSWERS if method == "HEAD" else HTTP_ANSWERS,
            early=early,
            trace=trace,
            request_id=request.request_id if request else http_request_id(headers),
            started=start,
        )
        if not isinstance(answered, tuple):
            # Only an issuer with a jwks_uri can learn a new kid: worth a (bounded) wait.
            return asyncio.ensure_future(_answer_of(answered))
        if remember_as is not None and request is not None and snapshot is not None and trace.span is None:
            try:
                # The decision answered (an allow whose answer could not be built is
                # an internal_error deny by now): only an allow is ever kept.
                decision = answered.decision
                self._memo.remember(
                    snapshot,
                    remember_as,
                    request=request,
                    decision=decision,
                    answer=answered.answer,
                    record=lambda: RepeatedAnswer.of(decision, request, snapshot.record),
                )
            except Exception:  # noqa: BLE001 - the answer stands; only its repeats are not kept
                _log.exception("http door: keeping an answer for its repeats failed")
        return answered.answer


def _plain(raw: RawHeaders) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {name: tuple(values) for name, values in headers.items()}


async def _answer_of(pending: Coroutine[Any, Any, Answered[bytes]]) -> bytes:
    return (await pending).answer
