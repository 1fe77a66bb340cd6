"""What the gRPC door's handler costs per check in Python, in-process, without grpc.aio around it.

The serialized CheckRequest Envoy sends for a warm RSA-OAEP-256/RS256 token (the header_map
form deploy/envoy renders, bench/minting.py) is answered by ``AuthorizationService.answer``,
the registered handler, with a stand-in servicer context carrying Envoy's metadata; awaited
on a running event loop, as grpc.aio awaits it. Variants, interleaved in rounds so that
machine noise hits them alike:

- parse:     ``CheckRequest.FromString`` alone (what any Python handler of the message pays)
- decided:   ``server.memo_size: 0``: every check decided (token cache warm)
- memo:      the default: repeats answered from the answer memo
- memo, allow log sampled 0: the same with ``telemetry.allow_log_sample_rate: 0``

The decision log is on, written through setup_logging's handler to /dev/null (gathered
and written once per loop iteration, as in the server). Between real RPCs the same code
costs about three times as much (caches cold after grpc's own work): bench/run.py's
grpc scenarios measure that, against the do-nothing grpc.aio server.
Prints microseconds per check; writes JSON.
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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import minting

from authz.config import SnapshotHolder, load_config
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.logs import JsonHandler
from authz.telemetry.recorder import Telemetry
from testkit.world import NOW, build_world

# What Envoy 1.40 sent as gRPC metadata with each Check (a capture).
ENVOY_METADATA = (
    ("x-forwarded-for", "192.0.2.2"),
    ("x-envoy-internal", "true"),
    ("x-envoy-expected-rq-timeout-ms", "5000"),
)


class _Context:
    """The part of a grpc.aio servicer context the servicer uses; done callbacks are dropped."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ENVOY_METADATA

    def time_remaining(self) -> float:
        return 5.0

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        callback(self)  # at once: the in-flight count stays level


def _service(config_path: Path, message: bytes) -> Callable[[], Awaitable[bytes]]:
    config = load_config(config_path)
    service = AuthorizationService(SnapshotHolder(config), lambda: float(NOW), Telemetry())
    context: Any = _Context()

    def answer() -> Awaitable[bytes]:
        return service.answer(message, context)

    return answer


async def _parse_only(message: bytes) -> CheckRequest:
    return CheckRequest.FromString(message)


async def _time(fn: Callable[[], Awaitable[Any]], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await fn()
    return (time.perf_counter() - start) / count


async def _run(args: argparse.Namespace) -> dict[str, float]:
    world = build_world(Path(tempfile.mkdtemp(prefix="bench-grpc-")))
    base = world.config_path.read_text()
    message = minting.envoy_check_message(world.token(outer="RSA-OAEP-256", inner="RS256"))
    variants: dict[str, Callable[[], Awaitable[Any]]] = {"parse": lambda: _parse_only(message)}
    for name, extra in (
        ("decided", "server:\n  memo_size: 0\n"),
        ("memo", ""),
        ("memo_log_sampled_0", "telemetry:\n  allow_log_sample_rate: 0\n"),
    ):
        path = world.root / f"config-{name}.yaml"
        path.write_text(base + extra)
        variants[name] = _service(path, message)
    for name, fn in variants.items():  # warm up, and the token is allowed
        answer = await fn()
        if name != "parse" and CheckResponse.FromString(answer).status.code != 0:
            raise RuntimeError(f"{name}: the benchmark check was not allowed")
        await _time(fn, 500)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(await _time(fn, args.checks))
            await asyncio.sleep(0)  # the gathered log lines go out between variants
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20000, help="checks per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    devnull = Path("/dev/null").open("w")  # noqa: SIM115 - open for the whole run
    handler = JsonHandler()
    handler.setStream(devnull)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    medians = asyncio.run(_run(args))
    handler.flush()
    devnull.close()
    print(f"{'gRPC door variant':<22}{'us/check':>10}")
    for name, value in medians.items():
        print(f"{name:<22}{value:>10.1f}")
    result = {
        "benchmark": "grpc_door",
        "checks_per_round": args.checks,
        "rounds": args.rounds,
        "us_per_check": medians,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
