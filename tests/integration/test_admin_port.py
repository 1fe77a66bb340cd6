"""The admin port cannot take the file descriptors both doors need (attack-19 F), and the process
takes the open-files headroom its hard limit allows.

A real ``authz serve`` (gRPC door, HTTP door, admin port) under a small RLIMIT_NOFILE, flooded with
idle admin connections: it holds at most its bound of them, the kubelet's gRPC probe and a new
HTTP-door client are answered throughout, the log does not flood, and scrapes work again right after.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz.app.admin import MAX_CONNECTIONS, READ_TIMEOUT
from testkit.envoy import free_port, raw_request
from testkit.processes import Record, ServeProcess
from testkit.world import World

pytestmark = pytest.mark.slow  # a real authz serve, flooded for a few seconds

LIMIT = 256  # descriptors for authz: soft = hard, so raising the soft limit cannot help here
FLOOD = LIMIT + 150  # idle admin connections, far past what the process could hold


@contextlib.contextmanager
def serving(world: World, nofile: tuple[int, int]) -> Iterator[tuple[ServeProcess, Record]]:
    args = (
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--http-listen",
        f"127.0.0.1:{free_port()}",
    )
    process = ServeProcess.start(world.config_path, args, nofile=nofile)
    try:
        yield process, process.wait_for(lambda r: r.get("msg") == "serving", "serving")
    finally:
        process.stop()


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _probe(port: int) -> str:
    """grpc.health.v1 on a new connection, as the kubelet's gRPC probe does."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)  # type: ignore[attr-defined]
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return int(reply.status)


def test_idle_admin_connections_cannot_take_the_doors_descriptors(world: World) -> None:
    with serving(world, (LIMIT, LIMIT)) as (process, line):
        pid = process.process.pid
        admin, grpc_port, http_port = int(line["admin_port"]), int(line["port"]), int(line["http_port"])
        rest = _descriptors(pid)
        held: list[socket.socket] = []
        try:
            for _ in range(FLOOD):  # connect without waiting: past the backlog the kernel retries SYNs
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", admin))
                held.append(sock)
            # authz takes connections up to its bound, each for READ_TIMEOUT, then the next ones:
            # sample while the flood lasts (FLOOD / MAX_CONNECTIONS rounds of READ_TIMEOUT).
            peak = rest
            deadline = time.monotonic() + 3 * READ_TIMEOUT
            while time.monotonic() < deadline:
                peak = max(peak, _descriptors(pid))
                time.sleep(0.01)
            assert peak <= rest + MAX_CONNECTIONS + 8, (rest, peak)
            assert _probe(grpc_port) == "SERVING"
            check = b"GET /healthz HTTP/1.1\r\nhost: api.acme.test\r\n\r\n"
            assert raw_request(http_port, check, timeout=5).status == 200
        finally:
            for sock in held:
                sock.close()
        # Back to normal at once: the bound frees within READ_TIMEOUT of the last idle connection.
        deadline = time.monotonic() + 10  # a scrape answered on a loaded machine
        while True:
            with contextlib.suppress(OSError):
                if _scrape(admin) == 200:
                    break
            assert time.monotonic() < deadline, "the admin port did not answer again"
            time.sleep(0.05)
        noisy = [r for r in process.raw if "out of system resource" in r or "cannot accept" in r]
        assert len(noisy) <= 2, noisy[:5]


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(world: World) -> None:
    with serving(world, (LIMIT, 4 * LIMIT)) as (process, line):
        assert line["open_files"] == 4 * LIMIT
        limits = Path(f"/proc/{process.process.pid}/limits").read_text()
        (row,) = [r for r in limits.splitlines() if r.startswith("Max open files")]
        assert row.split()[3:5] == [str(4 * LIMIT), str(4 * LIMIT)]
