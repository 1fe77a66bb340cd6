"""A real Redis server for tests: Debian's ``redis-server`` (installed by .ci/run) on 127.0.0.1.

One per test module (``redis_server`` fixtures in the tests that need it), on a free port, in
its own folder, no persistence: killed, restarted on the same port, paused (SIGSTOP) and
resumed by the fault tests. ``REDIS_SERVER`` names another binary (valkey-server speaks the same).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from testkit.envoy import free_port

__all__ = ["RedisServer", "redis_binary", "running_redis"]

_START = 10.0  # seconds for a server to answer PING (a busy 2-core machine)


def redis_binary() -> str | None:
    """The server binary: $REDIS_SERVER, else redis-server or valkey-server on PATH."""
    named = os.environ.get("REDIS_SERVER")
    if named:
        return named
    return shutil.which("redis-server") or shutil.which("valkey-server")


@dataclass
class RedisServer:
    """One redis-server process; ``start`` again after ``kill`` brings it back on the same port."""

    folder: Path
    port: int = 0
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = self.folder / "redis.log"
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_binary()
        assert binary, "no redis-server: apt-get install redis-server (.ci/run does)"
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log),
            "--protected-mode", "no",
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(redis.RedisError, OSError):
                if self.client().ping():
                    return self
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not answer PING within {_START} s")

    def client(self) -> redis.Redis:
        """A plain (sync) client for the test's own reads and writes."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=5,
        )

    def kill(self) -> None:
        """SIGKILL, and reap: the port is free again, every connection cut."""
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung server, a GC pause)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def accepting(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


@contextlib.contextmanager
def running_redis(folder: Path, **kwargs: object) -> Iterator[RedisServer]:
    server = RedisServer(folder, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisSentinel:
    """One Sentinel (``redis-server CONF --sentinel``) watching ``primary`` as service ``name``."""

    folder: Path
    primary_port: int
    name: str = "primary"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/{db}"

    def start(self) -> RedisSentinel:
        binary = redis_binary()
        assert binary, "no redis-server: apt-get install redis-server (.ci/run does)"
        conf = self.folder / "sentinel.conf"  # Sentinel rewrites it: its own copy
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\nlogfile {self.folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
        )
        self.process = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
                if client.sentinel_get_master_addr_by_name(self.name):
                    return self
            time.sleep(0.05)
        raise AssertionError("the Sentinel did not come up")

    def primary(self) -> tuple[str, int] | None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        found = client.sentinel_get_master_addr_by_name(self.name)
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return host, int(found[1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
