"""The subscription lookup's cost per check and the mirror's memory per subscription (issue 18).

    python bench/bench_subscriptions.py [--subscriptions 100000] [--checks 20000] [--rounds 5] [--json FILE]

- decision: a whole warm decision (verified-token cache hit) of ``GET /orders`` on a rule whose
  API requires a subscription, the client's approved one among ``--subscriptions`` loaded,
  against the same decision on the same rule in a configuration without ``api`` (no lookup),
  measured interleaved in the same run. The difference is the added cost per check. Target:
  <= 2 us.
- lookup: the mirror's ``check`` alone, with ``--subscriptions`` loaded and on an empty mirror.
- memory per subscription of the mirror (tracemalloc): everything the mirror keeps once the
  records it was loaded from are gone (the index, its keys, the client ids).

Medians of interleaved rounds, in microseconds (the added cost: the median of the rounds'
differences).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.app.subscriptions import attach
from authz.config import load_config
from authz.core.decision import decide
from authz.core.subscription import Status, Subscription, SubscriptionSet
from authz.grpc.messages import from_check_request
from testkit.world import NOW, build_world, check_request, subscriptions_config

TARGET_US = 2.0
STATUSES = (Status.APPROVED, Status.APPROVED, Status.PENDING, Status.REVOKED)  # a plausible mix


def _records(count: int) -> list[Subscription]:
    """``count`` subscriptions over a few tenants and APIs (client ids as issuers make them);
    the benchmark's client, acme's approved ``app-7`` of ``orders``, among them."""
    records = []
    for i in range(count):
        tenant, api = ("acme", "orders") if i % 4 == 0 else (f"tenant-{i % 50}", f"api-{i % 7}")
        records.append(
            Subscription(
                tenant, f"app-{i}", api, STATUSES[i % len(STATUSES)], expires_at=NOW + 86400 * (1 + i % 30)
            )
        )
    return records


def _per_call(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def decision(count: int, checks: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        world = build_world(Path(folder))
        plain = world.config()  # read-orders without api: no lookup
        loaded = attach(load_config(subscriptions_config(world)), SubscriptionSet(_records(count)))
        token = world.token(world.claims(azp="app-8"))  # i = 8: acme orders, approved
        request = from_check_request(check_request(token=token))
        for snapshot in (plain.snapshot, loaded.snapshot):
            if decide(snapshot, request, NOW).reason != "ok":  # warm: the token is cached
                raise RuntimeError("the benchmark's token is refused")
        if decide(loaded.snapshot, request, NOW).subscription is None:
            raise RuntimeError("the benchmark's check made no lookup")
        for snapshot in (plain.snapshot, loaded.snapshot):  # warm-up, outside the rounds
            _per_call(lambda snapshot=snapshot: decide(snapshot, request, NOW), checks // 4)
        series: dict[str, list[float]] = {"without": [], "with": [], "added": []}
        calls = max(1, checks // rounds)
        for index in range(rounds):
            # Alternate which goes first; the added cost is the median of each round's difference
            # (paired: noise from the rest of a shared machine hits both halves of a round alike).
            pair = [(plain.snapshot, "without"), (loaded.snapshot, "with")]
            for snapshot, name in pair if index % 2 == 0 else reversed(pair):
                series[name].append(
                    _per_call(lambda snapshot=snapshot: decide(snapshot, request, NOW), calls)
                )
            series["added"].append(series["with"][-1] - series["without"][-1])
    return {name: statistics.median(values) for name, values in series.items()}


def lookup(count: int, checks: int, rounds: int) -> dict[str, float]:
    empty, loaded = SubscriptionSet(), SubscriptionSet(_records(count))
    if loaded.check("acme", "orders", "app-8", NOW)[0] != "ok":
        raise RuntimeError("the benchmark's subscription is not approved")
    series: dict[str, list[float]] = {"empty": [], "loaded": []}
    calls = max(1, checks // rounds)
    for _ in range(rounds):
        series["empty"].append(_per_call(lambda: empty.check("acme", "orders", "app-8", NOW), calls))
        series["loaded"].append(_per_call(lambda: loaded.check("acme", "orders", "app-8", NOW), calls))
    return {name: statistics.median(values) for name, values in series.items()}


def memory(count: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    records = _records(count)  # as a load parses them
    mirror = SubscriptionSet(records)
    del records
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    if len(mirror) != count:
        raise RuntimeError("subscriptions lost")
    return {"bytes_per_subscription": (after - before) / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=200_000, help="decisions of each kind, in all rounds")
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "subscriptions": args.subscriptions,
        "decision_us": decision(args.subscriptions, args.checks, args.rounds),
        "lookup_us": lookup(args.subscriptions, args.checks, args.rounds),
        "memory": memory(args.subscriptions),
    }
    dec, look, mem = results["decision_us"], results["lookup_us"], results["memory"]
    print(
        f"subscriptions, {args.subscriptions} loaded: "
        f"warm decision {dec['without']:.2f} -> {dec['with']:.2f} us "
        f"(added {dec['added']:.2f} us per check, target <= {TARGET_US}); "
        f"lookup {look['loaded']:.2f} us (empty mirror {look['empty']:.2f} us); "
        f"{mem['bytes_per_subscription']:.0f} bytes per subscription"
    )
    results["targets_met"] = dec["added"] <= TARGET_US
    print(f"target (<= {TARGET_US} us added per check): {'met' if results['targets_met'] else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
