"""Processes under test: our server (``authz serve``), the do-nothing ext_authz, Envoy.

Each is started on 127.0.0.1 with port 0, found through its own log or admin
API, waited for (bounded) and stopped by its pid (SIGTERM, then SIGKILL).
Logs go to files in the run's temporary folder.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "AuthzServer",
    "NoopServer",
    "envoy_listener_ports",
    "http_get",
    "parse_metrics",
    "rss_kib",
]

ROOT = Path(__file__).resolve().parents[1]
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (labels as written)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _user_system(pid: int, stat: str = "stat") -> tuple[float, float]:
    """User and system CPU seconds of a process so far (/proc/PID/stat: all its threads), or of
    one of its threads (``stat`` = task/TID/stat)."""
    fields = Path(f"/proc/{pid}/{stat}").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return sum(_user_system(pid))


def cpu_split(pid: int) -> tuple[float, float, int]:
    """User CPU seconds, system CPU seconds and context switches (all threads) of a process so far."""
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                    switches += int(line.split()[1])
    return (*_user_system(pid), switches)


def main_thread_split(pid: int) -> tuple[float, float, int]:
    """User CPU seconds, system CPU seconds and voluntary context switches of a process's main
    thread so far: an asyncio server's event loop (grpc.aio runs every call's Python there)."""
    voluntary = 0
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            voluntary = int(line.split()[1])
    return (*_user_system(pid, f"task/{pid}/stat"), voluntary)


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=5)


@dataclass
class AuthzServer:
    """``authz serve --workers N`` with an admin port; ``start()`` then ``wait_ready()``."""

    name: str
    config: Path
    workers: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    admin_port: int = 0
    http_port: int = 0  # the HTTP door, also served
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / f"{self.name}.log"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "authz",
            "serve",
            "--config",
            str(self.config),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            str(self.workers),
            "--http-listen",
            "127.0.0.1:0",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}  # no tracing
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None  # noqa: S101 - start() first
        wanted = "serving" if self.workers == 1 else "supervising"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if not self.port:
                for line in self.log.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if record.get("msg") == wanted:
                            self.port, self.admin_port = int(record["port"]), int(record["admin_port"])
                            self.http_port = int(record["http_port"])
                            break
            if self.port:
                with contextlib.suppress(OSError):
                    if http_get(self.admin_port, "/readyz", timeout=2.0)[0] == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101
        return self.process.pid

    def metrics(self) -> dict[str, float]:
        status, text = http_get(self.admin_port, "/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name} /metrics -> {status}")
        return parse_metrics(text)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


@dataclass
class NoopServer:
    """bench/noop_authz.py (gRPC) or bench/noop_http.py (HTTP): answers every check with OK."""

    folder: Path
    script: str = "noop_authz.py"
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        name = f"{self.script}{'_'.join(('', *self.args))}".replace("/", "_")  # args may hold paths
        self.log = self.folder / f"{name[-200:]}.log"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, str(ROOT / "bench" / self.script), "--listen", "127.0.0.1:0", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None  # noqa: S101
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"noop server exited:\n{self.log.read_text()[-3000:]}")
            for line in self.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("msg") == "serving":
                        self.port = int(record["port"])
                        return
            time.sleep(0.05)
        raise RuntimeError(f"noop server not ready within {timeout}s")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


def envoy_listener_ports(admin: object) -> dict[str, int]:
    """Listener name -> bound port, from Envoy's admin ``/listeners``."""
    body = admin.admin("/listeners?format=json")  # type: ignore[attr-defined]
    ports = {}
    for status in json.loads(body).get("listener_statuses", []):
        ports[status["name"]] = int(status["local_address"]["socket_address"]["port_value"])
    return ports


@contextlib.contextmanager
def started(*servers: AuthzServer | NoopServer) -> Iterator[None]:
    """Start all, then wait for each (they start in parallel); stop all on exit."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield
    finally:
        for server in servers:
            server.stop()
