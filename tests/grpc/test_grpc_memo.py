"""The gRPC door's answer memo: a repeat gets the first answer only while that answer provably holds.

Every test sends serialized CheckRequests to the servicer's registered handler (``answer``,
bytes in and out), with a clock the test moves; the memo's rules are the core's
(authz.core.memo), as for the HTTP door (tests/http/test_http_memo.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import authz.grpc.servicer
from authz.app.revocation import attach
from authz.app.subscriptions import attach as attach_subscriptions
from authz.config import Config, SnapshotHolder, load_config
from authz.core.revocation import Entry, EntryKind, RevocationSet, jti_hash
from authz.core.subscription import Status, Subscription, SubscriptionSet
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.logs import JsonFormatter, JsonHandler, direct_sink
from authz.telemetry.recorder import Telemetry
from testkit import dpop, sender
from testkit.fakes import ServicerContext
from testkit.world import CONFIG, NOW, World, check_request, subscriptions_config

# Every test here runs with each of the door's two readings of a repeat (tests/grpc/conftest.py).
pytestmark = pytest.mark.usefixtures("reader")

SKEW = 30  # CONFIG's clock_skew
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fresh(world: World) -> Config:
    """The world's configuration, loaded for this test alone (its own token cache)."""
    return world.config()


def service_for(config: Config, clock: Clock, telemetry: Telemetry | None = None) -> AuthorizationService:
    return AuthorizationService(SnapshotHolder(config), clock, telemetry or Telemetry())


def raw_request(
    token: str | None = None,
    *,
    host: str = "api.acme.test",
    path: str = "/orders",
    rid: str = "req-1",
    extra: Sequence[tuple[str, str]] = (),
) -> CheckRequest:
    """A CheckRequest as the rendered Envoys send it (encode_raw_headers: header_map, raw values)."""
    message = CheckRequest()
    http = message.attributes.request.http
    http.id, http.method, http.path, http.host, http.scheme = "1234", "GET", path, host, "https"
    headers = [(":authority", host), (":path", path), (":method", "GET"), ("x-request-id", rid)]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    for name, value in [*headers, *extra]:
        entry = http.header_map.headers.add()
        entry.key, entry.raw_value = name, value.encode()
    return message


async def ask(
    service: AuthorizationService, message: CheckRequest, context: ServicerContext | None = None
) -> bytes:
    answer = await service.answer(message.SerializeToString(), context)  # type: ignore[arg-type]
    assert isinstance(answer, bytes)
    return answer


def outcome(answer: bytes) -> tuple[int, str]:
    """(HTTP status, reason) of a serialized CheckResponse."""
    response = CheckResponse.FromString(answer)
    reason = response.dynamic_metadata.fields["reason"].string_value
    if response.HasField("ok_response"):
        return 200, reason
    assert json.loads(response.denied_response.body)["reason"] == reason
    return int(response.denied_response.status.code), reason


def removed(answer: bytes) -> list[str]:
    return list(CheckResponse.FromString(answer).ok_response.headers_to_remove)


def checks(telemetry: Telemetry, decision: str = "allow") -> float:
    return sum(v for labels, v in telemetry.checks.values.items() if labels[1] == decision)


@contextlib.contextmanager
def direct_logging() -> Iterator[io.StringIO]:
    """The decision log as the server writes it: setup_logging's handler alone, on a string stream."""
    stream = io.StringIO()
    handler = JsonHandler()
    handler.setStream(stream)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        assert direct_sink(logging.getLogger("authz.decision")) is handler
        yield stream
    finally:
        handler.flush()  # lines gathered on the running loop
        root.handlers[:] = saved
        root.setLevel(level)


def decision_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "authz.decision"]


def with_config(world: World, tmp_path: Path, text: str) -> Config:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(text)
    return load_config(tmp_path / "config.yaml")


# -- repeats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["map", "raw"])
async def test_a_repeat_gets_the_same_answer_from_the_memo(
    world: World, fresh: Config, clock: Clock, form: str
) -> None:
    """The second identical check is answered from the memo, byte for byte, and counted like the first;
    in both header forms Envoy sends (``headers``, and ``header_map`` with encode_raw_headers)."""
    telemetry = Telemetry()
    service = service_for(fresh, clock, telemetry)
    token = world.token()

    def request(rid: str) -> CheckRequest:
        return check_request(token=token, request_id=rid) if form == "map" else raw_request(token, rid=rid)

    first = await ask(service, request("req-1"))
    assert outcome(first) == (200, "ok")
    assert service.memo_hits == 0
    hits_before = fresh.snapshot.cache.hits
    assert await ask(service, request("req-1")) == first
    assert await ask(service, request("req-2")) == first  # the request id is not in an allow
    assert service.memo_hits == 2
    assert telemetry.grpc_memo_hits.values[()] == 2  # authz_grpc_memo_hits_total
    assert telemetry.memo_hits.values.get((), 0) == 0  # the HTTP door's counter is its own
    assert checks(telemetry) == 3
    assert fresh.snapshot.cache.hits == hits_before + 2  # a repeat is a hit of the verified-token cache
    assert service.memo_entries == 1


async def test_the_message_api_answers_what_the_handler_sends(
    world: World, config: Config, clock: Clock
) -> None:
    """``check`` (tests and tools) parses back exactly the bytes the registered handler sends."""
    service = service_for(config, clock)
    message = check_request(token=world.token()).SerializeToString()
    first = await service.check(message, None)
    again = await service.check(message, None)
    assert first == again
    assert CheckResponse.FromString(await service.answer(message, None)) == first
    assert service.memo_hits == 2


async def test_a_repeat_logs_the_line_a_decision_logs(
    world: World, config: Config, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A repeat's direct line equals the JsonFormatter line of the decision, with its own request id."""
    service = service_for(config, clock)
    token = world.token()
    caplog.set_level(logging.INFO, logger="authz.decision")
    await ask(service, check_request(token=token, request_id="first"))  # decided: through logging
    with direct_logging() as stream:
        await ask(service, check_request(token=token, request_id="second"))  # the repeat: the direct path
    assert service.memo_hits == 1
    (record,) = [r for r in caplog.records if r.name == "authz.decision"]
    first = json.loads(JsonFormatter().format(record))
    (second,) = decision_lines(stream)
    assert (first["request_id"], second["request_id"]) == ("first", "second")
    for line in (first, second):
        del line["request_id"], line["time"]
    assert first == second
    assert (first["decision"], first["path"], first["trace_id"]) == ("allow", "/orders", None)


async def test_a_repeat_logs_through_logging_when_it_is_set_up_otherwise(
    world: World, config: Config, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """With another logging set-up (caplog's handler), a repeat's record goes through logging."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    service = service_for(config, clock)
    token = world.token()
    await ask(service, check_request(token=token, request_id="first"))
    await ask(service, check_request(token=token, request_id="second"))
    assert service.memo_hits == 1
    fields = [r.fields for r in caplog.records if r.name == "authz.decision"]  # type: ignore[attr-defined]
    assert [f["request_id"] for f in fields] == ["first", "second"]
    assert {k: v for k, v in fields[0].items() if k != "request_id"} == {
        k: v for k, v in fields[1].items() if k != "request_id"
    }


async def test_a_repeat_logs_its_own_request_id_as_a_decision_reads_it(
    world: World, config: Config, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """x-request-id (the first, raw form first), else Envoy's http.id; never a value unsafe in logs."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    service = service_for(config, clock)
    token = world.token()
    no_rid = check_request(token=token)
    del no_rid.attributes.request.http.headers["x-request-id"]
    both = raw_request(token, rid="raw-first")
    both.attributes.request.http.headers["x-request-id"] = "map-second"
    requests = [
        check_request(token=token, request_id="decided"),
        check_request(token=token, request_id="plain-1"),
        no_rid,
        raw_request(token, rid="raw-1", extra=[("x-request-id", "raw-2")]),
        both,
        check_request(token=token, request_id='"}{injected'),
    ]
    for message in requests:
        assert outcome(await ask(service, message)) == (200, "ok")
    logged = [r.fields["request_id"] for r in caplog.records if r.name == "authz.decision"]  # type: ignore[attr-defined]
    assert logged == ["decided", "plain-1", "1234", "raw-1", "raw-first", ""]
    assert service.memo_hits == 4  # all but the first, and the one with headers in both forms
    # The same requests decided in full log the same ids.
    caplog.clear()
    off = service_for(with_memo_size(config, 0), clock)
    for message in requests:
        await ask(off, message)
    assert (
        [r.fields["request_id"] for r in caplog.records if r.name == "authz.decision"]
        == [  # type: ignore[attr-defined]
            "decided",
            *logged[1:],
        ]
    )


def with_memo_size(config: Config, size: int) -> Config:
    """The same configuration (same snapshot) with another server.memo_size."""
    from dataclasses import replace

    return replace(config, server=replace(config.server, memo_size=size))


async def test_a_repeat_takes_its_trace_id_from_its_own_metadata_and_headers(
    world: World, config: Config, clock: Clock
) -> None:
    """Tracing off, the log line has the trace id the request carried: gRPC metadata first
    (Envoy's ext_authz span), then the request's headers, as a decided check's line has it."""
    service = service_for(config, clock)
    token = world.token()
    with direct_logging() as stream:
        await ask(service, check_request(token=token))
        await ask(service, check_request(token=token))
        await ask(service, check_request(token=token, headers={"traceparent": TRACEPARENT}))
        await ask(
            service,
            raw_request(token, extra=[("traceparent", TRACEPARENT), ("traceparent", OTHER_TRACEPARENT)]),
        )
        await ask(
            service,
            check_request(token=token, headers={"traceparent": TRACEPARENT}),
            ServicerContext([("traceparent", OTHER_TRACEPARENT)]),
        )
        await ask(
            service,
            check_request(token=token),
            ServicerContext([("x-b3-traceid", "a" * 32), ("x-b3-spanid", "b" * 16)]),
        )
    assert service.memo_hits == 5
    assert [line["trace_id"] for line in decision_lines(stream)] == [
        None,
        None,
        TRACEPARENT[3:35],
        TRACEPARENT[3:35],
        OTHER_TRACEPARENT[3:35],
        "a" * 32,
    ]


# -- what a repeat must match ----------------------------------------------------------------------


async def test_the_memo_holds_only_inside_the_token_time_window(
    world: World, fresh: Config, clock: Clock
) -> None:
    """Past exp the repeat is decided afresh (and denied past exp + skew); before nbf too (clock set back)."""
    service = service_for(fresh, clock)
    message = check_request(token=world.token())
    assert outcome(await ask(service, message)) == (200, "ok")
    clock.now = NOW + 300 - 0.001  # exp, just before
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    clock.now = NOW + 300  # the verified-token cache lets go at exp: verified again, allowed within the skew
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    clock.now = NOW + 300 + SKEW
    assert outcome(await ask(service, message)) == (401, "token_expired")
    assert service.memo_hits == 1

    later = check_request(token=world.token(world.claims(iat=NOW, nbf=NOW + 100, exp=NOW + 300)))
    clock.now = NOW + 100
    assert outcome(await ask(service, later)) == (200, "ok")
    assert outcome(await ask(service, later)) == (200, "ok")
    assert service.memo_hits == 2
    clock.now = NOW + 100 - SKEW - 1  # the wall clock stepped back
    assert outcome(await ask(service, later)) == (401, "token_not_yet_valid")


@pytest.mark.parametrize(
    ("claims", "moment", "expected"),
    [
        ({"iat": None, "nbf": None}, NOW + 300 - 3600 - 1, "lifetime_exceeded"),  # counted from now
        ({"iat": NOW + 20, "nbf": NOW - 100}, NOW + 20 - SKEW - 1, "iat_in_future"),  # iat is the later
    ],
    ids=["no-iat-no-nbf", "iat-after-nbf"],
)
async def test_the_window_start_is_where_the_time_checks_start_to_pass(
    world: World, config: Config, clock: Clock, claims: dict[str, int | None], moment: int, expected: str
) -> None:
    """The window's start follows whichever time check binds; a clock set back before it is decided afresh."""
    service = service_for(config, clock)
    message = check_request(token=world.token(world.claims(**claims)))
    assert outcome(await ask(service, message)) == (200, "ok")
    clock.now = float(moment + 1)
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    clock.now = float(moment)
    assert outcome(await ask(service, message)) == (401, expected)


async def test_a_reload_starts_an_empty_memo(world: World, tmp_path: Path, clock: Clock) -> None:
    """After a swap, a repeat is decided on the new snapshot: a rule tightened there denies at once."""
    holder = SnapshotHolder(with_config(world, tmp_path, CONFIG))
    service = AuthorizationService(holder, clock, Telemetry())
    message = check_request(token=world.token())
    assert outcome(await ask(service, message)) == (200, "ok")
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    (tmp_path / "config.yaml").write_text(CONFIG.replace("scopes: [orders:read]", "scopes: [orders:write]"))
    holder.swap(load_config(tmp_path / "config.yaml"))
    assert outcome(await ask(service, message)) == (403, "scope_missing")
    assert service.memo_hits == 1


async def test_a_token_leaving_the_cache_retires_its_answers(
    world: World, tmp_path: Path, clock: Clock
) -> None:
    """An answer is tied to the token's verified-cache entry: evicted, the next check verifies afresh."""
    config = with_config(world, tmp_path, CONFIG.replace("token:\n", "token:\n  cache_size: 1\n", 1))
    service = service_for(config, clock)
    first = check_request(token=world.token())
    second = check_request(token=world.token(world.claims(sub="user-2")))
    await ask(service, first)
    await ask(service, second)  # evicts the first token from the one-entry cache
    misses = config.snapshot.cache.misses
    assert outcome(await ask(service, first)) == (200, "ok")
    assert service.memo_hits == 0
    assert config.snapshot.cache.misses == misses + 1  # verified again, not served from the memo


async def test_a_revocation_retires_the_answers_of_what_it_names(world: World, clock: Clock) -> None:
    """An answer holds while the revocation mirror is at the generation it was decided on: a
    revocation denies the very next repeat; an unrelated change costs one full check."""
    mirror = RevocationSet()
    service = service_for(attach(world.config(), mirror), clock)
    message = check_request(token=world.token(world.claims(jti="t-1")))
    for _ in range(2):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    mirror.add(Entry(EntryKind.JTI, jti_hash("unrelated"), expires_at=NOW + 60))
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1  # decided afresh once
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 2  # and repeated again
    mirror.add(Entry(EntryKind.JTI, jti_hash("t-1"), expires_at=NOW + 60))
    for _ in range(2):
        assert outcome(await ask(service, message)) == (401, "token_revoked")
    assert service.memo_hits == 2


async def test_a_change_of_the_subscriptions_is_decided_on_at_once(world: World, clock: Clock) -> None:
    """An allow that rested on an API subscription holds while the subscription mirror is at its
    generation and before the approval's expiry: a revocation denies the very next repeat."""
    mirror = SubscriptionSet()
    service = service_for(attach_subscriptions(load_config(subscriptions_config(world)), mirror), clock)
    message = raw_request(world.token(world.claims(azp="mobile-app")))

    def record(status: Status, client: str = "mobile-app") -> Subscription:
        return Subscription("acme", client, "orders", status, expires_at=NOW + 100)

    mirror.put(record(Status.APPROVED))
    for _ in range(2):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1
    mirror.put(record(Status.PENDING, client="unrelated"))
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1  # decided afresh once
    assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 2  # and repeated again
    mirror.put(record(Status.REVOKED))
    assert outcome(await ask(service, message))[0] == 403
    assert service.memo_hits == 2
    mirror.put(record(Status.APPROVED))
    for _ in range(2):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 3
    clock.now = NOW + 100  # the approval's expiry: the memo's allow ends with it
    assert outcome(await ask(service, message))[0] == 403
    assert service.memo_hits == 3


def _variant(world: World, token: str, variant: str) -> CheckRequest:
    message = check_request(token=token)
    http = message.attributes.request.http
    if variant == "method":
        http.method = "POST"
    elif variant == "path":
        http.path = "/admin/users"
    elif variant == "dot-dot":
        http.path = "/orders/../admin/users"
    elif variant == "host":
        http.host = "api.globex.test"
    elif variant == "token":
        message = check_request(token=world.token(world.claims(scope="other")))
    elif variant == "route-tenant":
        message.attributes.context_extensions["tenant"] = "globex"
    elif variant == "query-override":
        http.path = "/orders?_method=DELETE"
    return message


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("method", (403, "no_matching_rule")),
        ("path", (403, "role_missing")),
        ("dot-dot", (403, "role_missing")),
        ("host", (403, "tenant_mismatch")),
        ("token", (403, "scope_missing")),
        ("route-tenant", (403, "tenant_mismatch")),
        ("query-override", (400, "method_override")),
    ],
)
async def test_the_memo_answers_only_the_same_request(
    world: World, config: Config, clock: Clock, variant: str, expected: tuple[int, str]
) -> None:
    """Method, target, host, authorization and the route's tenant together select an answer."""
    service = service_for(config, clock)
    token = world.token()
    for _ in range(2):
        assert outcome(await ask(service, check_request(token=token))) == (200, "ok")
    assert outcome(await ask(service, _variant(world, token, variant))) == expected
    assert service.memo_hits == 1


@pytest.mark.parametrize("what", ["principal", "certificate", "xfcc-map", "xfcc-raw", "xfcc-second-raw"])
async def test_a_repeat_is_the_same_peer(world: World, config: Config, clock: Clock, what: str) -> None:
    """The peer's principal and certificate, and a forwarded client certificate (a certificate-bound
    token's allow holds for its certificate alone), are part of what a repeat must match: another
    peer's identical request is decided."""
    service = service_for(config, clock)
    token = world.token()
    xfcc = "x-forwarded-client-cert"

    def request(peer: str) -> CheckRequest:
        if what == "xfcc-map":
            return check_request(token=token, headers={xfcc: f"Hash={peer}"})
        if what == "xfcc-raw":
            return raw_request(token, extra=[(xfcc, f"Hash={peer}")])
        if what == "xfcc-second-raw":  # both values are read: a second one is another request
            return raw_request(token, extra=[(xfcc, "Hash=first"), (xfcc, f"Hash={peer}")])
        message = check_request(token=token)
        setattr(message.attributes.source, what, peer)
        return message

    for _ in range(2):
        assert outcome(await ask(service, request("peer-a"))) == (200, "ok")
    assert service.memo_hits == 1
    assert outcome(await ask(service, request("peer-b"))) == (200, "ok")
    assert service.memo_hits == 1  # decided
    assert outcome(await ask(service, request("peer-b"))) == (200, "ok")
    assert service.memo_hits == 2
    assert service.memo_entries == 2


# -- requests the memo never answers ---------------------------------------------------------------


async def test_denies_and_dry_run_denies_are_decided_every_time(
    world: World, config: Config, clock: Clock
) -> None:
    service = service_for(config, clock)
    cases = [
        (check_request(token=world.token(world.claims(scope="other"))), 403),
        (check_request(token=world.token(world.claims(tenant="dry", scope="x")), host="api.dry.test"), 200),
        (check_request(), 401),
    ]
    for message, expected in cases:
        for _ in range(3):
            assert outcome(await ask(service, message))[0] == expected
    assert service.memo_hits == 0
    assert service.memo_entries == 0


def _several_authorizations(token: str, how: str) -> CheckRequest:
    if how == "raw-twice":
        return raw_request(token, extra=[("authorization", f"Bearer {token}")])
    if how == "raw-and-map":
        message = raw_request(token)
        message.attributes.request.http.headers["authorization"] = f"Bearer {token} "
        return message
    message = check_request(token=token)
    message.attributes.request.http.headers["Authorization"] = f"Bearer {token}"  # another key, one name
    message.attributes.request.http.headers["authorization"] = "Bearer x"
    return message


@pytest.mark.parametrize("how", ["raw-twice", "raw-and-map", "map-two-cases"])
async def test_several_authorization_values_are_decided(
    world: World, config: Config, clock: Clock, how: str
) -> None:
    """Several values (however sent) are authorization_malformed: a deny, never answered from the memo,
    even when one of them alone was allowed before."""
    service = service_for(config, clock)
    token = world.token()
    for _ in range(2):
        await ask(service, raw_request(token))
        await ask(service, check_request(token=token))
    hits = service.memo_hits
    for _ in range(2):
        assert outcome(await ask(service, _several_authorizations(token, how))) == (
            401,
            "authorization_malformed",
        )
    assert service.memo_hits == hits


async def test_headers_in_both_forms_are_decided_every_time(
    world: World, config: Config, clock: Clock
) -> None:
    """Envoy sends one form; a request with both (merged by the full reading) is never a repeat."""
    service = service_for(config, clock)
    token = world.token()
    message = raw_request(token)
    message.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    for _ in range(2):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 0
    assert service.memo_entries == 0


async def test_the_same_authorization_in_either_form_is_one_key(
    world: World, config: Config, clock: Clock
) -> None:
    """The map's text and header_map's raw bytes of one value: the second form repeats the first."""
    service = service_for(config, clock)
    token = world.token()
    for message in (check_request(token=token), raw_request(token)):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 1


async def test_a_request_read_from_pseudo_headers_is_decided(
    world: World, config: Config, clock: Clock
) -> None:
    """Method, path, host or scheme left to the pseudo-headers: read by the full reading only, never a repeat."""
    service = service_for(config, clock)
    token = world.token()
    for field in ("method", "path", "host", "scheme"):
        message = check_request(token=token)
        setattr(message.attributes.request.http, field, "")
        for _ in range(2):
            assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 0
    assert service.memo_entries == 0


@pytest.mark.parametrize("form", ["map", "raw", "map-upper-case"])
@pytest.mark.parametrize("spelling", ["x_authz_subject", "x-authz_scopes", "x.authz.tenant"])
async def test_a_request_with_another_spelling_of_an_identity_header_is_decided(
    world: World, config: Config, clock: Clock, spelling: str, form: str
) -> None:
    """Its answer names that header for removal: the memo's answer to the same request without it would
    let the client's copy through. Such a request is neither answered from the memo nor kept."""
    service = service_for(config, clock)
    token = world.token()
    plain = raw_request(token) if form == "raw" else check_request(token=token)
    first = await ask(service, plain)
    assert await ask(service, plain) == first
    assert service.memo_hits == 1
    name = spelling.upper() if form == "map-upper-case" else spelling
    if form == "raw":
        forged = raw_request(token, extra=[(name, "forged")])
    else:
        forged = check_request(token=token, headers={name: "forged"})
    for _ in range(2):
        answer = await ask(service, forged)
        assert outcome(answer) == (200, "ok")
        assert spelling in removed(answer)
    assert service.memo_hits == 1
    assert await ask(service, plain) == first  # and the memo still answers the request without it
    assert service.memo_hits == 2


@pytest.mark.parametrize("form", ["map", "raw"])
@pytest.mark.parametrize("name", ["x-http-method-override", "x-http-method", "x-method-override"])
async def test_a_request_with_a_method_override_is_decided(
    world: World, config: Config, clock: Clock, name: str, form: str
) -> None:
    """The override is decided on (method_override): the memo's allow of the same request without it
    must not answer it (the upstream would run DELETE on a GET's allow)."""
    service = service_for(config, clock)
    token = world.token()
    plain = raw_request(token) if form == "raw" else check_request(token=token)
    first = await ask(service, plain)
    assert await ask(service, plain) == first
    overridden = (
        raw_request(token, extra=[(name, "DELETE")])
        if form == "raw"
        else check_request(token=token, headers={name: "DELETE"})
    )
    for _ in range(2):
        assert outcome(await ask(service, overridden)) == (400, "method_override")
    assert service.memo_hits == 1


@pytest.mark.parametrize("form", ["map", "raw"])
async def test_a_request_with_a_dpop_proof_is_decided(
    world: World, config: Config, clock: Clock, form: str
) -> None:
    """A DPoP proof is single-use (its jti): a request carrying one is never answered from the memo,
    nor kept, even when the same request without it was."""
    service = service_for(config, clock)
    token = world.token()
    plain = raw_request(token) if form == "raw" else check_request(token=token)
    first = await ask(service, plain)
    assert await ask(service, plain) == first
    assert service.memo_hits == 1
    proof = [("dpop", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln")]
    with_proof = (
        raw_request(token, extra=proof) if form == "raw" else check_request(token=token, headers=dict(proof))
    )
    for _ in range(3):
        await ask(service, with_proof)
    assert service.memo_hits == 1
    assert service.memo_entries == 1


async def test_a_dpop_scheme_token_is_never_kept(world: World, config: Config, clock: Clock) -> None:
    """Only a Bearer token's allow is kept: the memo answers no other scheme."""
    service = service_for(config, clock)
    message = check_request(headers={"authorization": f"DPoP {world.token()}"})
    for _ in range(3):
        await ask(service, message)
    assert service.memo_hits == 0
    assert service.memo_entries == 0


async def test_public_rules_by_host_are_decided_every_time(
    world: World, config: Config, clock: Clock
) -> None:
    """A public rule of the host's tenant rests on no token, even when one is sent (a cached, valid one
    here): cheap to decide, never kept."""
    service = service_for(config, clock)
    token = world.token()
    assert outcome(await ask(service, check_request(token=token))) == (200, "ok")  # the token is cached
    entries = service.memo_entries
    for sent in (None, "not-even-a-token", token):
        for _ in range(3):
            assert outcome(await ask(service, check_request(path="/healthz", token=sent))) == (200, "ok")
    assert service.memo_hits == 0
    assert service.memo_entries == entries


async def test_a_public_rule_reached_through_the_token_is_tied_to_the_token(
    world: World, config: Config, clock: Clock
) -> None:
    """No tenant by host: the token's tenant's public rule allows, and that allow ends with the token."""
    service = service_for(config, clock)
    message = check_request(token=world.token(), host="unknown.test", path="/healthz")
    for _ in range(2):
        answer = await ask(service, message)
        assert outcome(answer) == (200, "ok")
        headers = {h.header.key: h.header.value for h in CheckResponse.FromString(answer).ok_response.headers}
        assert headers["x-authz-tenant"] == "acme"
    assert service.memo_hits == 1
    clock.now = NOW + 300 + SKEW
    assert outcome(await ask(service, message)) == (401, "token_expired")


async def test_a_check_past_its_deadline_is_shed_even_when_it_is_a_repeat(
    world: World, config: Config, clock: Clock
) -> None:
    """The memo answers only checks that still have time: one queued past Envoy's deadline is shed."""
    service = service_for(config, clock)
    message = check_request(token=world.token())
    for _ in range(2):
        assert outcome(await ask(service, message, ServicerContext(remaining=1.0))) == (200, "ok")
    assert outcome(await ask(service, message, ServicerContext(remaining=0.0))) == (503, "overloaded")
    assert service.memo_hits == 1


# -- turned off, bounded, failing -------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["token:\n  cache_size: 0\n", "server:\n  memo_size: 0\n"])
async def test_no_memo_when_turned_off(world: World, tmp_path: Path, clock: Clock, setting: str) -> None:
    """``server.memo_size: 0``, or ``token.cache_size: 0`` (verify every token every time): no memo."""
    text = CONFIG.replace("token:\n", setting, 1) if setting.startswith("token") else CONFIG + setting
    service = service_for(with_config(world, tmp_path, text), clock)
    message = check_request(token=world.token())
    for _ in range(3):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 0
    assert service.memo_entries == 0


async def test_no_memo_with_tracing(world: World, config: Config, clock: Clock) -> None:
    """With tracing on, every check has its span with its steps: the memo is not used."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = service_for(config, clock, Telemetry(provider))
    message = check_request(token=world.token())
    for _ in range(3):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == 0
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("envoy.service.auth.v3.Authorization/Check") == 3
    assert names.count("policy") == 3
    provider.shutdown()


async def test_the_memo_is_bounded(world: World, tmp_path: Path, clock: Clock) -> None:
    """More distinct requests than ``server.memo_size``: the oldest answers go, the newest still repeat."""
    service = service_for(with_config(world, tmp_path, CONFIG + "server:\n  memo_size: 100\n"), clock)
    token = world.token()
    for n in range(150):
        assert outcome(await ask(service, check_request(token=token, path=f"/orders/{n}"))) == (200, "ok")
    assert service.memo_entries == 100
    assert outcome(await ask(service, check_request(token=token, path="/orders/149"))) == (200, "ok")
    assert service.memo_hits == 1
    assert outcome(await ask(service, check_request(token=token, path="/orders/0"))) == (
        200,
        "ok",
    )  # forgotten
    assert service.memo_hits == 1


async def test_a_fault_reading_a_repeat_is_decided_in_full(
    world: World,
    config: Config,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever goes wrong in the memo's reading, the check is decided in full: an answer, never an
    RPC error. A fault in the wire reading leaves the repeat to the reading through protobuf."""
    service = service_for(config, clock)
    message = check_request(token=world.token())
    assert outcome(await ask(service, message)) == (200, "ok")

    def broken(_message: object) -> None:
        raise RuntimeError("boom")

    if authz.grpc.servicer.read_wire is not None:
        monkeypatch.setattr(authz.grpc.servicer, "read_wire", broken)
        assert outcome(await ask(service, message)) == (200, "ok")
        assert service.memo_hits == 1  # read through protobuf
        assert any("reading a repeat failed" in r.getMessage() for r in caplog.records)
        caplog.clear()
    monkeypatch.setattr(authz.grpc.servicer, "read_repeat", broken)
    for _ in range(2):
        assert outcome(await ask(service, message)) == (200, "ok")
    assert service.memo_hits == (1 if authz.grpc.servicer.read_wire is not None else 0)
    assert any("reading a repeat failed" in r.getMessage() for r in caplog.records)


async def test_an_undecodable_request_is_a_deny_and_never_a_repeat(config: Config, clock: Clock) -> None:
    service = service_for(config, clock)
    for _ in range(2):
        answer = await service.answer(b"\xff\xff\xff", None)
        assert outcome(answer) == (400, "request_malformed")
    assert service.memo_entries == 0


# -- sender-constrained tokens (the core's memo rules, through this door) ----------------------------


@pytest.fixture(scope="module")
def sender_config(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(sender.write_config(world, tmp_path_factory.mktemp("grpc-memo-sender")))


async def test_a_dpop_bound_request_is_never_answered_from_the_memo(
    world: World, sender_config: Config, clock: Clock
) -> None:
    """A DPoP proof is single-use: the same request again is the replay the store refuses, never a
    memo answer; a fresh proof is decided again; nothing is kept."""
    key = dpop.new_key("ES256")
    token = world.token(world.claims(cnf={"jkt": sender.jkt(key)}))
    service = service_for(sender_config, clock)

    def request(proof: str) -> CheckRequest:
        return raw_request(extra=[("authorization", f"DPoP {token}"), ("dpop", proof)])

    first = request(sender.proof(key, token))
    assert outcome(await ask(service, first)) == (200, "ok")
    assert outcome(await ask(service, first)) == (401, "dpop_proof_replayed")
    assert outcome(await ask(service, request(sender.proof(key, token)))) == (200, "ok")
    assert outcome(await ask(service, raw_request(token))) == (401, "dpop_proof_missing")  # as Bearer
    assert service.memo_hits == 0
    assert service.memo_entries == 0


@pytest.mark.parametrize("source", ["peer", "xfcc"])
async def test_a_certificate_bound_token_is_answered_only_for_its_certificate(
    world: World, tmp_path: Path, clock: Clock, source: str
) -> None:
    """The memo's answer to a certificate-bound token holds for the certificate it was decided with,
    read where the configuration says (the peer's, or x-forwarded-client-cert): another
    certificate, or none, is decided (and refused)."""
    extra = "request:\n  client_certificate: xfcc\n" if source == "xfcc" else ""
    config = load_config(sender.write_config(world, tmp_path, extra=extra))
    cert, other = sender.make_cert(), sender.make_cert("other")
    token = world.token(world.claims(cnf={"x5t#S256": cert.x5t}))
    service = service_for(config, clock)

    def request(presented: sender.Cert | None) -> CheckRequest:
        if source == "xfcc":
            return raw_request(
                token, extra=[("x-forwarded-client-cert", presented.xfcc)] if presented else []
            )
        message = raw_request(token)
        message.attributes.source.certificate = presented.envoy if presented else ""
        return message

    for _ in range(2):
        assert outcome(await ask(service, request(cert))) == (200, "ok")
    assert service.memo_hits == 1
    assert outcome(await ask(service, request(other))) == (401, "client_certificate_mismatch")
    assert outcome(await ask(service, request(None))) == (401, "client_certificate_missing")
    assert service.memo_hits == 1
    assert outcome(await ask(service, request(cert))) == (200, "ok")
    assert service.memo_hits == 2


async def test_repeat_lines_go_straight_to_the_handler_and_follow_a_logging_change(
    world: World, config: Config, clock: Clock
) -> None:
    """With setup_logging's handler, repeats' lines are gathered unrendered and go out as logging
    would write them, each with its own request id; a logging setup changed is followed by the
    next repeat (here: a second handler, so logging writes the line)."""
    import asyncio
    import time

    service = service_for(config, clock)
    token = world.token()
    stream = io.StringIO()
    handler = JsonHandler()
    handler.setStream(stream)
    seen: list[logging.LogRecord] = []

    class Collecting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)  # setLevel: clears the loggers' cached isEnabledFor answers
    try:
        for rid in ("first", "second", "third"):
            assert outcome(await ask(service, raw_request(token, rid=rid))) == (200, "ok")
        deadline = time.monotonic() + 10  # bounds the wait for the gathered write on a busy machine
        while stream.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert outcome(await ask(service, raw_request(token, rid="gathered"))) == (200, "ok")
        root.addHandler(
            Collecting()
        )  # with a line still gathered  # direct_sink steps aside: records go through logging
        assert outcome(await ask(service, raw_request(token, rid="after-change"))) == (200, "ok")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    assert service.memo_hits == 4
    assert [line["request_id"] for line in lines] == ["first", "second", "third"]
    assert lines[1] | {"time": 0, "request_id": ""} == lines[2] | {"time": 0, "request_id": ""}
    assert lines[0] | {"time": 0, "request_id": ""} == lines[1] | {"time": 0, "request_id": ""}
    assert [r.fields["request_id"] for r in seen if r.name == "authz.decision"] == ["after-change"]  # type: ignore[attr-defined]


def _key_bytes(key: object) -> int:
    """What a memo key holds, in bytes or characters of its values."""
    if isinstance(key, (str, bytes)):
        return len(key)
    assert isinstance(key, tuple)
    return sum(_key_bytes(item) for item in key)


@pytest.mark.parametrize("part", ["authorization", "query", "certificate", "extensions"])
async def test_long_values_are_kept_as_digests_and_still_repeat(
    world: World, config: Config, clock: Clock, part: str
) -> None:
    """A kept answer's key holds the request's values as sent up to a bound, and beyond it their
    digest: an entry stays a few KiB whatever a client sends (a 50 KB query string), and the
    request is still a repeat; a request that differs anywhere in the long part is not."""
    from authz.grpc.repeat import read_repeat

    long_token = world.token(world.claims(padding="x" * 2600))  # under token.max_bytes (8192)
    assert len(f"Bearer {long_token}") > 4096

    def request(variant: str) -> CheckRequest:
        token = long_token if part == "authorization" and variant != "other" else world_token
        message = raw_request(
            token, path=f"/orders?pad={'q' * 50_000}{variant}" if part == "query" else "/orders"
        )
        if part == "certificate":
            message.attributes.source.certificate = "c" * 5000 + variant
        if part == "extensions":
            message.attributes.context_extensions["note"] = "e" * 5000 + variant
        return message

    world_token = world.token()
    service = service_for(config, clock)
    answers = [await ask(service, request("")) for _ in range(2)]
    assert outcome(answers[0]) == (200, "ok")
    assert answers[0] == answers[1]
    assert (service.memo_hits, service.memo_entries) == (1, 1)
    read = read_repeat(request(""))
    assert read is not None
    assert _key_bytes(read.key) <= 3 * 1024  # KEPT_AUTHORIZATION + KEPT_REST
    if part != "authorization":  # another token is another key anyway; the others differ in the long part
        assert await ask(service, request("-other")) is not None
        assert (service.memo_hits, service.memo_entries) == (1, 2)
