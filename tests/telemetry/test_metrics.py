"""Prometheus metrics: the registry's text format, and the admin port scraped for real over HTTP.

prometheus-client writes the exposition; it is read back by a strict parser of our own
(testkit/exposition.py), not by the library that wrote it, so the assertions read values
by name and labels, the way Prometheus would, not by string matching. OpenMetrics is read
by prometheus-client's own strict OpenMetrics parser, the reference one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import math
import os
import platform
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from authz.app.admin import run_admin
from authz.app.jwks import JwksRegistry
from authz.app.serve import _ready, config_metrics
from authz.config import Config, SnapshotHolder
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.metrics import Registry
from authz.telemetry.recorder import Telemetry
from testkit.exposition import Exposition, assert_histogram_consistent, parse_exposition
from testkit.world import ACME_IDP, CONFIG, GLOBEX_IDP, NOW, SHARED_IDP, World, check_request

LOOPBACK = "127.0.0.1"
IO_TIMEOUT = 5.0
START_TIMEOUT = 30.0

# ------------------------------------------------------------------ a small exposition parser


# ------------------------------------------------------------------ the registry's text format


def _text(registry: Registry) -> str:
    body, content_type = registry.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode("utf-8")


def test_counter_text_format() -> None:
    """A counter: HELP, TYPE, one line per label set in sorted order, the increments added up."""
    registry = Registry(standard=False)
    counter = registry.counter("things_total", "Things seen.", ("kind", "zone"))
    counter.inc(("b", "z1"))
    counter.inc(("a", "z2"), 2)
    counter.inc(("b", "z1"))
    plain = registry.counter("plain_total", "No labels.")
    plain.inc(())
    plain.inc((), 0.5)
    registry.counter("never_total", "No labels, never counted: 0, as prometheus-client's own counters.")
    assert _text(registry) == (
        "# HELP things_total Things seen.\n"
        "# TYPE things_total counter\n"
        'things_total{kind="a",zone="z2"} 2.0\n'
        'things_total{kind="b",zone="z1"} 2.0\n'
        "# HELP plain_total No labels.\n"
        "# TYPE plain_total counter\n"
        "plain_total 1.5\n"
        "# HELP never_total No labels, never counted: 0, as prometheus-client's own counters.\n"
        "# TYPE never_total counter\n"
        "never_total 0.0\n"
    )


def test_histogram_cumulative_buckets_inf_sum_count() -> None:
    """A histogram: cumulative buckets (a bound is inclusive), +Inf == count, sum of the observations."""
    registry = Registry(standard=False)
    histogram = registry.histogram("lat_seconds", "Latency.", ("op",))
    for value in (0.0001, 0.003, 0.003, 5.0):  # on the first bound, twice mid-way, above the last
        histogram.observe(("read",), value)
    histogram.observe(("write",), 0.2)
    lines = _text(registry).splitlines()
    read = [line for line in lines if 'op="read"' in line]
    # The bounds are spelled as this service always wrote them (le="1", not "1.0").
    assert read[:14] == [
        'lat_seconds_bucket{le="0.0001",op="read"} 1.0',
        'lat_seconds_bucket{le="0.00025",op="read"} 1.0',
        'lat_seconds_bucket{le="0.0005",op="read"} 1.0',
        'lat_seconds_bucket{le="0.001",op="read"} 1.0',
        'lat_seconds_bucket{le="0.0025",op="read"} 1.0',
        'lat_seconds_bucket{le="0.005",op="read"} 3.0',
        'lat_seconds_bucket{le="0.01",op="read"} 3.0',
        'lat_seconds_bucket{le="0.025",op="read"} 3.0',
        'lat_seconds_bucket{le="0.05",op="read"} 3.0',
        'lat_seconds_bucket{le="0.1",op="read"} 3.0',
        'lat_seconds_bucket{le="0.25",op="read"} 3.0',
        'lat_seconds_bucket{le="1",op="read"} 3.0',
        'lat_seconds_bucket{le="2.5",op="read"} 3.0',
        'lat_seconds_bucket{le="+Inf",op="read"} 4.0',
    ]
    exposition = parse_exposition(_text(registry))
    assert exposition.value("lat_seconds_sum", op="read") == pytest.approx(5.0061)
    assert exposition.value("lat_seconds_count", op="read") == 4
    assert exposition.value("lat_seconds_bucket", op="write", le="0.1") == 0
    assert exposition.value("lat_seconds_bucket", op="write", le="0.25") == 1
    assert_histogram_consistent(exposition, "lat_seconds")


def test_label_values_are_escaped() -> None:
    """Backslash, double quote and line feed in a label value are escaped and parse back to the value."""
    registry = Registry(standard=False)
    nasty = 'a"b\\c\nd}e,f="g'
    registry.counter("esc_total", "Escapes.", ("v",)).inc((nasty,))
    text = _text(registry)
    assert 'esc_total{v="a\\"b\\\\c\\nd}e,f=\\"g"} 1.0\n' in text
    assert text.count("\n") == 3
    assert parse_exposition(text).value("esc_total", v=nasty) == 1


def test_help_text_is_escaped() -> None:
    """A backslash or line feed in HELP text is escaped: the exposition keeps one line per entry."""
    registry = Registry(standard=False)
    registry.counter("h_total", "first line\nsecond \\ line").inc(())
    text = _text(registry)
    assert text.splitlines()[0] == "# HELP h_total first line\\nsecond \\\\ line"
    assert parse_exposition(text).helps["h_total"] == "first line\nsecond \\ line"


class _Collected:
    """A custom collector (prometheus-client's protocol: ``collect()``) of fixed families."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return list(self.families)


def test_collector_samples_and_special_values() -> None:
    """Collected gauges are rendered with HELP/TYPE; +Inf, -Inf and NaN values do not break the scrape."""
    registry = Registry(standard=False)
    g = GaugeMetricFamily("g", "A gauge.", labels=["k"])
    g.add_metric(["inf"], math.inf)
    g.add_metric(["nan"], math.nan)
    registry.collector(
        _Collected(g, GaugeMetricFamily("h", "Another.", -math.inf), GaugeMetricFamily("big", "Big.", 1e20))
    )
    exposition = parse_exposition(_text(registry))
    assert exposition.types == {"g": "gauge", "h": "gauge", "big": "gauge"}
    assert exposition.value("g", k="inf") == math.inf
    assert math.isnan(exposition.value("g", k="nan"))
    assert exposition.value("h") == -math.inf
    assert exposition.value("big") == 1e20


def test_parser_rejects_malformed_exposition() -> None:
    """The parser used here is strict: bad escapes, samples without TYPE and duplicates fail."""
    for bad in (
        '# TYPE x counter\nx{a="\\q"} 1\n',
        "y 1\n",
        "# TYPE x counter\nx 1\nx 2\n",
        "# TYPE x counter\nx 1",
    ):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


# ------------------------------------------------------------------ the admin port, in process


@dataclass
class Admin:
    """A real admin server on 127.0.0.1 with a Check handler feeding its registry."""

    port: int
    telemetry: Telemetry
    holder: SnapshotHolder
    service: AuthorizationService
    stopping: asyncio.Event

    async def check(self, message: CheckRequest) -> CheckResponse:
        return await self.service.check(message.SerializeToString(), None)

    async def get(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """A request by the standard library's HTTP client (in a thread: the server is on this loop)."""

        def fetch() -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=IO_TIMEOUT)
            try:
                conn.request(method, path, headers=headers or {})
                response = conn.getresponse()
                answer = {k.lower(): v for k, v in response.getheaders()}
                return response.status, answer, response.read()
            finally:
                conn.close()

        return await asyncio.to_thread(fetch)

    async def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Raw bytes in, the whole answer read until the server closes."""
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        try:
            writer.write(data)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return int(status_line.split(" ")[1]), headers, body

    async def scrape(self) -> Exposition:
        status, headers, body = await self.get("/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body)
        return parse_exposition(body.decode("utf-8"))


@contextlib.asynccontextmanager
async def admin_server(config: Config | None) -> AsyncIterator[Admin]:
    telemetry = Telemetry()
    holder = SnapshotHolder(config)
    stopping = asyncio.Event()
    telemetry.registry.collector(config_metrics(holder, JwksRegistry(), lambda: None))
    service = AuthorizationService(holder, lambda: NOW, telemetry)
    ready = functools.partial(_ready, holder, stopping)
    async with run_admin(f"{LOOPBACK}:0", telemetry.registry, ready) as port:
        yield Admin(port, telemetry, holder, service, stopping)


@pytest.fixture
async def admin(config: Config) -> AsyncIterator[Admin]:
    async with admin_server(config) as running:
        yield running


async def test_metrics_after_allow_and_deny_traffic(admin: Admin, world: World) -> None:
    """/metrics after real checks: counts by tenant/decision/reason, histograms, config gauges, key sizes."""
    for _ in range(3):
        await admin.check(check_request(token=world.token()))
    for _ in range(2):
        await admin.check(check_request(token=world.token(world.claims(scope="profile"))))
    await admin.check(check_request(path="/orders"))
    await admin.check(check_request(path="/orders%2F..", token=world.token()))
    globex = world.claims(iss=GLOBEX_IDP, tenant="globex")
    globex_token = world.token(globex, signing_kid="globex-es256")
    await admin.check(check_request(host="api.globex.test", token=globex_token))
    dry = world.claims(tenant="dry", scope="profile")
    await admin.check(check_request(host="api.dry.test", token=world.token(dry)))

    metrics = await admin.scrape()
    checks = "authz_checks_total"
    assert metrics.types[checks] == "counter"
    assert metrics.value(checks, tenant="acme", decision="allow", reason="ok") == 3
    assert metrics.value(checks, tenant="acme", decision="deny", reason="scope_missing") == 2
    assert metrics.value(checks, tenant="acme", decision="deny", reason="token_missing") == 1
    assert metrics.value(checks, tenant="", decision="deny", reason="path_invalid") == 1
    assert metrics.value(checks, tenant="globex", decision="allow", reason="ok") == 1
    assert metrics.value(checks, tenant="dry", decision="dry-run-deny", reason="scope_missing") == 1
    assert metrics.total(checks) == 9
    assert len(metrics.series(checks)) == 6

    latency = "authz_check_duration_seconds"
    assert_histogram_consistent(metrics, latency)
    assert metrics.value(f"{latency}_count", decision="allow") == 4
    assert metrics.value(f"{latency}_count", decision="deny") == 4
    assert metrics.value(f"{latency}_count", decision="dry-run-deny") == 1
    assert metrics.value(f"{latency}_bucket", decision="allow", le="+Inf") == 4

    steps = "authz_token_step_duration_seconds"
    assert_histogram_consistent(metrics, steps)
    # Tokens that reached the token layer: 3 + 2 acme, 1 globex, 1 dry (not path_invalid, not no-token).
    for step in ("decrypt", "verify", "policy"):
        assert metrics.value(f"{steps}_count", step=step) == 7

    assert metrics.types["authz_config_generation"] == "gauge"
    assert metrics.value("authz_config_generation") == 1
    assert metrics.value("authz_keys", set="decryption", issuer="") == 7
    assert metrics.value("authz_keys", set="issuer", issuer=ACME_IDP) == 4
    assert metrics.value("authz_keys", set="issuer", issuer=GLOBEX_IDP) == 1
    assert metrics.value("authz_keys", set="issuer", issuer=SHARED_IDP) == 1
    assert metrics.types["authz_jwks_fetches_total"] == "counter"
    assert metrics.series("authz_jwks_fetches_total") == []
    # A swap is a new generation.
    admin.holder.swap(admin.holder.current)
    assert (await admin.scrape()).value("authz_config_generation") == 2


async def test_healthz_and_readyz(config: Config) -> None:
    """/healthz is 200 always; /readyz is 503 before a config is installed, 200 serving, 503 draining."""
    async with admin_server(None) as admin:
        assert (await admin.get("/healthz"))[:1] == (200,)
        status, _, body = await admin.get("/readyz")
        assert (status, body) == (503, b"not ready\n")
        metrics = await admin.scrape()
        assert metrics.value("authz_config_generation") == 0
        assert metrics.series("authz_keys") == []
        admin.holder.swap(config)
        status, _, body = await admin.get("/readyz")
        assert (status, body) == (200, b"ready\n")
        admin.stopping.set()
        assert (await admin.get("/readyz"))[0] == 503
        assert (await admin.get("/healthz"))[0] == 200


async def test_admin_http_errors(admin: Admin) -> None:
    """Unknown path 404, POST 405, malformed request line or HTTP version 400, oversized request 400."""
    assert (await admin.get("/nope"))[0] == 404
    assert (await admin.get("/metrics/extra"))[0] == 404
    assert (await admin.get("/metrics", method="POST"))[0] == 405
    assert (await admin.get("/healthz", method="DELETE"))[0] == 405
    assert (await admin.raw(b"GARBAGE\r\n\r\n"))[0] == 400
    assert (await admin.raw(b"GET /metrics\r\n\r\n"))[0] == 400
    assert (await admin.raw(b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n"))[0] == 400
    assert (await admin.raw(b"GET  /metrics HTTP/1.1\r\n\r\n"))[0] == 400
    assert (await admin.raw(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"))[0] == 400
    status, headers, _ = await admin.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["connection"] == "close"
    assert headers["cache-control"] == "no-store"
    # A client that hangs up mid-request does not hurt the next one.
    _, writer = await asyncio.open_connection(LOOPBACK, admin.port)
    writer.write(b"GET /metr")
    writer.close()
    assert (await admin.get("/healthz"))[0] == 200


async def test_query_string_and_head(admin: Admin) -> None:
    """A query string is ignored; HEAD answers the GET headers without a body."""
    assert (await admin.get("/metrics?name[]=authz_checks_total"))[0] == 200
    status, headers, body = await admin.raw(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""
    status, headers, body = await admin.get("/healthz", method="HEAD")
    assert (status, body) == (200, b"")


# What Prometheus 3 sends by default (scrape_protocols: protobuf first, which prometheus-client
# does not write, then OpenMetrics 1.0.0), and what Prometheus 2 sends.
PROMETHEUS_3_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _openmetrics(body: bytes) -> dict[str, Metric]:
    """The families of an OpenMetrics body, by prometheus-client's strict parser (it raises on
    anything the format forbids: a missing # EOF, a bucket that is no integer, ...)."""
    return {f.name: f for f in openmetrics_parser.text_string_to_metric_families(body.decode("utf-8"))}


async def test_openmetrics_when_the_scraper_asks_for_it(admin: Admin, world: World) -> None:
    """Accept negotiation: Prometheus 2's and 3's Accept get OpenMetrics 1.0.0, with the same
    families and values as the text format; no Accept, text/plain or anything else get 0.0.4."""
    await admin.check(check_request(token=world.token()))
    await admin.check(check_request(path="/orders"))
    text = await admin.scrape()
    for accept in (PROMETHEUS_3_ACCEPT, PROMETHEUS_2_ACCEPT, "application/openmetrics-text"):
        status, headers, body = await admin.get("/metrics", headers={"Accept": accept})
        assert status == 200
        assert headers["content-type"].startswith(
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        )
        assert int(headers["content-length"]) == len(body)
        assert body.endswith(b"# EOF\n")
        families = _openmetrics(body)
        checks = families["authz_checks"]  # OpenMetrics names a counter without _total...
        assert checks.type == "counter"
        ok = {"tenant": "acme", "decision": "allow", "reason": "ok"}
        (sample,) = [s for s in checks.samples if s.labels == ok]
        assert sample.name == "authz_checks_total"  # ...and its sample with it
        assert sample.value == text.value("authz_checks_total", **ok) == 1
        latency = families["authz_check_duration_seconds"]
        assert latency.type == "histogram"
        buckets = [
            s for s in latency.samples if s.name.endswith("_bucket") and s.labels["decision"] == "allow"
        ]
        assert [s.labels["le"] for s in buckets][-2:] == ["2.5", "+Inf"]
        assert families["authz_config_generation"].type == "gauge"
        assert families["process_cpu_seconds"].type == "counter"
        # Every family of the text format is there (OpenMetrics drops a counter's _total).
        assert {n.removesuffix("_total") for n in text.types} == set(families)
    for accept in (None, "text/plain", "text/plain;version=0.0.4", "application/json", "*/*"):
        status, headers, body = await admin.get("/metrics", headers={"Accept": accept} if accept else None)
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"# EOF" not in body
        assert parse_exposition(body.decode()).value("authz_checks_total", **ok) == 1
    # Every Accept line counts; HEAD answers the GET's content type.
    status, headers, body = await admin.raw(
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n"
        b"ACCEPT: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )
    assert (status, body) == (200, b"")
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")


async def test_process_and_python_collectors(admin: Admin) -> None:
    """prometheus-client's process_* and python_* metrics describe this very process."""
    started = time.time()
    metrics = await admin.scrape()
    assert metrics.types["process_cpu_seconds_total"] == "counter"
    assert 0 < metrics.value("process_cpu_seconds_total") < time.process_time() + 1
    resident = metrics.value("process_resident_memory_bytes")
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    assert resident == pytest.approx(pages * os.sysconf("SC_PAGE_SIZE"), rel=0.5)
    assert metrics.value("process_virtual_memory_bytes") >= resident
    # The test's own connection is open while the server counts: at least a few descriptors.
    assert 3 <= metrics.value("process_open_fds") <= len(os.listdir("/proc/self/fd")) + 16
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert metrics.value("process_max_fds") == soft
    # This process started before the scrape, within the test run.
    assert started - 3600 < metrics.value("process_start_time_seconds") <= started
    info = {
        "implementation": platform.python_implementation(),
        "major": str(sys.version_info.major),
        "minor": str(sys.version_info.minor),
        "patchlevel": str(sys.version_info.micro),
        "version": platform.python_version(),
    }
    assert metrics.value("python_info", **info) == 1
    assert metrics.types["python_gc_objects_collected_total"] == "counter"
    assert {s["generation"] for s in metrics.series("python_gc_collections_total")} == {"0", "1", "2"}
    # Their labels are as bounded as ours: the same series on the next scrape.
    for name in metrics.types:
        if name.startswith(("process_", "python_")):
            assert len(metrics.series(name)) <= 3, name


async def test_failing_collector_is_a_500_not_a_hang(admin: Admin) -> None:
    """A collector that raises: /metrics answers 500 at once, and the port keeps serving."""

    class Broken:
        def collect(self) -> list[Metric]:
            raise RuntimeError("collector failed")

    admin.telemetry.registry.collector(Broken())
    status, _, body = await admin.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (500, b"internal error\n")
    assert (await admin.get("/healthz"))[0] == 200


async def test_label_cardinality_is_bounded(admin: Admin, world: World) -> None:
    """Random paths and hosts create no label value: the set of series stays the same."""
    token = world.token()

    async def traffic() -> list[str]:
        marks = [secrets.token_hex(8) for _ in range(3)]
        await admin.check(check_request(path=f"/orders/{marks[0]}", token=token))
        await admin.check(check_request(path=f"/{marks[1]}", token=token))
        await admin.check(check_request(host=f"api-{marks[2]}.example", path=f"/{marks[2]}"))
        return marks

    await traffic()
    before = await admin.scrape()
    marks = await traffic()
    _, _, body = await admin.get("/metrics")
    after = parse_exposition(body.decode())
    assert set(after.samples) == set(before.samples)
    assert after.total("authz_checks_total") == before.total("authz_checks_total") + 3
    text = body.decode()
    for mark in marks:
        assert mark not in text
    for series in after.series("authz_checks_total"):
        assert series["tenant"] in {"", "acme"}


# ------------------------------------------------------------------ the admin port of `authz serve`


@pytest.fixture(scope="module")
def served_admin(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int, list[str]]]:
    """``authz serve --admin-listen 127.0.0.1:0``: (gRPC port, admin port, stderr lines)."""
    folder = tmp_path_factory.mktemp("admin")
    config_path = folder / "serve.yaml"
    config_path.write_text(
        CONFIG.replace("keys/", f"{world.root}/keys/") + "server:\n  grace_seconds: 2\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    command = [sys.executable, "-m", "authz", "serve", "--config", str(config_path)]
    command += ["--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    serving: dict[str, int] = {}
    started = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if '"msg":"serving"' in line:
                serving.update(json.loads(line))
                started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(START_TIMEOUT), "no 'serving' line in time"
        assert serving, "".join(lines)
        yield serving["port"], serving["admin_port"], lines
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serve_admin_port_from_the_serving_line(served_admin, world: World) -> None:
    """`authz serve --admin-listen`: probes answer and /metrics counts the process's real checks."""
    port, admin_port, _ = served_admin
    assert admin_port
    assert admin_port != port
    assert _http_get(admin_port, "/healthz")[0] == 200
    assert _http_get(admin_port, "/readyz")[0] == 200
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        call: Callable[..., CheckResponse] = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        call(check_request(path="/admin/x"), timeout=IO_TIMEOUT)
        call(check_request(path="/healthz"), timeout=IO_TIMEOUT)
    status, body = _http_get(admin_port, "/metrics")
    assert status == 200
    metrics = parse_exposition(body.decode())
    assert metrics.value("authz_checks_total", tenant="acme", decision="deny", reason="token_missing") == 1
    assert metrics.value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 1
    assert metrics.value("authz_config_generation") == 1
    assert metrics.value("authz_keys", set="decryption", issuer="") == 7
    assert metrics.types["authz_config_reloads_total"] == "counter"
    assert metrics.value("authz_config_last_success_timestamp_seconds") > 1_600_000_000
    assert metrics.value("authz_config_restart_required", setting="tls") == 0
    assert metrics.value("authz_config_restart_required", setting="tls.client_ca") == 0
    assert_histogram_consistent(metrics, "authz_check_duration_seconds")


def test_histogram_puts_a_nan_in_no_bucket() -> None:
    """A NaN observation is counted (and summed) but lands in no bucket, as the linear search had it."""
    registry = Registry(standard=False)
    histogram = registry.histogram("lat_seconds", "Latency.", ())
    histogram.observe((), float("nan"))
    histogram.observe((), 0.0001)
    series = histogram.series[()]
    assert series[: len(histogram.buckets)] == [1.0] + [0.0] * (len(histogram.buckets) - 1)
    assert series[-1] == 2
