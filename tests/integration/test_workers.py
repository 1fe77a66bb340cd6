"""`authz serve --workers N`: processes sharing the port, replaced when they die, drained together."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from testkit.envoy import http_request
from testkit.exposition import Exposition, assert_histogram_consistent, parse_exposition
from testkit.processes import DEADLINE, ServeProcess
from testkit.world import World, check_request

pytestmark = pytest.mark.slow


def _config(world: World, root: Path) -> Path:
    path = root / "config.yaml"
    path.write_text(
        world.config_path.read_text().replace(
            "listen: 127.0.0.1:0", "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0"
        )
    )
    (root / "keys").symlink_to(world.root / "keys")
    return path


@pytest.fixture(scope="module")
def supervisor(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Two workers on one port, with the supervisor's admin port."""
    running = ServeProcess.start(_config(world, tmp_path_factory.mktemp("workers")), ["--workers", "2"])
    try:
        running.wait_for(lambda r: r["msg"] == "supervising", "the supervisor")
        yield running
    finally:
        running.stop()


def _ports(supervisor: ServeProcess) -> tuple[int, int]:
    port, admin = supervisor.ports()
    assert admin is not None
    return port, admin


def _worker_pids(supervisor: ServeProcess) -> set[int]:
    return {int(r["pid"]) for r in supervisor.lines if r["msg"] == "serving"}  # type: ignore[call-overload]


def _ready(admin_port: int) -> bool:
    try:
        return http_request(admin_port, "GET", "/readyz", timeout=3).status == 200
    except OSError:
        return False


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _check(port: int, token: str) -> int:
    # A new channel per check: a new connection, which the kernel may hand to either worker.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = AuthorizationStub(channel).Check(check_request(token=token), timeout=5)  # type: ignore[no-untyped-call]
        return int(response.status.code)


def _scrape(admin_port: int) -> Exposition:
    return parse_exposition(http_request(admin_port, "GET", "/metrics", timeout=5).body.decode())


def _metric(admin_port: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (among others)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in _scrape(admin_port).samples.items() if n == name and wanted <= have)


ALLOWED = {"tenant": "acme", "decision": "allow", "reason": "ok"}


def _real_token(world: World) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now, nbf=now, exp=now + 300))


def test_workers_share_the_port_and_every_worker_answers(supervisor: ServeProcess, world: World) -> None:
    """Two worker processes serve one port; checks over new connections reach both."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    _until(lambda: len(_worker_pids(supervisor)) == 2, "both workers' serving lines")
    token = _real_token(world)
    before = _metric(admin, "authz_checks_total", **ALLOWED)
    assert all(_check(port, token) == 0 for _ in range(40))
    _until(lambda: _metric(admin, "authz_checks_total", **ALLOWED) == before + 40, "merged counts")

    def answering() -> set[int]:
        return {int(r["pid"]) for r in supervisor.lines if r["msg"] == "decision"}  # type: ignore[call-overload]

    # New connections are spread by the kernel; keep checking (bounded) until both have answered.
    for _ in range(200):
        if answering() == _worker_pids(supervisor):
            break
        assert _check(port, token) == 0
    _until(lambda: answering() == _worker_pids(supervisor), "both workers answering")
    assert _metric(admin, "authz_workers") == 2


def test_the_supervisor_merges_the_workers_and_shows_its_own_process(
    supervisor: ServeProcess, world: World
) -> None:
    """The supervisor's /metrics: the workers' families merged (gauges as declared), no pid label,
    its own process_* and python_*, and OpenMetrics when asked."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    assert _check(port, _real_token(world)) == 0
    metrics = _scrape(admin)
    assert metrics.value("authz_workers") == 2
    assert metrics.value("authz_config_generation") == 1  # livemax of two workers at 1
    assert metrics.value("authz_keys", set="decryption", issuer="") == 7  # livemax: the same in each
    assert metrics.value("authz_token_cache_capacity") == 2 * 10_000  # livesum: each worker's bound
    assert 0 < metrics.value("authz_config_last_success_timestamp_seconds") <= time.time()
    assert metrics.types["authz_token_cache_lookups_total"] == "counter"
    assert_histogram_consistent(metrics, "authz_check_duration_seconds")
    assert all("pid" not in dict(labels) for _, labels in metrics.samples)
    # process_* are the supervisor's (a worker's own stay on its private port).
    with open(f"/proc/{supervisor.process.pid}/statm", encoding="ascii") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert metrics.value("process_resident_memory_bytes") == pytest.approx(resident, rel=0.5)
    assert metrics.types["python_info"] == "gauge"
    accept = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"}
    answer = http_request(admin, "GET", "/metrics", headers=accept, timeout=5)
    assert (answer.header("content-type") or "").startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}  # strict
    assert {"authz_checks", "authz_workers", "authz_check_duration_seconds", "process_cpu_seconds"} <= set(
        families
    )


def test_a_killed_worker_is_replaced_and_its_counts_kept(supervisor: ServeProcess, world: World) -> None:
    """SIGKILL on a worker: the supervisor starts another; checks keep being answered. The dead
    worker's counts stay in the merged counters (they never go back), its gauges leave."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    victim = sorted(_worker_pids(supervisor))[0]
    token = _real_token(world)
    before = _scrape(admin).total("authz_checks_total")
    # Checks until the victim has answered some (new connections: the kernel picks the worker).
    sent = 0
    while not any(r["msg"] == "decision" and r["pid"] == victim for r in list(supervisor.lines)):
        assert sent < 200, "the victim answered none of 200 checks"
        assert _check(port, token) == 0
        sent += 1
    counted = _scrape(admin)
    checks = counted.total("authz_checks_total")
    # At once, no waiting: the scrape has every live worker write its files first.
    assert checks == before + sent
    serving_before = sum(1 for r in supervisor.lines if r["msg"] == "serving")
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for(lambda r: r["msg"] == "worker exited; starting another", "the replacement")
    _until(lambda: sum(1 for r in supervisor.lines if r["msg"] == "serving") > serving_before, "a new worker")
    _until(lambda: _ready(admin), "readiness after the replacement")
    after = _scrape(admin)
    assert after.total("authz_checks_total") == checks  # kept: the counter did not go back
    assert after.total("authz_check_duration_seconds_count") == counted.total(
        "authz_check_duration_seconds_count"
    )
    # Two live workers' cache bounds: the dead one's gauge is gone (with it: 3 x 10000).
    assert after.value("authz_token_cache_capacity") == 2 * 10_000
    assert all(_check(port, token) == 0 for _ in range(10))
    later = _scrape(admin)
    assert later.total("authz_checks_total") == checks + 10
    assert _metric(admin, "authz_worker_restarts_total") >= 1
    # Bounded: a replacement adds no series (no pid label, restarts by worker slot).
    assert set(later.samples) == set(after.samples) | {
        key for key in later.samples if key[0].startswith(("process_", "python_gc"))
    }
    assert all("pid" not in dict(labels) for _, labels in later.samples)


def test_sigterm_drains_every_worker(supervisor: ServeProcess) -> None:
    """SIGTERM to the supervisor: every worker drains and stops, then the supervisor exits 0."""
    process = supervisor.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    supervisor.wait_for(lambda r: r["msg"] == "stopped" and r["logger"] == "authz.workers", "the end")
    stopped = {r["pid"] for r in supervisor.lines if r["msg"] == "stopped" and r["logger"] == "authz.server"}
    assert len(stopped) == 2  # both workers alive at the time (one was replaced earlier) drained
