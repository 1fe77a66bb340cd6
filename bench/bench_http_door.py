"""What the HTTP door costs per request in Python, measured in one run against a do-nothing parser.

The same request bytes (what Envoy's ``http_service`` sends: prefixed path,
host, authorization with an RSA-OAEP-256/RS256 token, x-request-id and Envoy's
own headers) are fed to a connection's ``data_received`` in-process (no
sockets; the answer goes to a transport that keeps nothing), interleaved in
rounds so that machine noise hits all variants alike:

- floor:     httptools parsing the request and a fixed ``200`` (bench/noop_http.py's protocol)
- decided:   the door with ``http.memo_size: 0``: every request decided (token cache warm)
- memo:      the door as configured by default: repeats answered from the memo
- memo, allow log sampled 0: the same with ``telemetry.allow_log_sample_rate: 0``

The decision log is on and written, through setup_logging's handler, to /dev/null,
one write per request: the feeding runs outside an event loop, as if each
request had a loop iteration of its own (the server's worst case; under load it
writes once per iteration for every check answered in it).
Prints microseconds per request and the ratios to the floor; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import noop_http

from authz.config import SnapshotHolder, load_config
from authz.http.door import HttpDoor
from authz.http.protocol import Connection
from authz.telemetry.logs import JsonHandler
from authz.telemetry.recorder import Telemetry
from testkit.world import NOW, build_world

PREFIX = "/ext-authz"


class _Sink(asyncio.Transport):
    """A transport that accepts and forgets what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.last = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.written += 1
        self.last = bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        return None


def _request(token: str) -> bytes:
    return (
        f"GET {PREFIX}/orders HTTP/1.1\r\nhost: api.acme.test\r\nauthorization: Bearer {token}\r\n"
        "x-request-id: 3f1c2a4e-1b2c-4d5e-8f90-123456789abc\r\nx-forwarded-proto: http\r\n"
        "x-envoy-expected-rq-timeout-ms: 2000\r\nx-envoy-internal: true\r\nx-forwarded-for: 127.0.0.1\r\n"
        "content-length: 0\r\n\r\n"
    ).encode()


def _door_feeder(config_path: Path, request: bytes) -> Callable[[], None]:
    config = load_config(config_path)
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(), config.http)
    connection = Connection(door)
    sink = _Sink()
    connection.connection_made(sink)

    def feed() -> None:
        connection.data_received(request)
        connection.requests = 0  # keep the connection below max_requests_per_connection

    feed()
    if not sink.last.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"the benchmark request was not allowed: {sink.last[:200]!r}")
    return feed


def _floor_feeder(request: bytes) -> Callable[[], None]:
    connection = noop_http.Connection()
    connection.connection_made(_Sink())
    return lambda: connection.data_received(request)


def _time(fn: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    devnull = Path("/dev/null").open("w")  # noqa: SIM115 - open for the whole run
    handler = JsonHandler()
    handler.setStream(devnull)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)

    world = build_world(Path(tempfile.mkdtemp(prefix="bench-http-")))
    base = world.config_path.read_text() + f"http:\n  path_prefix: {PREFIX}\n"
    paths = {}
    for name, extra in (
        ("decided", "  memo_size: 0\n"),
        ("memo", ""),
        ("memo_log_sampled_0", "telemetry:\n  allow_log_sample_rate: 0\n"),
    ):
        paths[name] = world.root / f"config-{name}.yaml"
        paths[name].write_text(base + extra)
    request = _request(world.token(outer="RSA-OAEP-256", inner="RS256"))

    variants = {"floor": _floor_feeder(request)}
    variants |= {name: _door_feeder(path, request) for name, path in paths.items()}
    for fn in variants.values():  # warm up
        _time(fn, 500)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(_time(fn, args.requests))
    devnull.close()
    medians = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
    floor = medians["floor"]
    print(f"{'HTTP door variant':<22}{'us/request':>11}{'x floor':>9}{'+us':>8}")
    for name, value in medians.items():
        print(f"{name:<22}{value:>11.1f}{value / floor:>9.2f}{value - floor:>8.1f}")
    result = {
        "benchmark": "http_door",
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "us_per_request": medians,
        "ratio_to_floor": {name: value / floor for name, value in medians.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
