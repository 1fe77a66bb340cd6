"""The benchmark suite: every number and ratio of the issue, measured in one run with one set of settings.

Scenarios (everything on 127.0.0.1; Envoy ``--concurrency 1``; HTTP load with
``wrk -t1 -c32 -d<N>s``; gRPC load with ``h2load -t1 -c8 -m4``; every load bounded
in time and in count; medians of ``--runs`` runs, the scenarios interleaved
run by run so that machine noise hits them alike):

1. in-process: bench/bench_token.py (cold token path against the raw
   primitives), bench/bench_tracing.py, bench/bench_http_door.py and
   bench/bench_dpop.py (a DPoP proof's check against the raw signature
   verification; the replay cache's memory per entry) and bench/bench_grpc_door.py
   (the gRPC handler alone), called as they are;
2. gRPC servers alone, driven by h2load with one serialized CheckRequest (the one
   deploy/envoy's gRPC filter sends, bench/minting.py) in gRPC frames: the
   do-nothing grpc.aio server (the floor, bench/noop_authz.py), ours with 1 and
   2 workers, cold (``cache_size: 0``) and warm (cache on); each with the
   server's CPU time per check (``/proc/PID/stat`` over the run / answered
   checks), steadier than req/s on a shared machine;
3. Envoy, a ``direct_response`` route after: no filter; the native
   ``jwt_authn`` (RS256); ext_authz to a do-nothing grpc.aio server (the
   framework floor, bench/noop_authz.py); ext_authz to ours, cold and warm; ours
   with 2 workers behind one HTTP/2 connection and behind several
   (``max_concurrent_streams``); the HTTP door warm with a DPoP-bound token and a
   fresh ES256 proof on every request (proofs minted before each run);
4. latency at a fixed rate (half the warm maximum through Envoy): Envoy + ours
   warm against Envoy alone, p50/p99;
5. memory: one worker's RSS after a stream of distinct valid tokens, with the
   cache at its default bound; cache entries and hit rate from /metrics;
6. abuse: distinct garbage and wrong-key tokens, rejections per second.

Each run is verified: Envoy's 2xx/4xx/5xx and filter counters, the server's
decision and cache counters, wrk's and h2load's error counts; a run with any
unexpected answer fails the benchmark. Prints one table, writes JSON
(bench/results/results.json) and a chart (docs/bench.png).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import envoy_bootstrap as eb  # noqa: E402
import loadgen  # noqa: E402
import minting  # noqa: E402
import servers  # noqa: E402

from testkit.envoy import EnvoyProcess, find_envoy, http_request, run_envoy  # noqa: E402
from testkit.redis import redis_binary, running_redis  # noqa: E402
from testkit.world import INNER_ALGS, World  # noqa: E402

PATH = "/orders"
TARGETS = {  # ratio name -> (target, "min" or "max")
    "grpc_warm_cpu_vs_noop": (1.3, "max"),  # issue 16: server CPU per check, warm, standalone
    "grpc_warm_vs_noop": (0.8, "min"),  # issue 16: req/s, warm, standalone
    "warm_envoy_vs_noop_ext_authz": (0.8, "min"),  # issue 16 (issue 6 had asked 0.9)
    "warm_envoy_vs_jwt_authn": (0.35, "min"),
    "grpc_2w_vs_1w_warm": (1.6, "min"),
    "grpc_2w_vs_1w_cold": (1.6, "min"),
    "p99_added_ms": (2.0, "max"),
    "http_warm_envoy_vs_jwt_authn": (0.7, "min"),
    "http_dpop_store_vs_local": (0.8, "min"),  # issue 15: the shared replay store
}
SHARED_DPOP = "envoy_ours_http_dpop_store_warm"
UNAUTHENTICATED = 16  # google.rpc.Code, the CheckResponse status of a 401 deny


@dataclass
class Settings:
    seconds: int
    runs: int
    warmup: int
    h2load_clients: int
    h2load_streams: int
    connections: int
    memory_tokens: int
    abuse_tokens: int
    pair: tuple[str, str]
    quick: bool
    mode: str  # "quick", "full" (the defaults) or "custom"
    token_bench_args: list[str]
    tracing_bench_args: list[str]
    http_door_bench_args: list[str]
    dpop_bench_args: list[str]
    grpc_door_bench_args: list[str]
    store_bench_args: list[str] = field(default_factory=list)
    subscriptions_bench_args: list[str] = field(default_factory=list)
    in_process_folder: Path | None = None  # where bench_token.py and bench_tracing.py write their JSON
    rate_tolerance: float = 0.1  # a paced run must reach the rate within this fraction


@dataclass
class Scenario:
    name: str
    group: str  # "grpc" or "envoy"
    description: str
    measure: Callable[[int], dict[str, Any]]  # one verified run of N seconds -> a sample with "rps"
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rates = [s["rps"] for s in self.samples]
        summary = {
            "group": self.group,
            "description": self.description,
            "rps": statistics.median(rates),
            "rps_min": min(rates),
            "rps_max": max(rates),
        }
        cpu = [s["server_cpu_us_per_request"] for s in self.samples if "server_cpu_us_per_request" in s]
        if cpu:
            summary["server_cpu_us_per_request"] = statistics.median(cpu)
        return summary | {"runs": self.samples}


_T0 = time.monotonic()


def phase(message: str) -> None:
    print(f"== [{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


class VerificationError(RuntimeError):
    """A run answered something else than expected: its numbers would be worthless."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise VerificationError(message)


# counters ----------------------------------------------------------------------------------


def metric_sum(values: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def delta(before: Mapping[str, float], after: Mapping[str, float], name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def envoy_counters(envoy: EnvoyProcess, prefix: str) -> dict[str, int]:
    return envoy.stats(f"^(http\\.{prefix}\\.|cluster\\.)")


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def worker_cpu(server: servers.AuthzServer) -> dict[int, float]:
    """CPU seconds of each serving process (the workers of a supervisor, or the server itself)."""
    pids = _children(server.pid) if server.workers > 1 else [server.pid]
    result = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            result[pid] = servers.cpu_seconds(pid)
    return result


def _cpu_shares(before: Mapping[int, float], after: Mapping[int, float]) -> list[float]:
    used = [after[p] - before.get(p, 0.0) for p in after]
    total = sum(used) or 1.0
    return sorted((round(u / total, 3) for u in used), reverse=True)


def _verify_decisions(
    server: servers.AuthzServer,
    before: Mapping[str, float],
    after: Mapping[str, float],
    answered: int,
    *,
    warm: bool,
) -> dict[str, Any]:
    allowed = delta(before, after, "authz_checks_total", decision="allow")
    denied = delta(before, after, "authz_checks_total") - allowed
    hits = delta(before, after, "authz_token_cache_lookups_total", result="hit")
    misses = delta(before, after, "authz_token_cache_lookups_total", result="miss")
    _check(denied == 0, f"{server.name}: {denied:.0f} checks were not allowed")
    _check(allowed >= answered, f"{server.name}: {allowed:.0f} allowed checks for {answered} answers")
    if warm:
        _check(misses == 0, f"{server.name}: the warm cache missed {misses:.0f} times")
    else:
        _check(hits == 0, f"{server.name}: the cold server hit its cache {hits:.0f} times")
    return {"checks_allowed": int(allowed), "cache_hits": int(hits), "cache_misses": int(misses)}


def warm_every_worker(server: servers.AuthzServer, message: bytes) -> None:
    """Send the token on fresh connections until every worker has it cached (one miss per worker)."""
    for _ in range(200):
        if metric_sum(server.metrics(), "authz_token_cache_lookups_total", result="miss") >= server.workers:
            return
        answer = loadgen.run_grpc(server.port, [message], concurrency=1, deadline_s=10.0)
        _check(answer.codes == {0: 1}, f"{server.name}: the benchmark token answered {answer.codes}")
    raise VerificationError(f"{server.name}: could not reach all {server.workers} workers")


# scenarios ---------------------------------------------------------------------------------


def grpc_scenario(
    name: str, server: servers.AuthzServer | servers.NoopServer, body: Path, settings: Settings, *, warm: bool
) -> Scenario:
    """h2load against ``server`` alone; ours verified by its counters, the do-nothing one by h2load's."""
    ours = isinstance(server, servers.AuthzServer)

    def serving_cpu() -> dict[int, float]:
        return (
            worker_cpu(server)
            if isinstance(server, servers.AuthzServer)
            else {server.pid: servers.cpu_seconds(server.pid)}
        )

    def measure(seconds: int) -> dict[str, Any]:
        before = server.metrics() if isinstance(server, servers.AuthzServer) else {}
        cpu = serving_cpu()  # read right around the load: the admin scrape is not counted
        result = loadgen.run_h2load(
            server.port,
            body,
            seconds=seconds,
            clients=settings.h2load_clients,
            streams=settings.h2load_streams,
        )
        cpu_after = serving_cpu()
        sample = {"rps": result["rps"], "requests": result["requests"], "seconds": result["seconds"]}
        if isinstance(server, servers.AuthzServer):
            sample |= _verify_decisions(server, before, server.metrics(), result["succeeded"], warm=warm)
        used = sum(cpu_after[p] - cpu.get(p, 0.0) for p in cpu_after)
        sample["server_cpu_us_per_request"] = round(used / max(1, result["requests"]) * 1e6, 1)
        sample["worker_cpu_shares"] = _cpu_shares(cpu, cpu_after)
        return sample

    if not ours:
        return Scenario(name, "grpc", "do-nothing grpc.aio server alone (the floor), h2load", measure)
    workers = f"{server.workers} worker{'s' if server.workers > 1 else ''}"
    cache = "warm (cache on)" if warm else "cold (cache_size 0)"
    return Scenario(name, "grpc", f"our gRPC server alone, {workers}, {cache}, h2load", measure)


@dataclass
class EnvoyTarget:
    envoy: EnvoyProcess
    listener: str
    port: int
    headers: dict[str, str]
    filter_stat: str | None = None  # "ext_authz" or "jwt_authn"
    server: servers.AuthzServer | None = None
    warm: bool = True
    cluster: str | None = None
    # A header with a new value for every request (fresh DPoP proofs): seconds -> (name, file, count).
    varying: Callable[[int], tuple[str, Path, int]] | None = None


def _envoy_run(
    target: EnvoyTarget, settings: Settings, seconds: int, rate: float | None = None
) -> dict[str, Any]:
    stats_before = envoy_counters(target.envoy, target.listener)
    metrics_before = target.server.metrics() if target.server else {}
    cpu_before = worker_cpu(target.server) if target.server else {}
    varying = target.varying(seconds) if target.varying is not None else None
    result = loadgen.run_wrk(
        target.port,
        path=PATH,
        headers=target.headers,
        seconds=seconds,
        connections=settings.connections,
        rate=rate,
        varying=varying,
    )
    stats_after = envoy_counters(target.envoy, target.listener)

    def stat(name: str) -> int:
        key = f"http.{target.listener}.{name}"
        return stats_after.get(key, 0) - stats_before.get(key, 0)

    answered = result["requests"]
    _check(
        stat("downstream_rq_2xx") >= answered,
        f"{target.listener}: Envoy counted fewer 2xx than wrk's answers",
    )
    bad = {
        code: stat(f"downstream_rq_{code}")
        for code in ("1xx", "3xx", "4xx", "5xx")
        if stat(f"downstream_rq_{code}")
    }
    _check(not bad, f"{target.listener}: Envoy answered {bad}")
    sample: dict[str, Any] = {
        k: result[k] for k in ("rps", "requests", "p50_us", "p90_us", "p99_us", "max_us")
    }
    if target.filter_stat == "ext_authz":
        _check(stat("ext_authz.ok") >= answered, f"{target.listener}: ext_authz.ok below the answers")
        _check(
            stat("ext_authz.denied") == 0 and stat("ext_authz.error") == 0,
            f"{target.listener}: ext_authz denied/error",
        )
    elif target.filter_stat == "jwt_authn":
        _check(
            stat("jwt_authn.allowed") >= answered, f"{target.listener}: jwt_authn.allowed below the answers"
        )
        _check(stat("jwt_authn.denied") == 0, f"{target.listener}: jwt_authn denied")
    if target.server is not None:
        sample |= _verify_decisions(
            target.server, metrics_before, target.server.metrics(), answered, warm=target.warm
        )
        cpu_after = worker_cpu(target.server)
        sample["worker_cpu_shares"] = _cpu_shares(cpu_before, cpu_after)
        used = sum(cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after)
        sample["server_cpu_us_per_request"] = round(used / max(1, answered) * 1e6, 1)
    if target.cluster:
        sample["upstream_connections"] = stats_after.get(f"cluster.{target.cluster}.upstream_cx_active", 0)
    return sample


def envoy_scenario(name: str, description: str, target: EnvoyTarget, settings: Settings) -> Scenario:
    return Scenario(name, "envoy", description, lambda seconds: _envoy_run(target, settings, seconds))


def preflight(target: EnvoyTarget, *, must_deny_without_token: bool) -> None:
    """One request by hand: the token is allowed (200 "ok"); without it, the filter denies."""
    response = http_request(
        target.port, "GET", PATH, host=eb.HOST, headers={"authorization": target.headers["Authorization"]}
    )
    _check(
        response.status == 200 and response.body == eb.BODY.encode(),
        f"{target.listener}: allowed request answered {response.status} {response.body[:200]!r}",
    )
    if must_deny_without_token:
        response = http_request(target.port, "GET", PATH, host=eb.HOST)
        _check(
            response.status in (401, 403),
            f"{target.listener}: no token answered {response.status}, not a deny",
        )


# memory and abuse ----------------------------------------------------------------------------


def memory_scenario(server: servers.AuthzServer, world: World, settings: Settings) -> dict[str, Any]:
    """RSS after ``memory_tokens`` distinct valid tokens, then a replay of the most recent ones."""
    count = settings.memory_tokens
    started = time.perf_counter()
    tokens = minting.distinct_tokens(world, count)
    minted_s = time.perf_counter() - started
    messages = minting.check_messages(tokens)
    before = server.metrics()
    rss_start = servers.rss_kib(server.pid)
    already = int(metric_sum(before, "authz_token_cache_entries"))
    stream = loadgen.run_grpc(server.port, messages, concurrency=16, deadline_s=max(60.0, count / 100))
    _check(
        stream.rpc_errors == 0 and stream.codes == {0: count},
        f"memory: stream answered {stream.codes}, {stream.rpc_errors} RPC errors, for {count} valid tokens",
    )
    mid = server.metrics()
    entries = int(metric_sum(mid, "authz_token_cache_entries"))
    replay = messages[-max(1, min(count, 10_000) // 2) :]
    again = loadgen.run_grpc(server.port, replay, concurrency=16, deadline_s=max(60.0, count / 100))
    _check(again.codes == {0: len(replay)}, f"memory: replay answered {again.codes}")
    after = server.metrics()
    hits = metric_sum(after, "authz_token_cache_lookups_total", result="hit")
    lookups = metric_sum(after, "authz_token_cache_lookups_total")
    rss_end = servers.rss_kib(server.pid)
    _check(entries == min(count + already, 10_000), f"memory: {entries} cache entries after {count} tokens")
    replay_hits = delta(mid, after, "authz_token_cache_lookups_total", result="hit")
    _check(replay_hits == len(replay), f"memory: replay of cached tokens hit {replay_hits:.0f}/{len(replay)}")
    return {
        "tokens": count,
        "token_pair": "dir/ES256",
        "mint_seconds": round(minted_s, 2),
        "stream_rps": round(stream.rps, 1),
        "replayed": len(replay),
        "rss_start_kib": rss_start,
        "rss_kib": rss_end,
        "rss_mib": round(rss_end / 1024, 1),
        "rss_growth_kib": rss_end - rss_start,
        "cache_entries": int(metric_sum(after, "authz_token_cache_entries")),
        "cache_max_entries": 10_000,
        "cache_lookups": int(lookups),
        "cache_hits": int(hits),
        "hit_rate": hits / lookups if lookups else 0.0,
    }


ABUSE_REASONS = {
    "garbage": {"token_malformed", "header_malformed", "token_not_jwe"},
    "unknown_kid": {"decryption_key_unknown"},
    "alg_not_allowed": {"alg_not_allowed"},
    "oversize": {"token_too_large"},
    "wrong_signer": {"signature_invalid"},
}


def abuse_scenario(server: servers.AuthzServer, world: World, settings: Settings) -> dict[str, Any]:
    """Distinct tokens that must all be rejected (401), per kind: rejections/s, server CPU per rejection."""
    results: dict[str, Any] = {}
    for kind in minting.ABUSE_KINDS:
        messages = minting.check_messages(minting.abuse_tokens(world, kind, settings.abuse_tokens))
        before, cpu = server.metrics(), servers.cpu_seconds(server.pid)
        outcome = loadgen.run_grpc(server.port, messages, concurrency=32, deadline_s=settings.seconds)
        cpu_used = servers.cpu_seconds(server.pid) - cpu
        after = server.metrics()
        _check(
            outcome.rpc_errors == 0 and set(outcome.codes) == {UNAUTHENTICATED},
            f"abuse {kind}: answers {outcome.codes}, {outcome.rpc_errors} RPC errors",
        )
        reasons = {}
        for key, value in after.items():
            match = re.match(r'authz_checks_total\{.*reason="([^"]+)"', key)
            if match:
                reasons[match.group(1)] = reasons.get(match.group(1), 0) + int(value - before.get(key, 0.0))
        reasons = {k: v for k, v in reasons.items() if v}
        _check(
            set(reasons) <= ABUSE_REASONS[kind] and sum(reasons.values()) == outcome.sent,
            f"abuse {kind}: reasons {reasons} for {outcome.sent} tokens",
        )
        results[kind] = {
            "rejections_per_s": outcome.rps,
            "rejected": outcome.sent,
            "server_cpu_us_per_rejection": cpu_used / outcome.sent * 1e6,
            "server_rejections_per_cpu_s": outcome.sent / cpu_used if cpu_used else None,
            # below 1: the Python gRPC client, not the server, set the pace
            "server_cpu_utilization": cpu_used / outcome.seconds,
            "reasons": reasons,
        }
    return results


# in-process benchmarks ---------------------------------------------------------------------


def in_process(folder: Path, settings: Settings) -> dict[str, Any]:
    results = {}
    for name, script, extra in (
        ("token", "bench_token.py", settings.token_bench_args),
        ("tracing", "bench_tracing.py", settings.tracing_bench_args),
        ("http_door", "bench_http_door.py", settings.http_door_bench_args),
        ("dpop", "bench_dpop.py", settings.dpop_bench_args),
        # Revocation lookups with 100,000 entries, memory per entry, store round trips per claim.
        ("store", "bench_store.py", settings.store_bench_args),
        # Subscription lookups with 100,000 subscriptions, memory per subscription (issue 18).
        ("subscriptions", "bench_subscriptions.py", settings.subscriptions_bench_args),
        ("grpc_door", "bench_grpc_door.py", settings.grpc_door_bench_args),
    ):
        out = folder / f"{name}.json"
        done = subprocess.run(  # noqa: S603
            [sys.executable, str(ROOT / "bench" / script), "--json", str(out), *extra],
            capture_output=True,
            timeout=900,
            check=False,
            cwd=ROOT,
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{script} failed:\n{done.stdout.decode()}\n{done.stderr.decode()}")
        print(done.stdout.decode().rstrip(), flush=True)
        results[name] = json.loads(out.read_text())
    return results


# machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    command = [find_envoy(), "--version"]
    envoy = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    version = re.search(r"/(\d+\.\d+\.\d+)/", envoy.stdout)
    tools = {}
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        done = subprocess.run([tool, flag], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
        tools[tool] = (
            (done.stdout + done.stderr).splitlines()[0].strip() if (done.stdout + done.stderr) else "?"
        )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "envoy": version.group(1) if version else envoy.stdout.strip(),
        "kernel": platform.release(),
        "tools": tools,
        "loadavg_start": os.getloadavg(),
    }


# the run -----------------------------------------------------------------------------------


def _interleave(scenarios: list[Scenario], runs: int, seconds: int, warmup: int) -> None:
    if warmup:
        for scenario in scenarios:
            scenario.measure(warmup)
    for run in range(runs):
        for scenario in scenarios:
            sample = scenario.measure(seconds)
            scenario.samples.append(sample)
            print(f"  run {run + 1}/{runs} {scenario.name:<30}{sample['rps']:>10.0f} req/s", flush=True)


@contextlib.contextmanager
def _stack(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[list[Any]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(m) for m in managers]


def run(settings: Settings, folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    results["settings"] = {
        "mode": settings.mode,
        "envoy": "--concurrency 1",
        "wrk": f"wrk -t1 -c{settings.connections} -d{settings.seconds}s",
        "h2load": f"h2load -t1 -c{settings.h2load_clients} -m{settings.h2load_streams} -D{settings.seconds}",
        "runs": settings.runs,
        "statistic": "median",
        "token_pair": "/".join(settings.pair),
        "decision_log": "on (default: every decision, to a file)",
    }
    print(f"machine: {results['machine']}", flush=True)
    settings_folder = settings.in_process_folder or folder

    phase("in-process benchmarks")
    results["in_process"] = in_process(settings_folder, settings)

    phase("world, tokens, servers, Envoy")
    world, configs = minting.make_world(folder / "world")
    outer, inner = settings.pair
    token = world.token(minting.claims(world), outer=outer, inner=inner)
    body = folder / "check.bin"
    message = minting.envoy_check_message(token)  # the request deploy/envoy's gRPC filter sends
    body.write_bytes(loadgen.grpc_frame(message))
    jws_key = world.signing_keys[INNER_ALGS["RS256"]]
    jws = _jwt_authn_token(world, jws_key)

    logs = folder / "logs"
    logs.mkdir()
    # The shared store: a local redis-server, when one is installed (make bench installs it).
    store = contextlib.ExitStack()
    redis = store.enter_context(running_redis(folder / "redis")) if redis_binary() else None
    if redis is not None:
        configs["store"] = configs["warm"].with_name("config-store.yaml")  # beside the keys it names
        configs["store"].write_text(
            # timeout 0.5 s, not the 0.05 s default: on a 2-core machine that also runs the test
            # suite (the smoke run), a claim may wait longer than 50 ms for the event loop, and
            # the deny that is right then (dpop_replay_store_unavailable) is no throughput figure.
            configs["warm"].read_text()
            + f"store:\n  url: {redis.url}\n  timeout: 0.5\n  on_unavailable: deny\n"
        )
    s1s = servers.AuthzServer("ours_1w_store", configs["store"], 1, logs) if redis else None
    s1c = servers.AuthzServer("ours_1w_cold", configs["cold"], 1, logs)
    s1w = servers.AuthzServer("ours_1w_warm", configs["warm"], 1, logs)
    s2c = servers.AuthzServer("ours_2w_cold", configs["cold"], 2, logs)
    s2w = servers.AuthzServer("ours_2w_warm", configs["warm"], 2, logs)
    mem = servers.AuthzServer("ours_memory", configs["warm"], 1, logs)
    noop = servers.NoopServer(logs)
    noop_http = servers.NoopServer(logs, "noop_http.py")
    noop_uvloop = servers.NoopServer(logs, "noop_http.py", ("--loop", "uvloop"))
    shared = (s1s,) if s1s is not None else ()
    with store, servers.started(s1c, s1w, s2c, s2w, mem, noop, noop_http, noop_uvloop, *shared):
        listeners = [
            eb.listener("direct", []),
            eb.listener("jwt_authn", [eb.jwt_authn_filter(_ISSUER, "orders-api", _public_jwks(jws_key))]),
            eb.listener("noop", [eb.ext_authz_filter("authz_noop")]),
            eb.listener("ours_cold", [eb.ext_authz_filter("authz_1w_cold")]),
            eb.listener("ours_warm", [eb.ext_authz_filter("authz_1w_warm")]),
            eb.listener("ours_2w_one", [eb.ext_authz_filter("authz_2w_one")]),
            eb.listener("ours_2w_mcs", [eb.ext_authz_filter("authz_2w_mcs")]),
            eb.listener("noop_http", [eb.ext_authz_http_filter("http_noop", noop_http.port)]),
            eb.listener("noop_uvloop", [eb.ext_authz_http_filter("http_noop_uvloop", noop_uvloop.port)]),
            eb.listener("ours_http_cold", [eb.ext_authz_http_filter("http_1w_cold", s1c.http_port)]),
            eb.listener("ours_http_warm", [eb.ext_authz_http_filter("http_1w_warm", s1w.http_port)]),
            eb.listener("ours_http_dpop", [eb.ext_authz_http_filter("http_1w_warm", s1w.http_port)]),
        ]
        if s1s is not None:
            listeners.append(
                eb.listener(
                    "ours_http_dpop_store", [eb.ext_authz_http_filter("http_1w_store", s1s.http_port)]
                )
            )
        clusters = [
            eb.grpc_cluster("authz_noop", noop.port),
            eb.grpc_cluster("authz_1w_cold", s1c.port),
            eb.grpc_cluster("authz_1w_warm", s1w.port),
            eb.grpc_cluster("authz_2w_one", s2w.port),
            eb.grpc_cluster("authz_2w_mcs", s2w.port, max_concurrent_streams=MAX_CONCURRENT_STREAMS),
            eb.http_cluster("http_noop", noop_http.port),
            eb.http_cluster("http_noop_uvloop", noop_uvloop.port),
            eb.http_cluster("http_1w_cold", s1c.http_port),
            eb.http_cluster("http_1w_warm", s1w.http_port),
        ]
        if s1s is not None:
            clusters.append(eb.http_cluster("http_1w_store", s1s.http_port))
        with run_envoy(eb.bootstrap(listeners, clusters), tmp_path=folder / "envoy", validate=False) as envoy:
            phase("Envoy ready")
            ports = servers.envoy_listener_ports(envoy)
            ours = {"Host": eb.HOST, "Authorization": f"Bearer {token}"}

            def target(listener: str, **kw: Any) -> EnvoyTarget:
                headers = (
                    {"Host": eb.HOST, "Authorization": f"Bearer {jws}"} if listener == "jwt_authn" else ours
                )
                return EnvoyTarget(envoy, listener, ports[listener], headers, **kw)

            t_direct = target("direct")
            t_jwt = target("jwt_authn", filter_stat="jwt_authn")
            t_noop = target("noop", filter_stat="ext_authz")
            t_cold = target("ours_cold", filter_stat="ext_authz", server=s1c, warm=False)
            t_warm = target("ours_warm", filter_stat="ext_authz", server=s1w)
            t_2w_one = target("ours_2w_one", filter_stat="ext_authz", server=s2w, cluster="authz_2w_one")
            t_2w_mcs = target("ours_2w_mcs", filter_stat="ext_authz", server=s2w, cluster="authz_2w_mcs")
            t_noop_http = target("noop_http", filter_stat="ext_authz")
            t_noop_uvloop = target("noop_uvloop", filter_stat="ext_authz")
            t_http_cold = target("ours_http_cold", filter_stat="ext_authz", server=s1c, warm=False)
            t_http_warm = target("ours_http_warm", filter_stat="ext_authz", server=s1w)
            t_http_dpop = _dpop_target(
                envoy, ports["ours_http_dpop"], server=s1w, world=world, settings=settings, folder=folder
            )
            t_http_dpop_store = (
                _dpop_target(
                    envoy,
                    ports["ours_http_dpop_store"],
                    server=s1s,
                    world=world,
                    settings=settings,
                    folder=folder / "store-proofs",
                    listener="ours_http_dpop_store",
                )
                if s1s is not None
                else None
            )
            for server in (s1w, s2w):
                warm_every_worker(server, message)
            preflight(t_direct, must_deny_without_token=False)
            preflight(t_noop, must_deny_without_token=False)
            preflight(t_noop_http, must_deny_without_token=False)
            preflight(t_noop_uvloop, must_deny_without_token=False)
            for t in (t_jwt, t_cold, t_warm, t_2w_one, t_2w_mcs, t_http_cold, t_http_warm):
                preflight(t, must_deny_without_token=True)
            preflight_dpop(t_http_dpop)
            if t_http_dpop_store is not None:
                preflight_dpop(t_http_dpop_store)

            scenarios = [
                grpc_scenario("grpc_noop", noop, body, settings, warm=True),
                grpc_scenario("grpc_1w_cold", s1c, body, settings, warm=False),
                grpc_scenario("grpc_1w_warm", s1w, body, settings, warm=True),
                grpc_scenario("grpc_2w_cold", s2c, body, settings, warm=False),
                grpc_scenario("grpc_2w_warm", s2w, body, settings, warm=True),
                envoy_scenario("envoy_direct_response", "Envoy alone (direct_response)", t_direct, settings),
                envoy_scenario(
                    "envoy_jwt_authn", "Envoy native jwt_authn, RS256, inline JWKS", t_jwt, settings
                ),
                envoy_scenario(
                    "envoy_noop_ext_authz", "Envoy + do-nothing grpc.aio ext_authz", t_noop, settings
                ),
                envoy_scenario("envoy_ours_cold", "Envoy + ours, cold (cache_size 0)", t_cold, settings),
                envoy_scenario("envoy_ours_warm", "Envoy + ours, warm", t_warm, settings),
                envoy_scenario(
                    "envoy_ours_warm_2w_1conn",
                    "Envoy + ours warm, 2 workers, one HTTP/2 connection",
                    t_2w_one,
                    settings,
                ),
                envoy_scenario(
                    "envoy_ours_warm_2w_mcs",
                    f"Envoy + ours warm, 2 workers, max_concurrent_streams "
                    f"{MAX_CONCURRENT_STREAMS} (several connections)",
                    t_2w_mcs,
                    settings,
                ),
                envoy_scenario(
                    "envoy_noop_http_ext_authz",
                    "Envoy + do-nothing asyncio+httptools HTTP ext_authz",
                    t_noop_http,
                    settings,
                ),
                envoy_scenario(
                    "envoy_noop_http_uvloop_ext_authz",
                    "Envoy + do-nothing uvloop+httptools HTTP ext_authz",
                    t_noop_uvloop,
                    settings,
                ),
                envoy_scenario(
                    "envoy_ours_http_cold", "Envoy + ours, HTTP door, cold", t_http_cold, settings
                ),
                envoy_scenario(
                    "envoy_ours_http_warm", "Envoy + ours, HTTP door, warm", t_http_warm, settings
                ),
                envoy_scenario(
                    "envoy_ours_http_dpop_warm",
                    "Envoy + ours, HTTP door, warm, DPoP-bound token, a fresh ES256 proof per request",
                    t_http_dpop,
                    settings,
                ),
            ]
            if t_http_dpop_store is not None:
                scenarios.append(
                    envoy_scenario(
                        "envoy_ours_http_dpop_store_warm",
                        "Envoy + ours, HTTP door, warm, DPoP, replay store shared on a local redis-server",
                        t_http_dpop_store,
                        settings,
                    )
                )
            phase(f"throughput: {len(scenarios)} scenarios x {settings.runs} runs x {settings.seconds}s")
            _interleave(scenarios, settings.runs, settings.seconds, settings.warmup)
            results["scenarios"] = {s.name: s.summary() for s in scenarios}
            if s1s is not None:
                results["store_round_trips"] = store_round_trips(s1s)

            rate = max(1.0, round(results["scenarios"]["envoy_ours_warm"]["rps"] / 2))
            phase(f"latency at a fixed {rate:.0f} req/s (half the warm maximum through Envoy)")
            results["latency"] = latency(t_direct, t_warm, rate, settings)

            phase(f"memory: {settings.memory_tokens} distinct tokens through one worker")
            results["memory"] = memory_scenario(mem, world, settings)

            phase(f"abuse: {settings.abuse_tokens} distinct tokens per kind")
            results["abuse"] = abuse_scenario(s1w, world, settings)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["ratios"] = ratios(results, settings)
    return results


MAX_CONCURRENT_STREAMS = 4  # with wrk's 32 connections: up to 8 HTTP/2 connections to the workers
# Proofs minted for each DPoP run: this many per second of it, above any rate one process verifies
# (the run stops early, and says so in its count, should it ever use them all).
DPOP_PROOFS_PER_SECOND = 12_000
DPOP_URL = f"http://{eb.HOST}{PATH}"  # as the HTTP door sees it: x-forwarded-proto http, Host


def store_round_trips(server: servers.AuthzServer) -> dict[str, float]:
    """Round trips to the shared store per DPoP claim, from the server's own counters."""
    metrics = server.metrics()
    trips = sum(v for k, v in metrics.items() if k.startswith("authz_store_round_trips_total"))
    claims = sum(v for k, v in metrics.items() if k.startswith("authz_replay_claims_total"))
    return {"round_trips": trips, "claims": claims, "per_claim": trips / claims if claims else 0.0}


def _dpop_target(
    envoy: EnvoyProcess,
    port: int,
    *,
    server: servers.AuthzServer,
    world: World,
    settings: Settings,
    folder: Path,
    listener: str = "ours_http_dpop",
) -> EnvoyTarget:
    """The HTTP door, warm, with a DPoP-bound token: a new proof file before each run."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from testkit.sender import jkt

    key = ec.generate_private_key(ec.SECP256R1())
    outer, inner = settings.pair
    token = world.token(minting.claims(world, cnf={"jkt": jkt(key)}), outer=outer, inner=inner)

    def proofs(seconds: int) -> tuple[str, Path, int]:
        count = seconds * DPOP_PROOFS_PER_SECOND + settings.connections + 100
        return "DPoP", minting.dpop_proofs(key, token, DPOP_URL, count, folder / "proofs.txt"), count

    headers = {"Host": eb.HOST, "Authorization": f"DPoP {token}"}
    folder.mkdir(parents=True, exist_ok=True)
    return EnvoyTarget(envoy, listener, port, headers, filter_stat="ext_authz", server=server, varying=proofs)


def preflight_dpop(target: EnvoyTarget) -> None:
    """A fresh proof is allowed; the same proof again is denied (a replay); no proof is denied."""
    assert target.varying is not None  # noqa: S101 - a DPoP target
    _, path, _ = target.varying(0)
    proof = path.read_text().split("\n", 1)[0]
    headers = {"Authorization": target.headers["Authorization"], "DPoP": proof}
    for expected in (200, 401):
        response = http_request(target.port, "GET", PATH, host=eb.HOST, headers=headers)
        _check(
            response.status == expected,
            f"{target.listener}: a proof answered {response.status}, not {expected}",
        )
    response = http_request(
        target.port, "GET", PATH, host=eb.HOST, headers={"Authorization": headers["Authorization"]}
    )
    _check(response.status == 401, f"{target.listener}: no proof answered {response.status}, not 401")


_ISSUER = "https://idp.acme.test"


def _jwt_authn_token(world: World, key: Any) -> str:
    from jwcrypto.jws import JWS

    payload = json.dumps(minting.claims(world), separators=(",", ":")).encode()
    jws = JWS(payload)
    jws.add_signature(
        key, alg="RS256", protected=json.dumps({"alg": "RS256", "kid": key["kid"], "typ": "JWT"})
    )
    return str(jws.serialize(compact=True))


def _public_jwks(key: Any) -> dict[str, Any]:
    return {"keys": [json.loads(key.export_public())]}


def latency(direct: EnvoyTarget, warm: EnvoyTarget, rate: float, settings: Settings) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"envoy_direct_response": [], "envoy_ours_warm": []}
    for _ in range(settings.runs):
        for name, t in (("envoy_direct_response", direct), ("envoy_ours_warm", warm)):
            sample = _envoy_run(t, settings, settings.seconds, rate=rate)
            _check(
                abs(sample["rps"] - rate) <= settings.rate_tolerance * rate,
                f"latency {name}: {sample['rps']:.0f} req/s, not {rate:.0f}: the system was saturated",
            )
            samples[name].append(sample)
            print(
                f"  {name:<30} p50 {sample['p50_us'] / 1000:.2f} ms  p99 {sample['p99_us'] / 1000:.2f} ms",
                flush=True,
            )
    result: dict[str, Any] = {"rate": rate}
    for name, runs in samples.items():
        result[name] = {
            "p50_ms": statistics.median(s["p50_us"] for s in runs) / 1000,
            "p99_ms": statistics.median(s["p99_us"] for s in runs) / 1000,
            "rps": statistics.median(s["rps"] for s in runs),
            "runs": runs,
        }
    result["p99_added_ms"] = result["envoy_ours_warm"]["p99_ms"] - result["envoy_direct_response"]["p99_ms"]
    result["p50_added_ms"] = result["envoy_ours_warm"]["p50_ms"] - result["envoy_direct_response"]["p50_ms"]
    return result


def paired(results: Mapping[str, Any], name: str, floor: str, key: str) -> float:
    """The median of ``name``'s runs each divided by ``floor``'s run of the same round (interleaved:
    the two ran seconds apart), steadier than a ratio of medians while the machine's load drifts."""
    ours, base = results["scenarios"][name]["runs"], results["scenarios"][floor]["runs"]
    return statistics.median(a[key] / b[key] for a, b in zip(ours, base, strict=True))


def ratios(results: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    rps = {name: s["rps"] for name, s in results["scenarios"].items()}
    pair = "/".join(settings.pair)
    token_pairs = results["in_process"]["token"].get("pairs", {})
    cpu = "server_cpu_us_per_request"
    values = {
        "grpc_warm_cpu_vs_noop": paired(results, "grpc_1w_warm", "grpc_noop", cpu),
        "grpc_warm_vs_noop": paired(results, "grpc_1w_warm", "grpc_noop", "rps"),
        "grpc_cold_cpu_vs_noop": paired(results, "grpc_1w_cold", "grpc_noop", cpu),
        "warm_envoy_vs_noop_ext_authz": paired(results, "envoy_ours_warm", "envoy_noop_ext_authz", "rps"),
        "warm_envoy_vs_jwt_authn": rps["envoy_ours_warm"] / rps["envoy_jwt_authn"],
        "http_warm_envoy_vs_jwt_authn": rps["envoy_ours_http_warm"] / rps["envoy_jwt_authn"],
        "http_warm_envoy_vs_noop_http": rps["envoy_ours_http_warm"] / rps["envoy_noop_http_ext_authz"],
        "noop_http_vs_jwt_authn": rps["envoy_noop_http_ext_authz"] / rps["envoy_jwt_authn"],
        "noop_http_uvloop_vs_jwt_authn": rps["envoy_noop_http_uvloop_ext_authz"] / rps["envoy_jwt_authn"],
        "http_cold_vs_grpc_cold_envoy": rps["envoy_ours_http_cold"] / rps["envoy_ours_cold"],
        "http_dpop_warm_vs_bearer_warm": rps["envoy_ours_http_dpop_warm"] / rps["envoy_ours_http_warm"],
        **(
            {
                "http_dpop_store_vs_local": rps["envoy_ours_http_dpop_store_warm"]
                / rps["envoy_ours_http_dpop_warm"]
            }
            if "envoy_ours_http_dpop_store_warm" in rps
            else {}
        ),
        "grpc_2w_vs_1w_warm": rps["grpc_2w_warm"] / rps["grpc_1w_warm"],
        "grpc_2w_vs_1w_cold": rps["grpc_2w_cold"] / rps["grpc_1w_cold"],
        "envoy_2w_mcs_vs_1conn": rps["envoy_ours_warm_2w_mcs"] / rps["envoy_ours_warm_2w_1conn"],
        "warm_envoy_vs_direct_response": rps["envoy_ours_warm"] / rps["envoy_direct_response"],
        "cold_vs_warm_envoy": rps["envoy_ours_cold"] / rps["envoy_ours_warm"],
        "p99_added_ms": results["latency"]["p99_added_ms"],
    }
    if pair in token_pairs:
        values["cold_token_path_vs_raw"] = token_pairs[pair]["ratio_to_raw"]["ours"]
        raw_us = token_pairs[pair]["us"]["raw"]
        values["grpc_1w_cold_check_vs_raw"] = (1e6 / rps["grpc_1w_cold"]) / raw_us
    out = {}
    for name, value in values.items():
        entry: dict[str, Any] = {"value": value}
        if name in TARGETS:
            target, sense = TARGETS[name]
            entry |= {
                "target": target,
                "sense": sense,
                "meets": value >= target if sense == "min" else value <= target,
            }
        out[name] = entry
    return out


# output --------------------------------------------------------------------------------------


def print_table(results: Mapping[str, Any]) -> None:
    m = results["machine"]
    print(
        f"\n{results['date']}  {m['cores']} cores  {m['cpu']}  Python {m['python']}  Envoy {m['envoy']}  "
        f"({results['settings']['mode']}: {results['settings']['wrk']}, {results['settings']['h2load']}, "
        f"median of {results['settings']['runs']})"
    )
    print(f"\n{'scenario':<28}{'req/s':>10}{'min':>10}{'max':>10}{'cpu us':>8}  description")
    for name, s in results["scenarios"].items():
        cpu = s.get("server_cpu_us_per_request")
        cpu_text = f"{cpu:>8.0f}" if cpu is not None else f"{'':>8}"
        rates = f"{s['rps']:>10.0f}{s['rps_min']:>10.0f}{s['rps_max']:>10.0f}"
        print(f"{name:<28}{rates}{cpu_text}  {s['description']}")
    lat = results["latency"]
    print(f"\nlatency at {lat['rate']:.0f} req/s{'':<8}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("envoy_direct_response", "envoy_ours_warm"):
        print(f"{name:<28}{lat[name]['p50_ms']:>10.2f}{lat[name]['p99_ms']:>10.2f}")
    mem = results["memory"]
    print(
        f"\nmemory: {mem['tokens']} distinct tokens (+{mem['replayed']} replayed): RSS {mem['rss_mib']} MiB "
        f"(+{mem['rss_growth_kib'] / 1024:.1f} MiB), cache {mem['cache_entries']}/{mem['cache_max_entries']} "
        f"entries, hit rate {mem['hit_rate']:.2f}"
    )
    print(f"\n{'abuse (distinct tokens)':<28}{'rejects/s':>10}{'cpu us':>10}{'busy':>6}  reasons")
    for kind, a in results["abuse"].items():
        rate, cpu = a["rejections_per_s"], a["server_cpu_us_per_rejection"]
        print(f"{kind:<28}{rate:>10.0f}{cpu:>10.0f}{a['server_cpu_utilization']:>6.2f}  {a['reasons']}")
    print(f"\n{'ratio':<34}{'value':>10}  target")
    for name, r in results["ratios"].items():
        target = ""
        if "target" in r:
            sign = ">=" if TARGETS[name][1] == "min" else "<="
            target = f"{sign} {r['target']}  {'ok' if r['meets'] else 'MISSED'}"
        print(f"{name:<34}{r['value']:>10.2f}  {target}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="seconds, tiny counts: a smoke run, not a measurement"
    )
    parser.add_argument("--seconds", type=int, help="per run (default 10; quick 1)")
    parser.add_argument("--runs", type=int, help="runs per scenario, median reported (default 3; quick 1)")
    parser.add_argument(
        "--memory-tokens", type=int, help="distinct tokens for the memory run (default 20000)"
    )
    parser.add_argument("--abuse-tokens", type=int, help="distinct tokens per abuse kind (default 5000)")
    parser.add_argument(
        "--pair", default="RSA-OAEP-256/RS256", help="token key management/signature algorithms"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "results.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "bench.png")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install wrk/h2load if missing"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    args = parser.parse_args(argv)
    quick = args.quick
    outer, _, inner = args.pair.partition("/")
    settings = Settings(
        seconds=args.seconds or (1 if quick else 10),
        runs=args.runs or (1 if quick else 3),
        warmup=0 if quick else 2,
        h2load_clients=8,  # issue 16's measurement: h2load -t1 -c8 -m4
        h2load_streams=4,
        connections=32,
        memory_tokens=args.memory_tokens or (200 if quick else 20_000),
        abuse_tokens=args.abuse_tokens or (50 if quick else 5000),
        pair=(outer, inner),
        quick=quick,
        mode="quick" if quick else ("full" if (args.seconds or 10, args.runs or 3) == (10, 3) else "custom"),
        token_bench_args=["--seconds", "0.01", "--rounds", "1"] if quick else ["--rounds", "3"],
        tracing_bench_args=["--checks", "30", "--rounds", "1"] if quick else ["--rounds", "3"],
        http_door_bench_args=["--requests", "50", "--rounds", "1"] if quick else ["--rounds", "3"],
        dpop_bench_args=["--proofs", "50", "--rounds", "1", "--entries", "2000"]
        if quick
        else ["--rounds", "7"],
        store_bench_args=["--entries", "3000", "--checks", "500", "--rounds", "1", "--claims", "200"]
        if quick
        else [],
        subscriptions_bench_args=["--subscriptions", "3000", "--checks", "500", "--rounds", "1"]
        if quick
        else [],
        grpc_door_bench_args=["--checks", "50", "--rounds", "1"] if quick else ["--rounds", "3"],
        in_process_folder=args.json.parent,
        rate_tolerance=0.3 if quick else 0.1,
    )
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    try:
        loadgen.ensure_tools(install=not args.no_install)
    except loadgen.ToolsMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    try:
        results = run(settings, folder)
    except (VerificationError, loadgen.LoadError) as exc:
        print(f"error: a run did not answer as expected; no results written.\n{exc}", file=sys.stderr)
        print(f"logs kept in {folder}", file=sys.stderr)
        return 1
    else:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    import chart

    args.chart.parent.mkdir(parents=True, exist_ok=True)
    chart.draw(results, args.chart)
    print(f"\nwrote {args.json} and {args.chart} in {results['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
