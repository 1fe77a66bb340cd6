"""The Check servicer: CheckRequest -> AuthzRequest -> Decision -> CheckResponse.

It reads the current snapshot once per request (a reload swaps the reference,
so a request finishes on the snapshot it started with), never raises, and
writes one decision log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import grpc

from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.config import Config
from authz.decision import Decision, decide, reject
from authz.errors import AuthzError
from authz.request import AuthzRequest, from_check_request
from authz.response import to_check_response

__all__ = [
    "AUTHORIZATION_SERVICE",
    "AuthorizationService",
    "SnapshotHolder",
    "check",
    "evaluate",
    "evaluate_bytes",
    "refetch_issuer_keys",
    "respond",
]

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"

_log = logging.getLogger("authz.decision")

Clock = Callable[[], float]


class SnapshotHolder:
    """The current configuration snapshot. Replacing it is one reference assignment."""

    def __init__(self, config: Config | None = None) -> None:
        self.current: Config | None = config
        self.generation = 1 if config is not None else 0

    def swap(self, config: Config) -> None:
        self.current = config
        self.generation += 1


def evaluate(
    holder: SnapshotHolder, message: CheckRequest, clock: Clock
) -> tuple[Decision, AuthzRequest | None, str]:
    """Decide one CheckRequest: (decision, the request as read, request id). Never raises."""
    config = holder.current
    request: AuthzRequest | None = None
    try:
        request = from_check_request(message)
        if config is None:
            return reject("not_ready", "no configuration loaded yet"), request, request.request_id
        return decide(config, request, clock()), request, request.request_id
    except AuthzError as exc:
        return reject(exc.code, exc.detail), request, _request_id(message)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return reject("request_malformed", f"unexpected {type(exc).__name__}"), request, _request_id(message)


# The same rule as authz.request: an id we echo must be short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _request_id(message: CheckRequest) -> str:
    """The request id of a request that could not be read (e.g. path_invalid), or ""."""
    try:
        http = message.attributes.request.http
        candidates = [
            h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            for h in http.header_map.headers
            if h.key.lower() == "x-request-id"
        ]
        candidates += [v for k, v in http.headers.items() if k.lower() == "x-request-id"]
        candidates.append(http.id)
        value = next((c for c in candidates if c), "")
        return value if _REQUEST_ID.fullmatch(value) else ""
    except Exception:  # noqa: BLE001 - the id is a courtesy; never let it turn a deny into an error
        return ""


def check(holder: SnapshotHolder, message: CheckRequest, clock: Clock) -> CheckResponse:
    """Answer one CheckRequest and log the decision. Never raises: every failure is a deny."""
    return respond(*evaluate(holder, message, clock))


def evaluate_bytes(
    holder: SnapshotHolder, data: bytes, clock: Clock
) -> tuple[Decision, AuthzRequest | None, str]:
    """:func:`evaluate` for a serialized CheckRequest: one that does not even parse is a deny."""
    try:
        message = CheckRequest.FromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string field
        return reject("request_malformed", f"undecodable CheckRequest ({type(exc).__name__})"), None, ""
    return evaluate(holder, message, clock)


def respond(decision: Decision, request: AuthzRequest | None, request_id: str) -> CheckResponse:
    """Log the decision and build its CheckResponse. Never raises."""
    try:
        _log_decision(decision, request, request_id)
        return to_check_response(decision, request_id)
    except Exception:  # noqa: BLE001 - even a fault here must be a deny, not an RPC error
        _log.exception("building the response failed")
        return _fallback_deny()


async def refetch_issuer_keys(config: Config | None) -> bool:
    """A token named a signing kid we lack: refetch the jwks_uri sources (rate-limited).

    Waits at most the configured bound; True when some source got fresh keys,
    so the request is worth evaluating once more.
    """
    if config is None or not config.remote_jwks:
        return False
    wait = config.server.jwks_unknown_kid_wait
    results = await asyncio.gather(*(r.refetch_for_unknown_kid(wait) for r in config.remote_jwks))
    return any(results)


class AuthorizationService:
    """``envoy.service.auth.v3.Authorization``, registered to receive the raw request bytes.

    gRPC's own deserializer would answer an undecodable message with an RPC
    error; parsing here turns it into a deny like every other bad input.
    """

    def __init__(self, holder: SnapshotHolder, clock: Clock = time.time) -> None:
        self._holder = holder
        self._clock = clock

    async def check(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> CheckResponse:
        decision, read, request_id = evaluate_bytes(self._holder, request, self._clock)
        if decision.reason == "signing_key_unknown" and await refetch_issuer_keys(self._holder.current):
            decision, read, request_id = evaluate_bytes(self._holder, request, self._clock)
        return respond(decision, read, request_id)

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


def _log_decision(decision: Decision, request: AuthzRequest | None, request_id: str) -> None:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "tenant": decision.tenant,
        "rule": decision.rule,
        "method": request.method if request else None,
        "path": request.path if request else None,
        "kid": decision.key_id,
    }
    if decision.detail:
        fields["detail"] = decision.detail
    _log.info("decision", extra={"fields": fields})


def _fallback_deny() -> CheckResponse:
    response = CheckResponse()
    response.status.code = 13
    response.denied_response.status.code = 500  # type: ignore[assignment]
    response.denied_response.body = '{"error":"server_error","reason":"internal_error"}'
    return response
