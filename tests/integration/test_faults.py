"""Faults under load, each bounded in time and count, with checks running all along.

- the config reloaded every 100 ms: no failed and no wrong decision;
- SIGTERM: checks in flight complete, new connections are refused cleanly, exit within the grace;
- a worker killed with SIGKILL: it is replaced, and only checks in flight on it can fail;
- the config file disappears: the last good snapshot keeps serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from testkit.h2wire import GOAWAY, H2Connection
from testkit.processes import DEADLINE, ServeProcess
from testkit.world import CONFIG, World, check_request

pytestmark = pytest.mark.slow

LOAD_SECONDS = 2.0


def _start(world: World, root: Path, *args: str) -> ServeProcess:
    shutil.copytree(world.root / "keys", root / "keys")
    (root / "config.yaml").write_text(CONFIG)
    return ServeProcess.start(root / "config.yaml", args)


@pytest.fixture
def server(world: World, tmp_path: Path) -> Iterator[tuple[ServeProcess, Path]]:
    """One authz process on 127.0.0.1:0 with the test world's config, and its folder."""
    running = _start(world, tmp_path, "--listen", "127.0.0.1:0")
    try:
        running.wait_for(lambda r: r["msg"] == "serving", "serving")
        yield running, tmp_path
    finally:
        running.stop()


def _token(world: World, **claims: object) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now, nbf=now, exp=now + 300, **claims))


@dataclass
class Load:
    """Checks from a background thread until stopped (bounded by time and count)."""

    port: int
    requests: list[tuple[str, object, int]]  # (name, CheckRequest, expected status code)
    outcomes: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # monotonic times of RPC failures
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    new_channel_each: bool = False

    def run(self) -> None:
        deadline = time.monotonic() + 30.0
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            for count in range(100_000):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                name, message, expected = self.requests[count % len(self.requests)]
                if self.new_channel_each:
                    channel.close()
                    channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
                try:
                    response = AuthorizationStub(channel).Check(message, timeout=5)  # type: ignore[no-untyped-call]
                except grpc.RpcError as exc:
                    self.outcomes[f"rpc:{exc.code().name}"] += 1  # type: ignore[attr-defined]
                    self.failed_at.append(time.monotonic())
                    continue
                self.outcomes["answered"] += 1
                if response.status.code != expected:
                    self.wrong.append(f"{name}: {response.status.code}")
        finally:
            channel.close()

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=40)


def _requests(world: World) -> list[tuple[str, object, int]]:
    return [
        ("allowed", check_request(token=_token(world)), 0),
        ("forbidden", check_request(path="/admin/x", token=_token(world)), 7),
        ("missing", check_request(), 16),
    ]


def test_reload_every_100ms_under_load(server: tuple[ServeProcess, Path], world: World) -> None:
    """The config is rewritten every 100 ms (two versions) while checks run: none fails, none is wrong."""
    server, root = server
    config = root / "config.yaml"
    variant = CONFIG.replace("      - name: admin\n", "      - name: admin-area\n")  # same policy, new text
    with Load(server.ports()[0], _requests(world)) as load:
        deadline = time.monotonic() + LOAD_SECONDS
        flips = 0
        # Rewrite every 100 ms; the watcher's settle bound still reloads during the churn.
        while time.monotonic() < deadline or not any(r["msg"] == "config reloaded" for r in server.lines):
            assert time.monotonic() < deadline + DEADLINE, "no reload happened"
            text = variant if flips % 2 == 0 else CONFIG
            tmp = config.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, config)
            flips += 1
            time.sleep(0.1)
    assert flips >= 10
    assert load.wrong == []
    assert set(load.outcomes) == {"answered"}
    assert load.outcomes["answered"] > 50


def test_config_disappearing_keeps_the_last_good_snapshot(
    server: tuple[ServeProcess, Path], world: World
) -> None:
    """The config file (and its folder's keys) vanish under load: decisions go on unchanged."""
    server, root = server
    with Load(server.ports()[0], _requests(world)) as load:
        time.sleep(0.3)
        (root / "config.yaml").unlink()
        shutil.rmtree(root / "keys")
        server.wait_for(lambda r: r["msg"].startswith("config reload failed"), "the failed reload")  # type: ignore[union-attr]
        time.sleep(0.5)
    assert load.wrong == []
    assert set(load.outcomes) == {"answered"}


def test_sigterm_under_load_drains_and_exits(world: World, tmp_path: Path) -> None:
    """SIGTERM with checks running: answers go on until the drain, then connections are refused; exit 0 in time."""
    server = _start(world, tmp_path, "--listen", "127.0.0.1:0")
    try:
        server.wait_for(lambda r: r["msg"] == "serving", "serving")
        with Load(server.ports()[0], _requests(world), new_channel_each=True) as load:
            time.sleep(0.5)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=15) == 0
            elapsed = time.monotonic() - started
        # The drain ends once the last accepted check is answered, far before the 10 s grace: a call
        # grpc held without dispatching it would keep the process (and its client) to the grace.
        assert elapsed < 6.0
        assert load.wrong == []
        # Once draining, new calls are refused (UNAVAILABLE, or CANCELLED for a stream that
        # raced the GOAWAY): never a wrong answer, and nothing failed before the signal.
        assert set(load.outcomes) <= {"answered", "rpc:UNAVAILABLE", "rpc:CANCELLED"}
        assert all(at >= started for at in load.failed_at)
        assert load.outcomes["answered"] > 0
    finally:
        server.stop()


def test_sigkill_of_a_worker_under_load_is_bounded(world: World, tmp_path: Path) -> None:
    """A worker killed mid-load is replaced; the loss is bounded to checks in flight on it."""
    server = _start(world, tmp_path, "--listen", "127.0.0.1:0", "--workers", "2")
    try:
        server.wait_for(lambda r: r["msg"] == "supervising", "the supervisor")
        port = server.ports()[0]
        server.wait_for(lambda r: r["msg"] == "serving", "a worker")
        deadline = time.monotonic() + DEADLINE
        while len({r["pid"] for r in server.lines if r["msg"] == "serving"}) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with Load(port, _requests(world), new_channel_each=True) as load:
            time.sleep(0.5)
            victim = next(int(r["pid"]) for r in server.lines if r["msg"] == "serving")  # type: ignore[call-overload]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            server.wait_for(lambda r: r["msg"] == "worker exited; starting another", "the replacement")
            time.sleep(1.0)
            answered_before_end = load.outcomes["answered"]
            time.sleep(0.5)
        assert load.wrong == []
        # Until the kernel has closed the dead worker's listening socket (tens of ms on a loaded
        # machine), the connections SO_REUSEPORT hashes to it are refused: a client that retries
        # at once fails many times in that moment, so the bound is on when failures happen, not
        # on how many. 2 s is generous for a busy 2-core machine; none may come after it.
        late = [round(at - killed, 3) for at in load.failed_at if not -0.1 <= at - killed <= 2.0]
        assert late == []
        assert load.outcomes["answered"] > answered_before_end  # the surviving worker goes on answering
        assert load.outcomes["answered"] > 20
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        server.stop()


def test_check_sent_after_the_drain_began_is_refused_at_once(world: World, tmp_path: Path) -> None:
    """A Check on an open connection after the server's GOAWAY is answered or refused, never held.

    (A client that ignores the GOAWAY, as one that sent its stream before the GOAWAY arrived.)
    """
    server = _start(world, tmp_path, "--listen", "127.0.0.1:0")
    connection = None
    try:
        server.wait_for(lambda r: r["msg"] == "serving", "serving")
        connection = H2Connection(server.ports()[0])
        check = "/envoy.service.auth.v3.Authorization/Check"
        message = check_request(token=_token(world)).SerializeToString()
        first = connection.unary(check, message)
        assert connection.outcome(first, time.monotonic() + DEADLINE) == "answered"
        server.process.send_signal(signal.SIGTERM)
        assert connection.until(GOAWAY, time.monotonic() + DEADLINE) is not None
        sent = time.monotonic()
        late = connection.unary(check, message)
        outcome = connection.outcome(late, sent + DEADLINE)
        waited = time.monotonic() - sent
        # Refused once the checks in flight are answered (none here): well under the 10 s grace.
        # 4 s is generous for a busy 2-core machine; a held stream ends only at the grace.
        assert waited < 4.0, (outcome, waited)
        assert server.process.wait(timeout=DEADLINE) == 0
    finally:
        if connection is not None:
            connection.close()
        server.stop()
