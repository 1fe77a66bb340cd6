"""Fuzz target: the whole Check handler on arbitrary CheckRequest bytes.

    python -m fuzz.fuzz_check [libFuzzer options] [corpus folders]   # or: make fuzz

The input is what gRPC hands ``AuthorizationService.check`` (the raw request
bytes), run on one event loop with the fixed world's configuration and the
tests' clock. A finding is:

- an exception out of ``check``, or an answer that is not a CheckResponse with
  a known status; ``internal_error`` (a fault of ours, caught); a
  ``request_malformed`` for a request that parsed (an unexpected exception
  while reading it); a decision log line that cannot be formatted as JSON;
- an answer that differs from the one the same service gives with its answer memo off
  (``server.memo_size: 0``): the memo lives across inputs, so a repeat of an earlier
  input may be answered from it; or a memo reading that failed (logged, decided in full);
- an allow that none of these explains: the public rule (acme's ``/healthz``,
  with the request's tenant and no subject or scopes passed), a dry-run deny of the dry tenant chosen by
  the request (not by a token), or one of our issuers' tokens (the seeds'
  ``valid-*``) in the authorization header, for the tenant it names, whose
  identity headers are set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import replace

import atheris

with atheris.instrument_imports(include=["authz", "jwcrypto"]):
    from authz.config import SnapshotHolder
    from authz.core.request import normalize_path
    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
    from authz.grpc.messages import parse, read
    from authz.grpc.servicer import AuthorizationService
    from authz.telemetry.logs import JsonFormatter
    from authz.telemetry.recorder import Telemetry
    from fuzz.harness import Finding, start
    from testkit.world import NOW

STATE = start()
SERVICE = AuthorizationService(SnapshotHolder(STATE.config), clock=lambda: NOW, telemetry=Telemetry())
NO_MEMO = replace(STATE.config, server=replace(STATE.config.server, memo_size=0))
DECIDED = AuthorizationService(SnapshotHolder(NO_MEMO), clock=lambda: NOW, telemetry=Telemetry())
LOOP = asyncio.new_event_loop()
TENANT_OF = {token: verified.claims.get("tenant") for token, verified in STATE.tokens.items()}
GRPC_CODES = {0, 3, 7, 13, 14, 16}
IDENTITY = ("x-authz-tenant", "x-authz-subject", "x-authz-scopes")


class StrictJsonHandler(logging.Handler):
    """Formats every decision log line as the service would; a line that cannot be made is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            raise Finding(f"an exception was logged: {record.getMessage()}")
        line = self.format(record)
        json.loads(line)
        line.encode("utf-8")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        raise Finding("a log line could not be formatted")


_logger = logging.getLogger("authz")
_logger.addHandler(StrictJsonHandler())
_logger.setLevel(logging.INFO)
_logger.propagate = False


def authorization_values(message: CheckRequest) -> list[str]:
    http = message.attributes.request.http
    values = [v for k, v in http.headers.items() if k.lower() == "authorization"]
    values += [
        h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        for h in http.header_map.headers
        if h.key.lower() == "authorization"
    ]
    return values


def hosts(message: CheckRequest) -> list[str]:
    http = message.attributes.request.http
    found = [http.host]
    found += [v for k, v in http.headers.items() if k.lower() in (":authority", "host")]
    found += [
        h.raw_value.decode("utf-8", "replace") or h.value
        for h in http.header_map.headers
        if h.key.lower() in (":authority", "host")
    ]
    return found


def explain_allow(message: CheckRequest, response: CheckResponse) -> None:
    meta = {k: v.string_value for k, v in response.dynamic_metadata.fields.items()}
    verdict, tenant, rule = meta.get("decision"), meta.get("tenant"), meta.get("rule")
    set_headers = {h.header.key.lower(): h.header.value for h in response.ok_response.headers}
    if verdict == "dry-run-deny":
        context = message.attributes.context_extensions.get("tenant", "")
        by_host = not context and any("api.dry.test" in h.lower() for h in hosts(message))
        if tenant != "dry" or not (context == "dry" or by_host):
            raise Finding(f"dry-run allow for a tenant the request did not choose ({tenant})")
        return
    if verdict != "allow":
        raise Finding(f"status 0 with decision {verdict!r}")
    if rule == "health":
        http = message.attributes.request.http
        raw_path = http.path or http.headers.get(":path", "")
        if tenant != "acme" or normalize_path(raw_path) != "/healthz":
            raise Finding("public rule allowed another path")
        # The tenant comes from the request; no subject or scopes without a token.
        if set_headers.get("x-authz-tenant") != tenant or any(n in set_headers for n in IDENTITY[1:]):
            raise Finding("identity header set on a public allow")
        return
    presented = [t for v in authorization_values(message) for t in TENANT_OF if t in v]
    if not presented:
        raise Finding(f"allowed on rule {rule!r} of {tenant!r} without one of our issuers' tokens")
    if all(TENANT_OF[t] != tenant for t in presented):
        raise Finding(f"allowed for {tenant!r} with a token of another tenant")
    if set_headers.get("x-authz-tenant") != tenant:
        raise Finding("allow without the tenant identity header")


def test_one_input(data: bytes) -> None:
    response = LOOP.run_until_complete(SERVICE.check(data, None))
    if not isinstance(response, CheckResponse):
        raise Finding(f"check answered {type(response).__name__}")
    if response != LOOP.run_until_complete(DECIDED.check(data, None)):
        raise Finding("the memo's answer differs from the decision's")
    code = response.status.code
    reason = response.dynamic_metadata.fields["reason"].string_value
    if code not in GRPC_CODES:
        raise Finding(f"unknown status code {code}")
    if reason == "internal_error":
        raise Finding("internal_error: an unexpected exception inside the decision")
    parsed = parse(data)
    if isinstance(parsed, CheckRequest):
        _, early, _ = read(parsed)
        # request_malformed is a finding only from an unexpected exception (a method outside the
        # standard set is a deliberate request_malformed).
        if (
            early is not None
            and early.reason == "request_malformed"
            and early.detail.startswith("unexpected")
        ):
            raise Finding(f"a parsed request could not be read ({early.detail})")
    if code == 0:
        if not isinstance(parsed, CheckRequest):
            raise Finding("allowed a request that does not parse")
        explain_allow(parsed, response)
    elif not response.HasField("denied_response"):
        raise Finding("deny without denied_response")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
