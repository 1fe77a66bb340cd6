"""The shared store's costs: revocation lookups in-process, and store round trips per DPoP claim.

    python bench/bench_store.py [--entries 100000] [--checks 20000] [--rounds 5] [--json FILE]

- revocation: the added cost per check of the revocation lookup with ``--entries`` entries
  loaded (a third each jti, subject and client entries), against the same check on an empty
  mirror, for a token that no entry matches (every lookup is made: the worst case) and for
  one a subject entry revokes. Also a whole warm decision (verified-token cache hit) with and
  without the entries. Medians of interleaved rounds, in microseconds. Target (issue 15): <= 2 us.
- memory per entry of the mirror (tracemalloc), at ``--entries``.
- round trips per DPoP claim: a real redis-server (when one is installed) and the replay
  store (authz.app.store) under bursts of concurrent claims, counted by the process's own
  metrics (authz_store_round_trips_total / claims). Target: <= 1.
"""

from __future__ import annotations

import argparse
import asyncio
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

from authz.app.revocation import attach
from authz.core.claims import ClaimRules, validate_claims
from authz.core.decision import decide
from authz.core.revocation import Entry, EntryKind, RevocationSet, jti_hash
from authz.grpc.messages import from_check_request
from testkit.world import ACME_IDP, NOW, build_world, check_request

TARGET_US = 2.0


def _entries(count: int) -> list[Entry]:
    third = count // 3
    entries = [Entry(EntryKind.JTI, jti_hash(f"jti-{i}"), expires_at=NOW + 3600) for i in range(third)]
    entries += [Entry(EntryKind.SUBJECT, f"user-{i}", ACME_IDP, NOW - 100, NOW + 3600) for i in range(third)]
    entries += [
        Entry(EntryKind.CLIENT, f"app-{i}", ACME_IDP, NOW - 100, NOW + 3600) for i in range(count - 2 * third)
    ]
    return entries


def _per_call(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def revocation(entries: int, checks: int, rounds: int) -> dict[str, Any]:
    rules = ClaimRules(clock_skew=30, max_lifetime=3600, tenant_claim="tenant")
    claims = {
        "iss": ACME_IDP,
        "sub": "someone",
        "azp": "some-app",
        "jti": "not-revoked",
        "iat": NOW,
        "exp": NOW + 300,
    }
    fine = validate_claims(claims, rules, NOW)
    revoked = validate_claims({**claims, "sub": "user-7", "iat": NOW - 200}, rules, NOW)
    empty, loaded = RevocationSet(), RevocationSet(_entries(entries))
    if loaded.check(fine) is not None or loaded.check(revoked) is None:
        raise RuntimeError("the benchmark's tokens are not what they should be")
    series: dict[str, list[float]] = {"empty": [], "loaded": [], "loaded-revoked": []}
    for _ in range(rounds):
        series["empty"].append(_per_call(lambda: empty.check(fine), checks))
        series["loaded"].append(_per_call(lambda: loaded.check(fine), checks))
        series["loaded-revoked"].append(_per_call(lambda: loaded.check(revoked), checks))
    medians = {name: statistics.median(values) for name, values in series.items()}
    medians["added"] = medians["loaded"] - medians["empty"]
    return medians


def decision(entries: int, checks: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        world = build_world(Path(folder))
        config = world.config()
        token = world.token(world.claims(jti="not-revoked", azp="some-app"))
        request = from_check_request(check_request(token=token))
        plain, loaded = attach(config, RevocationSet()), attach(config, RevocationSet(_entries(entries)))
        for snapshot in (plain.snapshot, loaded.snapshot):
            if decide(snapshot, request, NOW).reason != "ok":  # warm: the token is cached
                raise RuntimeError("the benchmark's token is refused")
        series: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(rounds):
            series["without"].append(_per_call(lambda: decide(plain.snapshot, request, NOW), checks // 4))
            series["with"].append(_per_call(lambda: decide(loaded.snapshot, request, NOW), checks // 4))
    medians = {name: statistics.median(values) for name, values in series.items()}
    medians["added"] = medians["with"] - medians["without"]
    return medians


def memory(entries: int) -> dict[str, float]:
    made = _entries(entries)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mirror = RevocationSet(made)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    if len(mirror) != entries:
        raise RuntimeError("entries lost")
    # The Entry objects (made before, as a load parses them) are held by the mirror too.
    entry_bytes = (
        sum(sys.getsizeof(e) + sys.getsizeof(e.value) + sys.getsizeof(e.issuer) for e in made[:1000]) / 1000
    )
    return {"index_bytes_per_entry": (after - before) / entries, "entry_bytes": entry_bytes,
            "bytes_per_entry": (after - before) / entries + entry_bytes}  # fmt: skip


def round_trips(claims: int, burst: int) -> dict[str, Any] | None:
    from testkit.redis import RedisServer, redis_binary

    if redis_binary() is None:
        return None
    from authz.app.store import SharedReplayStore, StoreHolder, StoreMetrics
    from authz.config.settings import StoreSettings
    from authz.core.replay import MemoryReplayStore, replay_key
    from authz.telemetry.metrics import Registry

    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder)).start()
        try:
            settings = StoreSettings(
                url=server.url, hosts=(("127.0.0.1", server.port),), sentinel_service=None, db=0,
                username=None, tls=False, password=None, ca_file=None, key_prefix="bench:", timeout=0.5,
                local_fallback=False, max_connections=8,
            )  # fmt: skip

            async def run() -> dict[str, Any]:
                holder, metrics = StoreHolder(), StoreMetrics(Registry())
                store = SharedReplayStore(holder, metrics, local=MemoryReplayStore(10))
                await holder.apply(settings)
                started = time.perf_counter()
                sent = 0
                while sent < claims:
                    now = time.time()
                    batch = [
                        store.claim(replay_key("A" * 43, f"j-{sent + i}"), now + 60, now)
                        for i in range(burst)
                    ]
                    await asyncio.gather(*batch)
                    sent += burst
                seconds = time.perf_counter() - started
                await holder.close()
                trips = metrics.round_trips.values.get(("claim",), 0.0)
                done = sum(v for (op, _), v in metrics.operations.values.items() if op == "claim")
                return {"claims": done, "round_trips": trips, "round_trips_per_claim": trips / done,
                        "claims_per_second": done / seconds, "burst": burst}  # fmt: skip

            return asyncio.run(run())
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "entries": args.entries,
        "revocation_check_us": revocation(args.entries, args.checks, args.rounds),
        "decision_us": decision(args.entries, args.checks, args.rounds),
        "memory": memory(args.entries),
        "replay_round_trips": {f"burst {b}": round_trips(args.claims, b) for b in (1, 64)},
    }
    check, dec, mem = results["revocation_check_us"], results["decision_us"], results["memory"]
    print(
        f"revocation lookup, {args.entries} entries: {check['loaded']:.2f} us "
        f"(empty mirror {check['empty']:.2f} us, "
        f"added {check['added']:.2f} us; a revoked token {check['loaded-revoked']:.2f} us); "
        f"warm decision {dec['without']:.1f} -> {dec['with']:.1f} us; "
        f"{mem['bytes_per_entry']:.0f} bytes per entry"
    )
    for name, trips in results["replay_round_trips"].items():
        if trips is None:
            print(f"replay store ({name}): no redis-server installed, skipped")
        else:
            print(f"replay store ({name}): {trips['round_trips_per_claim']:.3f} round trips per claim, "
                  f"{trips['claims_per_second']:.0f} claims/s")  # fmt: skip
    results["targets_met"] = check["added"] <= TARGET_US and all(
        t is None or t["round_trips_per_claim"] <= 1 for t in results["replay_round_trips"].values()
    )
    print(f"targets (<= {TARGET_US} us added per check, <= 1 round trip per claim): "
          f"{'met' if results['targets_met'] else 'MISSED'}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
