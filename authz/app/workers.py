"""``authz serve --workers N``: N processes sharing one port (SO_REUSEPORT), supervised.

The supervisor replaces a worker that dies, forwards SIGTERM and waits for the drains; its
admin port merges the workers' metrics (prometheus-client's multi-process files,
authz.telemetry.multiprocess) and is ready when every worker is (docs/architecture.md, "Workers").
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from authz.app.admin import run_admin
from authz.app.limits import raise_open_files_limit
from authz.config import load_config
from authz.errors import ConfigError
from authz.telemetry import multiprocess
from authz.telemetry.metrics import Registry
from authz.telemetry.multiprocess import MergedWorkers

__all__ = ["WorkerLink", "supervise"]

_log = logging.getLogger("authz.workers")
_ENV_LISTEN = "AUTHZ_WORKER_LISTEN"
_ENV_ANNOUNCE = "AUTHZ_WORKER_ANNOUNCE"
_ENV_HTTP_LISTEN = "AUTHZ_WORKER_HTTP_LISTEN"
_MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class WorkerLink:
    """What a worker process gets from its supervisor (through its environment)."""

    listen: str
    http_listen: str | None
    announce: Path  # the worker writes its private admin port here
    metrics: Path | None  # ...and its metrics files here

    @classmethod
    def from_env(cls) -> WorkerLink | None:
        listen, announce = os.environ.get(_ENV_LISTEN), os.environ.get(_ENV_ANNOUNCE)
        http = os.environ.get(_ENV_HTTP_LISTEN) or None
        folder = os.environ.get(multiprocess.ENV)
        metrics = Path(folder) if folder else None
        return cls(listen, http, Path(announce), metrics) if listen and announce else None

    def announce_admin(self, port: int) -> None:
        tmp = self.announce.with_suffix(".tmp")
        tmp.write_text(str(port), encoding="ascii")
        tmp.replace(self.announce)


@dataclass
class _Worker:
    index: int
    announce: Path
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0

    def admin_port(self) -> int | None:
        try:
            return int(self.announce.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None


async def supervise(
    config_path: str,
    listen: str | None,
    admin_listen: str | None,
    workers: int,
    http_listen: str | None = None,
) -> int:
    """Run ``workers`` serving processes until SIGTERM/SIGINT; returns the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _log.error("configuration rejected", extra={"fields": {"error": str(exc)}})
        return 2
    open_files, _ = raise_open_files_limit()  # before the workers start: they inherit it
    address = listen or config.listen or "127.0.0.1:9001"
    admin_address = admin_listen or config.admin_listen
    grace = config.server.grace_seconds
    http_address = http_listen or config.http_listen
    reservations: list[socket.socket] = []
    try:
        reservation, shared = _reserve(address)
        reservations.append(reservation)
        shared_http = None
        if http_address:
            http_reservation, shared_http = _reserve(http_address)
            reservations.append(http_reservation)
    except OSError as exc:
        for sock in reservations:
            sock.close()
        _log.error("cannot serve", extra={"fields": {"error": f"cannot listen: {exc}"}})
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.ExitStack() as held, tempfile.TemporaryDirectory(prefix="authz-workers-") as folder:
        for sock in reservations:
            held.enter_context(sock)
        pool = [_Worker(i, Path(folder) / f"worker-{i}.port") for i in range(workers)]
        # The workers' metrics files: a folder of our own, whatever PROMETHEUS_MULTIPROC_DIR says.
        metrics = Path(folder) / "metrics"
        metrics.mkdir()
        merged = MergedWorkers(metrics, lambda: _refresh(pool))
        launch = _Launch(config_path, shared, shared_http, metrics)
        registry = Registry()  # the supervisor's process_* and python_*
        registry.collector(_PoolCollector(pool))
        registry.collector(merged)
        async with contextlib.AsyncExitStack() as stack:
            admin_port = None
            if admin_address:
                admin_port = await stack.enter_async_context(
                    run_admin(admin_address, registry, lambda: _all_ready(pool), blocking=True)
                )
            for worker in pool:
                await _start(worker, launch)
            _log.info(
                "supervising",
                extra={"fields": {"listen": shared, "port": int(shared.rpartition(":")[2]),
                                  "http_port": int(shared_http.rpartition(":")[2]) if shared_http else None,
                                  "workers": workers, "admin_port": admin_port, "open_files": open_files}},
            )  # fmt: skip
            watchers = {asyncio.ensure_future(w.process.wait()): w for w in pool if w.process}
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                done, _ = await asyncio.wait({*watchers, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopping}:
                    worker = watchers.pop(task)
                    if stop.is_set():
                        break
                    if worker.process is not None:
                        await asyncio.to_thread(_retire, merged, worker.process.pid)
                    await _replace(worker, launch, task.result())
                    if worker.process is not None:
                        watchers[asyncio.ensure_future(worker.process.wait())] = worker
            _log.info("draining", extra={"fields": {"grace_seconds": grace, "workers": workers}})
            await _stop_all(pool, grace)
            for task in watchers:
                task.cancel()
    _log.info("stopped")
    return 0


def _reserve(address: str) -> tuple[socket.socket, str]:
    """Bind (not listen) the address with SO_REUSEPORT: fixes port 0 to one port for all workers."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator's choice of address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{bound}"


@dataclass(frozen=True, slots=True)
class _Launch:
    """How every worker is started."""

    config_path: str
    listen: str
    http_listen: str | None
    metrics: Path  # the folder of the workers' metrics files


async def _start(worker: _Worker, launch: _Launch) -> None:
    worker.announce.unlink(missing_ok=True)
    env = {**os.environ, _ENV_LISTEN: launch.listen, _ENV_ANNOUNCE: str(worker.announce)}
    env[_ENV_HTTP_LISTEN] = launch.http_listen or ""
    env[multiprocess.ENV] = str(launch.metrics)
    worker.process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz", "serve", "--config", launch.config_path, env=env
    )
    worker.started = time.monotonic()


async def _replace(worker: _Worker, launch: _Launch, code: int) -> None:
    """A worker died: start another, backing off if it keeps dying right away."""
    worker.restarts += 1
    quick = time.monotonic() - worker.started < 1.0
    delay = min(_MAX_BACKOFF, 0.1 * 2 ** min(worker.restarts, 6)) if quick else 0.0
    _log.error(
        "worker exited; starting another",
        extra={
            "fields": {"worker": worker.index, "exit_code": code, "restarts": worker.restarts, "delay": delay}
        },
    )
    await asyncio.sleep(delay)
    await _start(worker, launch)


async def _stop_all(pool: Sequence[_Worker], grace: float) -> None:
    running = [w.process for w in pool if w.process is not None and w.process.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace + 5.0)
    except TimeoutError:
        for process in running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in running))


class _PoolCollector:
    """The supervisor's own: workers alive, and replaced (by slot: a bounded label)."""

    def __init__(self, pool: Sequence[_Worker]) -> None:
        self._pool = pool

    def collect(self) -> list[Metric]:
        alive = sum(1 for w in self._pool if w.process is not None and w.process.returncode is None)
        restarts = CounterMetricFamily(
            "authz_worker_restarts_total", "Workers replaced after dying.", labels=["worker"]
        )
        for worker in self._pool:
            restarts.add_metric([str(worker.index)], worker.restarts)
        return [GaugeMetricFamily("authz_workers", "Worker processes alive.", alive), restarts]


def _fetch(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def _all_ready(pool: Sequence[_Worker]) -> bool:
    for worker in pool:
        port = worker.admin_port()
        if port is None:
            return False
        try:
            status, _ = _fetch(port, "/readyz")
        except OSError:
            return False
        if status != 200:
            return False
    return True


def _retire(merged: MergedWorkers, pid: int) -> None:
    """A dead worker's metrics files: folded away (its counts kept), its gauges dropped."""
    try:
        merged.retire(pid)
    except Exception as exc:  # noqa: BLE001 - the replacement must start whatever the files hold
        _log.error(
            "cannot fold a dead worker's metrics files",
            extra={"fields": {"pid": pid, "error": f"{type(exc).__name__}: {exc}"}},
        )


def _refresh(pool: Sequence[_Worker]) -> None:
    """Ask each live worker to write its metrics files now: its private /metrics does (bounded)."""
    for worker in pool:
        port = worker.admin_port()
        if port is not None:
            with contextlib.suppress(OSError):
                _fetch(port, "/metrics")  # a worker that does not answer: its files as last written
