"""``authz serve --workers N``: N processes sharing one port (SO_REUSEPORT), supervised.

The supervisor replaces a worker that dies, forwards SIGTERM and waits for the drains; its
admin port merges the workers' metrics and is ready when every worker is
(docs/architecture.md, "Workers").
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

from authz.app.admin import run_admin
from authz.app.limits import raise_open_files_limit
from authz.config import load_config
from authz.errors import ConfigError
from authz.telemetry.metrics import Registry, Sample

__all__ = ["WorkerLink", "merge_metrics", "supervise"]

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

    @classmethod
    def from_env(cls) -> WorkerLink | None:
        listen, announce = os.environ.get(_ENV_LISTEN), os.environ.get(_ENV_ANNOUNCE)
        http = os.environ.get(_ENV_HTTP_LISTEN) or None
        return cls(listen, http, Path(announce)) if listen and announce else None

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
        registry = Registry()
        registry.collector(lambda: _pool_metrics(pool))
        async with contextlib.AsyncExitStack() as stack:
            admin_port = None
            if admin_address:
                admin_port = await stack.enter_async_context(
                    run_admin(admin_address, registry, lambda: _all_ready(pool), extra=lambda: _gather(pool))
                )
            for worker in pool:
                await _start(worker, config_path, shared, shared_http)
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
                    await _replace(worker, config_path, shared, shared_http, task.result())
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


async def _start(worker: _Worker, config_path: str, listen: str, http_listen: str | None) -> None:
    worker.announce.unlink(missing_ok=True)
    env = {**os.environ, _ENV_LISTEN: listen, _ENV_ANNOUNCE: str(worker.announce)}
    env[_ENV_HTTP_LISTEN] = http_listen or ""
    worker.process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authz", "serve", "--config", config_path, env=env
    )
    worker.started = time.monotonic()


async def _replace(
    worker: _Worker, config_path: str, listen: str, http_listen: str | None, code: int
) -> None:
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
    await _start(worker, config_path, listen, http_listen)


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


def _pool_metrics(pool: Sequence[_Worker]) -> list[Sample]:
    alive = sum(1 for w in pool if w.process is not None and w.process.returncode is None)
    restarts = [((str(w.index),), float(w.restarts)) for w in pool]
    return [
        Sample("authz_workers", "gauge", "Worker processes alive.", (), [((), float(alive))]),
        Sample(
            "authz_worker_restarts_total", "counter", "Workers replaced after dying.", ("worker",), restarts
        ),
    ]


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


def _gather(pool: Sequence[_Worker]) -> str:
    texts = []
    for worker in pool:
        port = worker.admin_port()
        if port is None:
            continue
        with contextlib.suppress(OSError):
            status, text = _fetch(port, "/metrics")
            if status == 200:
                texts.append(text)
    return merge_metrics(texts)


def merge_metrics(texts: Sequence[str]) -> str:
    """Merge Prometheus text from several processes: sum counters and histograms, max gauges."""
    kinds: dict[str, str] = {}
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    values: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) > 2 else family
                if family not in headers:
                    headers[family], values[family] = [], {}
                    order.append(family)
                if line not in headers[family]:
                    headers[family].append(line)
                if parts[1] == "TYPE" and len(parts) > 3:
                    kinds[family] = parts[3]
                continue
            if not line.strip() or not family:
                continue
            series, _, number = line.rpartition(" ")
            value = float(number)
            merged = values[family]
            if series in merged and kinds.get(family) == "gauge":
                merged[series] = max(merged[series], value)
            else:
                merged[series] = merged.get(series, 0.0) + value
    lines: list[str] = []
    for family in order:
        lines.extend(headers[family])
        lines.extend(f"{series} {_format(v)}" for series, v in values[family].items())
    return "\n".join(lines) + ("\n" if lines else "")


def _format(value: float) -> str:
    return repr(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)
