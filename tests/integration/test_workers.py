"""`authz serve --workers N`: processes sharing the port, replaced when they die, drained together."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from testkit.envoy import http_request
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


def _metric(admin_port: int, name: str) -> float:
    body = http_request(admin_port, "GET", "/metrics", timeout=5).body.decode()
    return sum(float(line.rpartition(" ")[2]) for line in body.splitlines() if line.startswith(name))


def _real_token(world: World) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now, nbf=now, exp=now + 300))


def test_workers_share_the_port_and_every_worker_answers(supervisor: ServeProcess, world: World) -> None:
    """Two worker processes serve one port; checks over new connections reach both."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    _until(lambda: len(_worker_pids(supervisor)) == 2, "both workers' serving lines")
    token = _real_token(world)
    before = _metric(admin, 'authz_checks_total{tenant="acme",decision="allow"')
    assert all(_check(port, token) == 0 for _ in range(40))
    _until(
        lambda: _metric(admin, 'authz_checks_total{tenant="acme",decision="allow"') == before + 40,
        "merged counts",
    )

    def answering() -> set[int]:
        return {int(r["pid"]) for r in supervisor.lines if r["msg"] == "decision"}  # type: ignore[call-overload]

    # New connections are spread by the kernel; keep checking (bounded) until both have answered.
    for _ in range(200):
        if answering() == _worker_pids(supervisor):
            break
        assert _check(port, token) == 0
    _until(lambda: answering() == _worker_pids(supervisor), "both workers answering")
    assert _metric(admin, "authz_workers ") == 2


def test_a_killed_worker_is_replaced(supervisor: ServeProcess, world: World) -> None:
    """SIGKILL on a worker: the supervisor starts another; checks keep being answered."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    victim = sorted(_worker_pids(supervisor))[0]
    serving_before = sum(1 for r in supervisor.lines if r["msg"] == "serving")
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_for(lambda r: r["msg"] == "worker exited; starting another", "the replacement")
    _until(lambda: sum(1 for r in supervisor.lines if r["msg"] == "serving") > serving_before, "a new worker")
    _until(lambda: _ready(admin), "readiness after the replacement")
    token = _real_token(world)
    assert all(_check(port, token) == 0 for _ in range(10))
    assert _metric(admin, "authz_worker_restarts_total") >= 1


def test_sigterm_drains_every_worker(supervisor: ServeProcess) -> None:
    """SIGTERM to the supervisor: every worker drains and stops, then the supervisor exits 0."""
    process = supervisor.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    supervisor.wait_for(lambda r: r["msg"] == "stopped" and r["logger"] == "authz.workers", "the end")
    stopped = {r["pid"] for r in supervisor.lines if r["msg"] == "stopped" and r["logger"] == "authz.server"}
    assert len(stopped) == 2  # both workers alive at the time (one was replaced earlier) drained
