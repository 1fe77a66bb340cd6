"""What telemetry costs per check, measured in one run against a bare decision.

Three ways to answer the same allowed check, in-process (no network), each
timed over the same number of checks, interleaved in rounds so that machine
noise hits all three alike:

- bare:        the same steps as the handler (parse, read, decide, build the
               response) without any telemetry: the baseline
- tracing off: the real Check handler with metrics and the decision log, no tracer
- tracing on:  the same with an SDK tracer and a batch span processor whose
               exporter drops the spans (the cost of making spans, not of the network)

Prints microseconds per check and the ratios to the baseline; writes JSON.
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

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.config import SnapshotHolder
from authz.core.decision import decide
from authz.grpc.messages import parse, read, to_check_response
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.recorder import Telemetry
from testkit.fakes import ServicerContext
from testkit.world import NOW, build_world, check_request


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


async def _time(fn: Callable[[], Awaitable[object]], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await fn()
    return (time.perf_counter() - start) / count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000, help="checks per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the decision log's formatting is measured; its I/O is not

    world = build_world(Path(tempfile.mkdtemp(prefix="bench-")))
    config = world.config()
    holder = SnapshotHolder(config)
    token = world.token(outer="dir", inner="ES256")  # the cheapest crypto: telemetry is most visible
    message = check_request(token=token)
    data = message.SerializeToString()
    context = ServicerContext((("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),))
    clock = lambda: float(NOW)  # noqa: E731

    off = AuthorizationService(holder, clock, Telemetry(None))
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=100_000))
    on = AuthorizationService(holder, clock, Telemetry(provider))

    async def bare() -> object:
        request, early, request_id = read(parse(data))  # type: ignore[arg-type]
        return to_check_response(decide(config.snapshot, request, NOW) if request else early, request_id)  # type: ignore[arg-type]

    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "bare": bare,
        "tracing_off": lambda: off.check(data, context),  # type: ignore[arg-type]
        "tracing_on": lambda: on.check(data, context),  # type: ignore[arg-type]
    }

    async def run() -> dict[str, list[float]]:
        for fn in variants.values():  # warm up
            await _time(fn, 200)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                samples[name].append(await _time(fn, args.checks))
        return samples

    samples = asyncio.run(run())
    provider.shutdown()

    medians = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
    base = medians["bare"]
    print(f"{'variant':<14}{'us/check':>10}{'x bare':>9}{'+us':>8}")
    for name, value in medians.items():
        print(f"{name:<14}{value:>10.1f}{value / base:>9.3f}{value - base:>8.1f}")
    result = {
        "benchmark": "tracing",
        "checks_per_round": args.checks,
        "rounds": args.rounds,
        "us_per_check": medians,
        "ratio_to_bare": {name: value / base for name, value in medians.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
