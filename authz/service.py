"""The Check servicer: CheckRequest -> AuthzRequest -> Decision -> CheckResponse.

It reads the current snapshot once per request (a reload swaps the reference,
so a request finishes on the snapshot it started with), never raises, and
writes one decision log line. The response is built before the decision is
recorded: one that cannot be built is answered, and recorded, as the
``internal_error`` deny it became (:func:`answer_failed`), in both doors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import grpc
from opentelemetry.context import Context

from authz._proto.envoy.config.core.v3.base_pb2 import HeaderValueOption
from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.config import Config
from authz.decision import NO_STEPS, Decision, Steps, Verdict, decide, reject
from authz.drain import InFlight
from authz.errors import AuthzError
from authz.request import AuthzRequest, from_check_request, request_id_of
from authz.response import to_check_response
from authz.telemetry import Telemetry, extract_parent

__all__ = [
    "AUTHORIZATION_SERVICE",
    "AuthorizationService",
    "SnapshotHolder",
    "answer_failed",
    "build_response",
    "check",
    "evaluate",
    "parse",
    "read",
    "refetch_issuer_keys",
    "refetch_source",
    "respond",
]

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"

_log = logging.getLogger("authz.decision")

Clock = Callable[[], float]
_DEFAULT_TELEMETRY = Telemetry()


class SnapshotHolder:
    """The current configuration snapshot. Replacing it is one reference assignment."""

    def __init__(self, config: Config | None = None) -> None:
        self.current: Config | None = config
        self.generation = 1 if config is not None else 0

    def swap(self, config: Config) -> None:
        self.current = config
        self.generation += 1


def read(message: CheckRequest) -> tuple[AuthzRequest | None, Decision | None, str]:
    """Read a CheckRequest: (request, None, request id), or (None, the deny, request id)."""
    try:
        request = from_check_request(message)
    except AuthzError as exc:
        return None, reject(exc.code, exc.detail), request_id_of(message)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return None, reject("request_malformed", f"unexpected {type(exc).__name__}"), request_id_of(message)
    return request, None, request.request_id


def parse(data: bytes) -> CheckRequest | Decision:
    """A serialized CheckRequest, or the deny for bytes that do not even parse."""
    try:
        message: CheckRequest = CheckRequest.FromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
        return reject("request_malformed", f"undecodable CheckRequest ({type(exc).__name__})")
    return message


def decide_request(
    config: Config | None, request: AuthzRequest, clock: Clock, steps: Steps = NO_STEPS
) -> Decision:
    """Decide a request on one snapshot (read once per check: a reload mid-check cannot split it)."""
    if config is None:
        return reject("not_ready", "no configuration loaded yet")
    try:
        now = clock()
    except Exception as exc:  # noqa: BLE001 - fail closed: even the clock may fail
        return reject("internal_error", f"clock failed ({type(exc).__name__})")
    return decide(config, request, now, steps)


def evaluate(
    holder: SnapshotHolder | Config | None, message: CheckRequest, clock: Clock, steps: Steps = NO_STEPS
) -> tuple[Decision, AuthzRequest | None, str]:
    """Decide one CheckRequest: (decision, the request as read, request id). Never raises.

    Given a holder, its current snapshot is read once; given a snapshot, that one decides.
    """
    config = holder.current if isinstance(holder, SnapshotHolder) else holder
    request, early, request_id = read(message)
    if request is None:
        return early or reject("request_malformed"), None, request_id
    return decide_request(config, request, clock, steps), request, request_id


def check(
    holder: SnapshotHolder, message: CheckRequest, clock: Clock, telemetry: Telemetry | None = None
) -> CheckResponse:
    """Answer one CheckRequest, synchronously, without a span: the library and test entry point."""
    start = time.perf_counter()
    telemetry = telemetry or _DEFAULT_TELEMETRY
    config = holder.current  # once: decision and telemetry settings from the same snapshot
    decision, request, request_id = evaluate(config, message, clock, telemetry)
    response, decision = build_response(decision, request_id, request.headers if request else ())
    telemetry.finish(
        None,
        decision,
        request,
        request_id=request_id,
        parent=Context(),
        elapsed=time.perf_counter() - start,
        settings=config.telemetry if config else None,
    )
    return response


def respond(decision: Decision, request_id: str, carried: Iterable[str] = ()) -> CheckResponse:
    """The CheckResponse of a decision (``carried``: the request's header names). Never raises."""
    return build_response(decision, request_id, carried)[0]


def build_response(
    decision: Decision, request_id: str, carried: Iterable[str] = ()
) -> tuple[CheckResponse, Decision]:
    """(the CheckResponse, the decision it answers). Never raises.

    When the response of ``decision`` cannot be built, the answer is the
    ``internal_error`` deny it became, and that is the decision to record.
    """
    try:
        return to_check_response(decision, request_id, carried), decision
    except Exception as exc:  # noqa: BLE001 - even a fault here must be a deny, not an RPC error
        _log.exception("building the response failed; answered internal_error")
        return _fallback_deny(request_id), answer_failed(decision, exc)


def answer_failed(decision: Decision, exc: BaseException) -> Decision:
    """The deny a decision became because its answer could not be built: what is answered and recorded.

    Tenant, rule and key ids stay (whose check failed, and where); the identity
    goes: it may be the very value that could not be sent.
    """
    return replace(
        decision,
        verdict=Verdict.DENY,
        reason="internal_error",
        subject=None,
        scopes=(),
        identity=False,
        missing_scopes=(),
        detail=f"building the answer failed ({type(exc).__name__})",
    )


def refetch_source(config: Config | None, decision: Decision) -> Any:
    """The jwks_uri source worth refetching for this deny (an unknown signing kid), or None."""
    if config is None or decision.reason != "signing_key_unknown" or decision.issuer is None:
        return None
    return getattr(config.token_keys.issuers.get(decision.issuer), "remote", None)


async def refetch_issuer_keys(config: Config | None, decision: Decision, budget: float | None = None) -> bool:
    """A token named a signing kid its issuer lacks: refetch that issuer's jwks_uri.

    Rate-limited per source, and waits at most the configured bound; True when
    fresh keys arrived, so the request is worth evaluating once more.
    """
    remote = refetch_source(config, decision)
    if remote is None or config is None:
        return False
    wait = config.server.jwks_unknown_kid_wait
    if budget is not None:
        wait = min(wait, budget * 0.5)  # leave the caller's deadline room for the answer
    if wait <= 0:
        return False
    refreshed: bool = await remote.refetch_for_unknown_kid(wait)
    return refreshed


class AuthorizationService:
    """``envoy.service.auth.v3.Authorization``, registered to receive the raw request bytes.

    gRPC's own deserializer would answer an undecodable message with an RPC
    error; parsing here turns it into a deny like every other bad input.
    """

    def __init__(
        self, holder: SnapshotHolder, clock: Clock = time.time, telemetry: Telemetry | None = None
    ) -> None:
        self._holder = holder
        self._clock = clock
        self._telemetry = telemetry or Telemetry()
        self.in_flight = InFlight()

    async def check(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any] | None) -> CheckResponse:
        start = time.perf_counter()
        if context is not None:
            self.in_flight.begin(context)  # the drain waits for this answer to be sent
        telemetry = self._telemetry
        config = self._holder.current  # once: the whole check runs on this snapshot
        parsed = parse(data)
        request: AuthzRequest | None = None
        early: Decision | None = parsed if isinstance(parsed, Decision) else None
        request_id = ""
        if not isinstance(parsed, Decision):
            request, early, request_id = read(parsed)
        metadata = context.invocation_metadata() if context is not None else None
        parent = extract_parent(metadata or (), request.headers if request else None)
        remaining = _time_remaining(context)
        with telemetry.check_span(parent) as span:
            if request is None:
                decision = early or reject("request_malformed")
            elif remaining is not None and remaining <= 0:
                # Queued past Envoy's deadline: Envoy has given up on this one. Shed it
                # without the crypto, so that a backlog drains instead of growing.
                decision = reject("overloaded", "deadline passed before the check started")
            else:
                decision = decide_request(config, request, self._clock, telemetry)
                if refetch_source(config, decision) is not None and await refetch_issuer_keys(
                    config, decision, remaining
                ):
                    decision = decide_request(config, request, self._clock, telemetry)
            # Built first, recorded second: what is recorded is what is answered.
            response, decision = build_response(decision, request_id, request.headers if request else ())
            telemetry.finish(
                span,
                decision,
                request,
                request_id=request_id,
                parent=parent,
                elapsed=time.perf_counter() - start,
                settings=config.telemetry if config else None,
            )
        return response

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


def _time_remaining(context: grpc.aio.ServicerContext[Any, Any] | None) -> float | None:
    """Seconds left before the caller's deadline (Envoy's grpc-timeout), None without one."""
    if context is None:
        return None
    try:
        remaining = context.time_remaining()
    except Exception:  # noqa: BLE001 - a context without deadlines
        return None
    return None if remaining is None else float(remaining)


def _fallback_deny(request_id: str) -> CheckResponse:
    """The ``internal_error`` deny, built from constants: it cannot fail as the response it replaces did.

    The same message as ``to_check_response(reject("internal_error"), request_id)``
    (tests hold them equal); ``json.dumps`` escapes the request id to ASCII.
    """
    response = CheckResponse()
    fields = response.dynamic_metadata.fields
    fields["decision"].string_value = "deny"
    fields["reason"].string_value = "internal_error"
    response.status.code = 13  # INTERNAL
    denied = response.denied_response
    denied.status.code = 500  # type: ignore[assignment]
    for name, value in (("content-type", "application/json"), ("cache-control", "no-store")):
        option = denied.headers.add()
        option.header.key = name
        option.header.value = value
        option.append_action = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    rid = json.dumps(request_id)
    denied.body = f'{{"error": "server_error", "reason": "internal_error", "request_id": {rid}}}'
    return response
