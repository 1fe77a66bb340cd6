"""``envoy.service.auth.v3.Authorization/Check``: CheckRequest in, the core's check, CheckResponse out."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc

from authz.config.holder import SnapshotHolder
from authz.core.check import Checker, Clock
from authz.core.decision import Decision, reject
from authz.core.observe import NO_STEPS, NO_TRACE, Steps
from authz.core.request import AuthzRequest
from authz.errors import Reason
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.drain import InFlight
from authz.grpc.messages import fallback_deny, parse, read, to_check_response
from authz.telemetry.recorder import Telemetry
from authz.telemetry.tracing import CHECK_SPAN

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


class AuthorizationService:
    """The servicer, registered to receive the raw request bytes.

    gRPC's own deserializer would answer an undecodable message with an RPC error;
    parsing here turns it into a deny like every other bad input.
    """

    def __init__(
        self, holder: SnapshotHolder, clock: Clock = time.time, telemetry: Telemetry | None = None
    ) -> None:
        self._holder = holder
        self._telemetry = telemetry or Telemetry()
        self._checker = Checker(clock, self._telemetry, holder.replay)
        self.in_flight = InFlight()

    async def check(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any] | None) -> CheckResponse:
        started = time.perf_counter()
        if context is not None:
            self.in_flight.begin(context)  # the drain waits for this answer to be sent
        config = self._holder.current  # once: the whole check runs on this snapshot
        parsed = parse(data)
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
        remaining = _time_remaining(context)
        if early is None and remaining is not None and remaining <= 0:
            # Queued past Envoy's deadline: Envoy has given up on this one. Shed it
            # without the crypto, so that a backlog drains instead of growing.
            early = reject(Reason.OVERLOADED, "deadline passed before the check started")
        answered = self._checker.run(
            config.snapshot if config is not None else None,
            request,
            ANSWERS,
            early=early,
            trace=trace,
            request_id=request_id,
            started=started,
            budget=remaining,
        )
        if not isinstance(answered, tuple):
            answered = await answered
        return answered.answer

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            AUTHORIZATION_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check,
                    request_deserializer=None,
                    response_serializer=CheckResponse.SerializeToString,
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
