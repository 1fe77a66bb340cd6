"""`authz serve --workers N`: processes sharing the port, replaced when they die, drained together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from authz._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from tests.helpers import World, check_request
from tests.integration.harness import http_request

DEADLINE = 20.0


@dataclass
class Supervisor:
    process: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)

    def wait_for(self, predicate: object, what: str) -> dict[str, object]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):  # type: ignore[operator]
                    return line
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


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
def supervisor(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    """Two workers on one port, with the supervisor's admin port."""
    config = _config(world, tmp_path_factory.mktemp("workers"))
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--config", str(config), "--workers", "2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    running = Supervisor(process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("{"):
                running.lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        running.wait_for(lambda r: r["msg"] == "supervising", "the supervisor")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def _ports(supervisor: Supervisor) -> tuple[int, int]:
    line = supervisor.wait_for(lambda r: r["msg"] == "supervising", "the supervisor")
    return int(line["port"]), int(line["admin_port"])  # type: ignore[call-overload]


def _worker_pids(supervisor: Supervisor) -> set[int]:
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


def test_workers_share_the_port_and_every_worker_answers(supervisor: Supervisor, world: World) -> None:
    """Two worker processes serve one port; checks over new connections reach both."""
    port, admin = _ports(supervisor)
    _until(lambda: _ready(admin), "readiness")
    assert len(_worker_pids(supervisor)) == 2
    token = _real_token(world)
    before = _metric(admin, 'authz_checks_total{tenant="acme",decision="allow"')
    assert all(_check(port, token) == 0 for _ in range(40))
    _until(
        lambda: _metric(admin, 'authz_checks_total{tenant="acme",decision="allow"') == before + 40,
        "merged counts",
    )
    answering = {int(r["pid"]) for r in supervisor.lines if r["msg"] == "decision"}  # type: ignore[call-overload]
    assert answering == _worker_pids(supervisor)
    assert _metric(admin, "authz_workers ") == 2


def test_a_killed_worker_is_replaced(supervisor: Supervisor, world: World) -> None:
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


def test_sigterm_drains_every_worker(supervisor: Supervisor) -> None:
    """SIGTERM to the supervisor: every worker drains and stops, then the supervisor exits 0."""
    process = supervisor.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    supervisor.wait_for(lambda r: r["msg"] == "stopped" and r["logger"] == "authz.workers", "the end")
    stopped = {r["pid"] for r in supervisor.lines if r["msg"] == "stopped" and r["logger"] == "authz.server"}
    assert len(stopped) == 2  # both workers alive at the time (one was replaced earlier) drained
