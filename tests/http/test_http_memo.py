"""The HTTP door's answer memo: a repeat gets the first answer only while that answer provably holds.

Every test sends requests as the parser hands them to the door (method, target
and raw headers as bytes), with a clock the test moves.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authz.config import Config, SnapshotHolder, load_config
from authz.http.door import HttpDoor
from authz.http.protocol import RawHeaders
from authz.telemetry.logs import JsonFormatter, JsonHandler, direct_sink
from authz.telemetry.recorder import Telemetry
from testkit.world import CONFIG, NOW, World

SKEW = 30  # CONFIG's clock_skew
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def door_for(config: Config, clock: Clock, telemetry: Telemetry | None = None) -> HttpDoor:
    return HttpDoor(SnapshotHolder(config), clock, telemetry or Telemetry(), config.http)


def raw(
    token: str | None = None, *, host: str = "api.acme.test", rid: str = "req-1", **extra: str
) -> RawHeaders:
    headers = [(b"host", host.encode()), (b"x-request-id", rid.encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return headers


def ask(door: HttpDoor, headers: RawHeaders, target: str = "/orders", method: str = "GET") -> bytes:
    answer = door.answer_raw(method.encode(), target.encode(), headers)
    assert isinstance(answer, bytes)
    return answer


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def reason(answer: bytes) -> str:
    body = answer.partition(b"\r\n\r\n")[2]
    return str(json.loads(body)["reason"])


def checks(telemetry: Telemetry, decision: str = "allow") -> float:
    return sum(v for labels, v in telemetry.checks.values.items() if labels[1] == decision)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.contextmanager
def direct_logging() -> Iterator[io.StringIO]:
    """The decision log as the server writes it: setup_logging's handler alone, on a string stream.

    Entered inside a test (pytest adds its own handlers for the test's call): the
    handler must be the only one for the direct path to be taken.
    """
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
        root.handlers[:] = saved
        root.setLevel(level)


def decision_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "authz.decision"]


def test_a_repeat_gets_the_same_answer_from_the_memo(world: World, config: Config, clock: Clock) -> None:
    """The second identical request is answered from the memo, byte for byte, and counted like the first."""
    telemetry = Telemetry()
    door = door_for(config, clock, telemetry)
    token = world.token()
    headers = raw(token)
    first = ask(door, headers)
    assert status(first) == 200
    assert b"x-authz-subject: user-1\r\n" in first
    assert door.memo_hits == 0
    hits_before = config.snapshot.cache.hits
    assert ask(door, headers) == first
    assert ask(door, raw(token, rid="req-2")) == first  # the request id is not in an allow
    assert door.memo_hits == 2
    assert telemetry.memo_hits.values[()] == 2  # authz_http_memo_hits_total
    assert checks(telemetry) == 3
    assert config.snapshot.cache.hits == hits_before + 2  # a repeat is a hit of the verified-token cache


def test_a_repeat_logs_the_line_a_decision_logs(
    world: World, config: Config, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A repeat's direct line equals the JsonFormatter line of the decision (bar request id and time)."""
    door = door_for(config, clock)
    token = world.token()
    caplog.set_level(logging.INFO, logger="authz.decision")
    ask(door, raw(token, rid="first"))  # the first answer: through logging's machinery
    with direct_logging() as stream:
        ask(door, raw(token, rid="second"))  # the repeat: the direct path
    assert door.memo_hits == 1
    (record,) = [r for r in caplog.records if r.name == "authz.decision"]
    first = json.loads(JsonFormatter().format(record))
    (second,) = decision_lines(stream)
    assert (first["request_id"], second["request_id"]) == ("first", "second")
    for line in (first, second):
        del line["request_id"], line["time"]
    assert first == second
    assert first["decision"] == "allow"
    assert first["path"] == "/orders"
    assert first["trace_id"] is None


def test_a_repeat_logs_through_logging_when_it_is_set_up_otherwise(
    world: World, config: Config, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """With another logging set-up (here caplog's handler), a repeat's record goes through logging."""
    caplog.set_level(logging.INFO, logger="authz.decision")
    door = door_for(config, clock)
    token = world.token()
    ask(door, raw(token, rid="first"))
    ask(door, raw(token, rid="second"))
    assert door.memo_hits == 1
    fields = [r.fields for r in caplog.records if r.name == "authz.decision"]  # type: ignore[attr-defined]
    assert [f["request_id"] for f in fields] == ["first", "second"]
    assert {k: v for k, v in fields[0].items() if k != "request_id"} == {
        k: v for k, v in fields[1].items() if k != "request_id"
    }


def test_a_repeat_takes_its_trace_id_from_its_own_headers(world: World, config: Config, clock: Clock) -> None:
    """A repeat carrying a traceparent logs that trace id (tracing off here: only the log has it)."""
    door = door_for(config, clock)
    token = world.token()
    other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with direct_logging() as stream:
        ask(door, raw(token))
        ask(door, raw(token, traceparent=TRACEPARENT))
        ask(door, [*raw(token), (b"traceparent", TRACEPARENT.encode()), (b"traceparent", other.encode())])
    assert door.memo_hits == 2
    assert [line["trace_id"] for line in decision_lines(stream)] == [
        None,
        TRACEPARENT[3:35],
        TRACEPARENT[3:35],
    ]


def test_the_memo_holds_only_inside_the_token_time_window(world: World, config: Config, clock: Clock) -> None:
    """Past exp the repeat is decided afresh (and denied past exp + skew); before nbf too (clock set back)."""
    door = door_for(config, clock)
    headers = raw(world.token())
    assert status(ask(door, headers)) == 200
    clock.now = NOW + 300 - 0.001  # exp, just before
    assert status(ask(door, headers)) == 200
    assert door.memo_hits == 1
    clock.now = NOW + 300  # the verified-token cache lets go at exp: verified again, allowed within the skew
    assert status(ask(door, headers)) == 200
    assert door.memo_hits == 1
    clock.now = NOW + 300 + SKEW
    answer = ask(door, headers)
    assert (status(answer), reason(answer)) == (401, "token_expired")
    assert door.memo_hits == 1

    later = world.token(world.claims(iat=NOW, nbf=NOW + 100, exp=NOW + 300))
    clock.now = NOW + 100
    assert status(ask(door, raw(later))) == 200
    clock.now = NOW + 100 - SKEW - 1  # the wall clock stepped back
    answer = ask(door, raw(later))
    assert (status(answer), reason(answer)) == (401, "token_not_yet_valid")


def test_a_reload_starts_an_empty_memo(world: World, tmp_path: Path, clock: Clock) -> None:
    """After a swap, a repeat is decided on the new snapshot: a rule tightened there denies at once."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(CONFIG)
    holder = SnapshotHolder(load_config(tmp_path / "config.yaml"))
    door = HttpDoor(holder, clock, Telemetry(), holder.current.http)  # type: ignore[union-attr]
    headers = raw(world.token())
    assert status(ask(door, headers)) == 200
    assert status(ask(door, headers)) == 200
    assert door.memo_hits == 1
    (tmp_path / "config.yaml").write_text(CONFIG.replace("scopes: [orders:read]", "scopes: [orders:write]"))
    holder.swap(load_config(tmp_path / "config.yaml"))
    answer = ask(door, headers)
    assert (status(answer), reason(answer)) == (403, "scope_missing")
    assert door.memo_hits == 1


def test_a_token_leaving_the_cache_retires_its_answers(world: World, tmp_path: Path, clock: Clock) -> None:
    """An answer is tied to the token's verified-cache entry: evicted, the next request verifies afresh."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(CONFIG.replace("token:\n", "token:\n  cache_size: 1\n", 1))
    config = load_config(tmp_path / "config.yaml")
    door = door_for(config, clock)
    first, second = raw(world.token()), raw(world.token(world.claims(sub="user-2")))
    ask(door, first)
    ask(door, second)  # evicts the first token from the one-entry cache
    misses = config.snapshot.cache.misses
    answer = ask(door, first)
    assert status(answer) == 200
    assert door.memo_hits == 0
    assert config.snapshot.cache.misses == misses + 1  # verified again, not served from the memo


@pytest.mark.parametrize(
    ("variant", "target", "method", "expected"),
    [
        ("method", "/orders", "POST", (403, "no_matching_rule")),
        ("path", "/admin/users", "GET", (403, "role_missing")),
        ("dot-dot", "/orders/../admin/users", "GET", (403, "role_missing")),
        ("host", "/orders", "GET", (403, "tenant_mismatch")),
        ("token", "/orders", "GET", (403, "scope_missing")),
    ],
)
def test_the_memo_answers_only_the_same_request(
    world: World,
    config: Config,
    clock: Clock,
    variant: str,
    target: str,
    method: str,
    expected: tuple[int, str],
) -> None:
    """Method, target, host and authorization together select an answer: any other request is decided."""
    door = door_for(config, clock)
    token = world.token()
    assert status(ask(door, raw(token))) == 200
    assert status(ask(door, raw(token))) == 200
    headers = {
        "host": raw(token, host="api.globex.test"),
        "token": raw(world.token(world.claims(scope="other"))),
    }.get(variant, raw(token))
    answer = ask(door, headers, target, method)
    assert (status(answer), reason(answer)) == expected
    assert door.memo_hits == 1


def test_requests_the_memo_never_answers(world: World, config: Config, clock: Clock) -> None:
    """Denies, dry-run denies, several authorization or host headers: decided every time."""
    door = door_for(config, clock)
    token = world.token()
    cases = [
        (raw(world.token(world.claims(scope="other"))), 403),  # a deny
        (raw(world.token(world.claims(tenant="dry", scope="x")), host="api.dry.test"), 200),  # dry-run deny
        ([*raw(token), (b"Authorization", f"Bearer {token}".encode())], 401),
        ([*raw(token), (b"Host", b"api.acme.test")], 200),
        ([(b":authority", b"api.acme.test"), *raw(token)], 200),
    ]
    for headers, expected in cases:
        for _ in range(3):
            assert status(ask(door, headers)) == expected
    assert door.memo_hits == 0
    assert door.memo_entries == 0


@pytest.mark.parametrize("spelling", [b"x_authz_subject", b"X-Authz_Scopes", b"x.authz.tenant"])
def test_a_request_with_another_spelling_of_an_identity_header_is_decided(
    world: World, config: Config, clock: Clock, spelling: bytes
) -> None:
    """Its answer names that header for removal: the memo's answer to the same request without it
    would let the client's copy through. Such a request is neither answered from the memo nor kept."""
    door = door_for(config, clock)
    token = world.token()
    first = ask(door, raw(token))
    assert ask(door, raw(token)) == first
    assert door.memo_hits == 1
    for _ in range(2):
        answer = ask(door, [*raw(token), (spelling, b"forged")])
        assert status(answer) == 200
        removed = answer.partition(b"x-envoy-auth-headers-to-remove: ")[2].split(b"\r\n")[0].split(b",")
        assert spelling.lower() in removed
    assert door.memo_hits == 1
    assert ask(door, raw(token)) == first  # and the memo still answers the request without it
    assert door.memo_hits == 2


@pytest.mark.parametrize("name", [b"X-HTTP-Method-Override", b"x-http-method", b"x-method-override"])
def test_a_request_with_a_method_override_is_decided(
    world: World, config: Config, clock: Clock, name: bytes
) -> None:
    """The override is decided on (method_override): the memo's allow of the same request without
    it must not answer it (the upstream would run DELETE on a GET's allow)."""
    door = door_for(config, clock)
    token = world.token()
    first = ask(door, raw(token))
    assert ask(door, raw(token)) == first
    assert door.memo_hits == 1
    for _ in range(2):
        answer = ask(door, [*raw(token), (name, b"DELETE")])
        assert status(answer) == 400
        assert b'"reason": "method_override"' in answer
    assert door.memo_hits == 1


def test_public_rules_by_host_are_decided_every_time(config: Config, clock: Clock) -> None:
    """A public rule of the host's tenant rests on no token: cheap to decide, never kept."""
    door = door_for(config, clock)
    for _ in range(3):
        answer = ask(door, raw(), "/healthz")
        assert status(answer) == 200
        assert status(ask(door, raw("not-even-a-token"), "/healthz")) == 200
    assert door.memo_hits == 0
    assert door.memo_entries == 0


def test_a_public_rule_reached_through_the_token_is_tied_to_the_token(
    world: World, config: Config, clock: Clock
) -> None:
    """No tenant by host: the token's tenant's public rule allows, and that allow ends with the token."""
    door = door_for(config, clock)
    headers = raw(world.token(), host="unknown.test")
    for _ in range(2):
        answer = ask(door, headers, "/healthz")
        assert status(answer) == 200
        assert b"x-authz-tenant: acme\r\n" in answer
    assert door.memo_hits == 1
    clock.now = NOW + 300 + SKEW
    answer = ask(door, headers, "/healthz")
    assert (status(answer), reason(answer)) == (401, "token_expired")


@pytest.mark.parametrize(
    ("claims", "moment", "expected"),
    [
        ({"iat": None, "nbf": None}, NOW + 300 - 3600 - 1, "lifetime_exceeded"),  # counted from now
        ({"iat": NOW + 20, "nbf": NOW - 100}, NOW + 20 - SKEW - 1, "iat_in_future"),  # iat is the later
    ],
    ids=["no-iat-no-nbf", "iat-after-nbf"],
)
def test_the_window_start_is_where_the_time_checks_start_to_pass(
    world: World, config: Config, clock: Clock, claims: dict[str, int | None], moment: int, expected: str
) -> None:
    """The window's start follows whichever time check binds; a clock set back before it is decided afresh."""
    door = door_for(config, clock)
    headers = raw(world.token(world.claims(**claims)))
    assert status(ask(door, headers)) == 200
    clock.now = float(moment + 1)
    assert status(ask(door, headers)) == 200
    assert door.memo_hits == 1
    clock.now = float(moment)
    answer = ask(door, headers)
    assert (status(answer), reason(answer)) == (401, expected)


@pytest.mark.parametrize("setting", ["token:\n  cache_size: 0\n", "http:\n  memo_size: 0\n"])
def test_no_memo_when_turned_off(world: World, tmp_path: Path, clock: Clock, setting: str) -> None:
    """``http.memo_size: 0``, or ``token.cache_size: 0`` (verify every token every time): no memo."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    text = CONFIG.replace("token:\n", setting, 1) if setting.startswith("token") else CONFIG + setting
    (tmp_path / "config.yaml").write_text(text)
    config = load_config(tmp_path / "config.yaml")
    door = door_for(config, clock)
    headers = raw(world.token())
    for _ in range(3):
        assert status(ask(door, headers)) == 200
    assert door.memo_hits == 0
    assert door.memo_entries == 0


def test_no_memo_with_tracing(world: World, config: Config, clock: Clock) -> None:
    """With tracing on, every check has its span with its steps: the memo is not used."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    door = door_for(config, clock, Telemetry(provider))
    headers = raw(world.token())
    for _ in range(3):
        assert status(ask(door, headers)) == 200
    assert door.memo_hits == 0
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("envoy ext_authz http check") == 3
    assert names.count("policy") == 3
    provider.shutdown()


def test_the_memo_is_bounded(world: World, tmp_path: Path, clock: Clock) -> None:
    """More distinct requests than ``http.memo_size``: the oldest answers go, the newest still repeat."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(CONFIG + "http:\n  memo_size: 100\n")
    door = door_for(load_config(tmp_path / "config.yaml"), clock)
    headers = raw(world.token())
    for n in range(150):
        assert status(ask(door, headers, f"/orders/{n}")) == 200
    assert door.memo_entries == 100
    assert status(ask(door, headers, "/orders/149")) == 200
    assert door.memo_hits == 1
    assert status(ask(door, headers, "/orders/0")) == 200  # forgotten: decided again
    assert door.memo_hits == 1


async def test_the_sweep_survives_a_connection_that_fails_to_close(config: Config, clock: Clock) -> None:
    """One expired connection raising does not stop the sweep: it is aborted, the others still expire."""

    class Failing:
        deadline = 1.0
        aborted = False

        def expired(self) -> None:
            raise RuntimeError("boom")

        def abort(self) -> None:
            self.aborted = True

    class Idle(Failing):
        closed = False

        def expired(self) -> None:
            self.closed = True

    door = door_for(config, clock)
    failing, idle = Failing(), Idle()
    door.connections = {failing, idle}  # type: ignore[arg-type]
    door._sweep()
    try:
        assert failing.aborted
        assert idle.closed
        assert door._sweeper is not None  # rescheduled
    finally:
        door._sweeper.cancel()  # type: ignore[union-attr]


async def test_stop_still_cuts_slow_clients_while_draining(
    world: World, tmp_path: Path, clock: Clock
) -> None:
    """During stop()'s grace, a connection stuck in its headers is cut at header_timeout, not at the grace."""
    import asyncio
    import time

    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(CONFIG + "http:\n  header_timeout: 0.3\n")
    config = load_config(tmp_path / "config.yaml")
    door = door_for(config, clock)
    port = await door.start("127.0.0.1:0")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /orders HTTP/1.1\r\nhost: api.acme.test\r\nx-slow: ")
    await writer.drain()
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await door.stop(10.0)
    assert time.monotonic() - started < 3.0
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408 ")
    writer.close()


def test_an_allow_of_a_long_path_is_not_kept(world: World, config: Config, clock: Clock) -> None:
    """An entry holds its path twice: at MAX_KEPT_PATH (1024) and beyond, repeats are decided, so
    that 4096 entries of 8 KiB paths cannot take ~72 MiB per door (review of issue 16, B)."""
    door = door_for(config, clock)
    headers = raw(world.token())
    long = "/orders/" + "a" * 1100
    assert status(ask(door, headers, long)) == 200
    assert status(ask(door, headers, long)) == 200
    assert door.memo_hits == 0
    short = "/orders/" + "a" * 900
    assert (status(ask(door, headers, short)), status(ask(door, headers, short)), door.memo_hits) == (
        200,
        200,
        1,
    )
