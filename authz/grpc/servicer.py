"""``envoy.service.auth.v3.Authorization/Check``: CheckRequest in, the core's check, CheckResponse out.

Identical repeats of a token's allow are answered from the answer memo (authz.core.memo), as
serialized bytes, when tracing is off.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from authz.config.holder import SnapshotHolder
from authz.core.check import Checker, Clock
from authz.core.decision import Decision, reject
from authz.core.memo import AnswerMemo
from authz.core.observe import NO_STEPS, NO_TRACE, Steps
from authz.core.request import AuthzRequest
from authz.core.snapshot import Snapshot
from authz.errors import Reason
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.drain import InFlight
from authz.grpc.messages import fallback_deny, parse, read, to_check_response
from authz.grpc.repeat import RepeatRead, read_repeat
from authz.grpc.wire import read_wire
from authz.telemetry.decision_log import RepeatedAnswer
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import CHECK_SPAN, TRACE_HEADERS, trace_id_from

__all__ = ["AUTHORIZATION_SERVICE", "AuthorizationService", "GrpcAnswers", "check", "evaluate"]

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


class GrpcAnswers:
    """The gRPC door's way of writing answers (the core's Door)."""

    __slots__ = ()

    def render(self, decision: Decision, request_id: str, carried: Iterable[str]) -> CheckResponse:
        return to_check_response(decision, request_id, carried)

    def fallback(self, request_id: str) -> CheckResponse:
        return fallback_deny(request_id)


ANSWERS = GrpcAnswers()


class SerializedAnswers:
    """The servicer's Door: the CheckResponse serialized, as the memo keeps and grpc sends it."""

    __slots__ = ()

    def render(self, decision: Decision, request_id: str, carried: Iterable[str]) -> bytes:
        data: bytes = to_check_response(decision, request_id, carried).SerializeToString()
        return data

    def fallback(self, request_id: str) -> bytes:
        data: bytes = fallback_deny(request_id).SerializeToString()
        return data


SERIALIZED = SerializedAnswers()
_log = logging.getLogger("authz.grpc")
_NAME = operator.itemgetter(0)
_T = TypeVar("_T")


class AuthorizationService:
    """The servicer, registered to receive the raw request bytes and send serialized answers.

    gRPC's own deserializer would answer an undecodable message with an RPC error;
    parsing here turns it into a deny like every other bad input. Answers go out as
    bytes, so that a repeat answered from the memo is sent as it was kept.
    """

    def __init__(
        self, holder: SnapshotHolder, clock: Clock = time.time, telemetry: Telemetry | None = None
    ) -> None:
        self._holder = holder
        self._clock = clock
        self._telemetry = telemetry or Telemetry()
        self._checker = Checker(clock, self._telemetry, holder.replay)
        self._memo: AnswerMemo[bytes] = AnswerMemo()
        self.in_flight = InFlight()

    @property
    def memo_hits(self) -> int:
        """Checks answered from the memo (``authz_grpc_memo_hits_total``)."""
        return int(self._telemetry.grpc_memo_hits.values.get((), 0))

    @property
    def memo_entries(self) -> int:
        """Answers kept for repeats, in the current snapshot's memo."""
        return len(self._memo)

    async def check(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any] | None) -> CheckResponse:
        """The answer as a message (tests, tools): what ``answer`` sends, parsed back."""
        response: CheckResponse = CheckResponse.FromString(await self.answer(data, context))
        return response

    async def answer(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any] | None) -> bytes:
        """Answer one serialized CheckRequest with a serialized CheckResponse (the registered handler)."""
        started = time.perf_counter()
        if context is not None:
            self.in_flight.begin(context)  # the drain waits for this answer to be sent
        config = self._holder.current  # once: the whole check runs on this snapshot
        remaining = _time_remaining(context)
        repeat: RepeatRead | None = None
        memo: Snapshot | None = None  # the snapshot whose memo may answer this check
        # Only checks that still have time: one queued past Envoy's deadline is shed (and counted).
        if config is not None and (remaining is None or remaining > 0):
            if self._telemetry.tracer is None and self._memo.usable(config.snapshot, config.server.memo_size):
                memo = config.snapshot
            else:
                self._memo.forget()  # memo off now: let the old snapshot go
        if memo is not None and read_wire is not None:  # from the bytes: a repeat needs no parse
            repeat, kept = self._look_up(read_wire, data, memo, context, started)
            if kept is not None:
                return kept
        parsed = parse(data)
        if memo is not None and repeat is None and isinstance(parsed, CheckRequest):
            repeat, kept = self._look_up(read_repeat, parsed, memo, context, started)
            if kept is not None:
                return kept
        request: AuthzRequest | None = None
        early: Decision | None = None
        request_id = ""
        if isinstance(parsed, Decision):
            early = parsed
        else:
            request, early, request_id = read(parsed)
        metadata = context.invocation_metadata() if context is not None else None
        trace = self._telemetry.begin(
            metadata or (), request.headers if request else None, CHECK_SPAN, grpc=True
        )
        if early is None and remaining is not None and remaining <= 0:
            # Queued past Envoy's deadline: Envoy has given up on this one. Shed it
            # without the crypto, so that a backlog drains instead of growing.
            early = reject(Reason.OVERLOADED, "deadline passed before the check started")
        snapshot = config.snapshot if config is not None else None
        answered = self._checker.run(
            snapshot,
            request,
            SERIALIZED,
            early=early,
            trace=trace,
            request_id=request_id,
            started=started,
            budget=remaining,
        )
        if not isinstance(answered, tuple):
            answered = await answered
        if repeat is not None and request is not None and snapshot is not None and trace.span is None:
            try:
                # The decision answered (an allow whose answer could not be built is an
                # internal_error deny by now): only an allow is ever kept.
                decision = answered.decision
                self._memo.remember(
                    snapshot,
                    repeat.key,
                    request=request,
                    decision=decision,
                    answer=answered.answer,
                    record=lambda: RepeatedAnswer.of(decision, request, snapshot.record),
                )
            except Exception:  # noqa: BLE001 - the answer stands; only its repeats are not kept
                _log.exception("grpc door: keeping an answer for its repeats failed")
        return answered.answer

    def _look_up(
        self,
        reader: Callable[[_T], RepeatRead | None],
        message: _T,
        snapshot: Snapshot,
        context: grpc.aio.ServicerContext[Any, Any] | None,
        started: float,
    ) -> tuple[RepeatRead | None, bytes | None]:
        """The memo's reading of ``message`` by ``reader``, and its kept answer if it still holds."""
        try:
            repeat = reader(message)
            return repeat, self._repeat(snapshot, repeat, context, started) if repeat else None
        except Exception:  # noqa: BLE001 - the full path answers whatever this could not read
            _log.exception("grpc door: reading a repeat failed; decided in full")
            return None, None

    def _repeat(
        self,
        snapshot: Snapshot,
        repeat: RepeatRead,
        context: grpc.aio.ServicerContext[Any, Any] | None,
        started: float,
    ) -> bytes | None:
        """The memo's answer to a repeated request, if it still holds; None to decide afresh."""
        try:
            now = self._clock()
        except Exception:  # noqa: BLE001 - the full path answers a failing clock
            return None
        certificate = repeat.certificate(snapshot.certificate_source)
        kept = self._memo.lookup(snapshot, repeat.key, now, certificate=certificate)
        if kept is None:
            return None
        metadata: Sequence[tuple[str, Any]] = (
            context.invocation_metadata() or () if context is not None else ()
        )
        trace_id = None
        if repeat.trace_headers is not None or not TRACE_HEADERS.isdisjoint(
            map(str.lower, map(_NAME, metadata))
        ):
            trace_id = trace_id_from(metadata, repeat.trace_headers)  # as the full path's log line has it
        self._telemetry.grpc_memo_hits.inc(())
        record: RepeatedAnswer = kept.record  # type: ignore[assignment]
        self._telemetry.repeat(
            record, request_id=repeat.request_id, trace_id=trace_id, elapsed=time.perf_counter() - started
        )
        return kept.answer

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            AUTHORIZATION_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.answer,
                    request_deserializer=None,
                    response_serializer=None,  # answers are serialized already (memo answers as kept)
                )
            },
        )


def evaluate(
    holder: SnapshotHolder, message: CheckRequest, clock: Clock, steps: Steps = NO_STEPS
) -> tuple[Decision, AuthzRequest | None, str]:
    """Decide one CheckRequest on the holder's current snapshot, with no refetch and no recording:
    (decision, the request as read, request id). What ``authz explain`` shows. Never raises."""
    config = holder.current
    request, early, request_id = read(message)
    if request is None:
        return early or reject(Reason.REQUEST_MALFORMED), None, request_id
    checker = Checker(clock, _StepsOnly(steps), holder.replay)
    return checker.decide(config.snapshot if config else None, request), request, request_id


def check(
    holder: SnapshotHolder, message: CheckRequest, clock: Clock, telemetry: Telemetry | None = None
) -> CheckResponse:
    """Answer one CheckRequest synchronously, without a span or refetch: the library and test entry point."""
    telemetry = telemetry or Telemetry()
    config = holder.current
    request, early, request_id = read(message)
    checker = Checker(clock, telemetry, holder.replay)
    snapshot = config.snapshot if config is not None else None
    decision = early if request is None else checker.decide(snapshot, request)
    answered = checker.finish(
        snapshot,
        request,
        decision or reject(Reason.REQUEST_MALFORMED),
        ANSWERS,
        trace=NO_TRACE,
        request_id=request_id,
        started=time.perf_counter(),
    )
    return answered.answer


class _StepsOnly:
    """A recorder that times steps through ``steps`` and records nothing (explain)."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Steps) -> None:
        self._steps = steps

    def step(self, name: str) -> Any:
        return self._steps.step(name)

    def finish(self, *args: object, **kwargs: object) -> None:
        pass


def _time_remaining(context: grpc.aio.ServicerContext[Any, Any] | None) -> float | None:
    """Seconds left before the caller's deadline (Envoy's grpc-timeout), None without one."""
    if context is None:
        return None
    try:
        remaining = context.time_remaining()
    except Exception:  # noqa: BLE001 - a context without deadlines
        return None
    return None if remaining is None else float(remaining)
