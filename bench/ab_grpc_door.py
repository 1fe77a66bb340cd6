"""The gRPC door's server CPU per check, this tree against a git ref and the grpc.aio floor, in one run.

Three servers run side by side: the do-nothing grpc.aio server (bench/noop_authz.py),
``authz serve`` from a copy of ``--baseline`` (``git archive``) and ``authz serve`` from this
working tree, each warm (the benchmark token cached). Each round drives each with
``h2load -t1 -c8 -m4`` for ``--seconds`` (issue 16's measurement), in an order that
alternates round by round, and reads each server's CPU time from ``/proc/PID/stat``
around its run: CPU per check = CPU seconds / answered checks. Prints, per server, the
median over rounds of its figure divided by the floor's of the same round (the machine's
drift falls on both), and the medians themselves.

    .venv/bin/python bench/ab_grpc_door.py --baseline main --rounds 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import envoy_bootstrap as eb  # noqa: E402
import loadgen  # noqa: E402
import minting  # noqa: E402
import servers  # noqa: E402

from authz.grpc.wire import read_wire  # noqa: E402
from testkit.envoy import run_envoy  # noqa: E402


def _extract(ref: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, stdout=out)  # noqa: S603, S607
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


class _TreeServer(servers.AuthzServer):
    """``authz serve`` with the ``authz`` package of ``tree`` (first on its sys.path)."""

    tree: Path = ROOT

    def start(self) -> None:
        command = [sys.executable, "-m", "authz", "serve", "--config", str(self.config)]
        command += [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {
            "PYTHONPATH": str(self.tree)
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tree,
                env=env,
            )


# Per pid, one entry per run: (user µs, system µs, switches) per check, of the whole process
# ("process": all its threads, all switches) and of its main thread ("loop": the event loop,
# voluntary switches).
_SPLITS: dict[str, dict[int, list[tuple[float, float, float]]]] = {"process": {}, "loop": {}}


def _per_check(
    before: tuple[float, float, int], after: tuple[float, float, int], checks: int
) -> tuple[float, float, float]:
    """CPU seconds and switch counts read before and after a run, as µs and switches per check."""
    user, system, switches = (b - a for a, b in zip(before, after, strict=True))
    return user / checks * 1e6, system / checks * 1e6, switches / checks


def _standalone(server: Any, body: Path, seconds: int) -> tuple[float, float]:
    """h2load -t1 -c8 -m4 against ``server`` alone: (req/s, server CPU µs per answered check)."""
    process, loop = servers.cpu_split(server.pid), servers.main_thread_split(server.pid)
    result = loadgen.run_h2load(server.port, body, seconds=seconds, clients=8, streams=4)
    checks = result["requests"]
    split = _per_check(process, servers.cpu_split(server.pid), checks)
    _SPLITS["process"].setdefault(server.pid, []).append(split)
    _SPLITS["loop"].setdefault(server.pid, []).append(
        _per_check(loop, servers.main_thread_split(server.pid), checks)
    )
    return result["rps"], split[0] + split[1]


def _through_envoy(port: int, pid: int, headers: dict[str, str], seconds: int) -> tuple[float, float]:
    """wrk -t1 -c32 through Envoy's listener on ``port``: (req/s, CPU µs per request of ``pid``)."""
    cpu = servers.cpu_seconds(pid)
    result = loadgen.run_wrk(port, path="/orders", headers=headers, seconds=seconds, connections=32)
    used = servers.cpu_seconds(pid) - cpu
    return result["rps"], used / result["requests"] * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=4, help="each load run per server and round")
    parser.add_argument(
        "--mode",
        choices=("warm", "cold", "envoy"),
        default="warm",
        help="warm or cold (token.cache_size 0) standalone with h2load; envoy: warm, through Envoy with wrk",
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="warm: also our handler in a bare grpc.aio server, a bare server sending our answer canned, "
        "and the steps between (bench/bare_grpc_door.py: parse, read, wire, unrecorded)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    loadgen.ensure_tools(install=False)

    with tempfile.TemporaryDirectory(prefix="ab-grpc-door-") as temporary:
        folder = Path(temporary)
        world, configs = minting.make_world(folder / "world")
        token = world.token(minting.claims(world), outer="RSA-OAEP-256", inner="RS256")
        message = minting.envoy_check_message(token)
        body = folder / "check.bin"
        body.write_bytes(loadgen.grpc_frame(message))
        (folder / "check.pb").write_bytes(message)
        logs = folder / "logs"
        logs.mkdir()
        config = configs["cold" if args.mode == "cold" else "warm"]
        before = _TreeServer("before", config, 1, logs)
        before.tree = _extract(args.baseline, folder)
        after = _TreeServer("after", config, 1, logs)
        floor = servers.NoopServer(logs)
        targets: dict[str, Any] = {"floor": floor}
        if args.ablate and args.mode == "warm":
            bare = ("--config", str(configs["warm"]), "--message", str(folder / "check.pb"))
            wire = ("wire",) if read_wire is not None else ()  # where authz.grpc._wire is built
            for step in ("canned", "parse", "read", *wire, "unrecorded"):
                targets[step] = servers.NoopServer(logs, "bare_grpc_door.py", (*bare, "--answer", step))
            targets["bare"] = servers.NoopServer(logs, "bare_grpc_door.py", (*bare, "--answer", "ours"))
        targets |= {"before": before, "after": after}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        with contextlib.ExitStack() as stack:
            stack.enter_context(servers.started(*targets.values()))
            for name, server in targets.items():  # the token verified and cached (and kept by a memo)
                if name != "floor":
                    answer = loadgen.run_grpc(server.port, [message, message], concurrency=1)
                    if answer.codes != {0: 2}:
                        raise RuntimeError(f"{name}: the benchmark check answered {answer.codes}")
            run: Callable[[str], tuple[float, float]]
            if args.mode == "envoy":
                listeners = [eb.listener(name, [eb.ext_authz_filter(name)]) for name in targets]
                clusters = [eb.grpc_cluster(name, server.port) for name, server in targets.items()]
                envoy = stack.enter_context(
                    run_envoy(eb.bootstrap(listeners, clusters), tmp_path=folder / "envoy", validate=False)
                )
                ports = servers.envoy_listener_ports(envoy)
                headers = {"Host": eb.HOST, "Authorization": f"Bearer {token}"}

                def run(name: str) -> tuple[float, float]:
                    return _through_envoy(ports[name], targets[name].pid, headers, args.seconds)
            else:

                def run(name: str) -> tuple[float, float]:
                    return _standalone(targets[name], body, args.seconds)

            for name in targets:  # warm-up: connections, caches, the memo
                _ = run(name) if args.mode == "envoy" else _standalone(targets[name], body, 1)
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
                    samples[name].append(run(name))
                done = (f"{n} {samples[n][-1][0]:.0f}/s {samples[n][-1][1]:.0f} us" for n in targets)
                print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(done), flush=True)

    base = samples["floor"]
    summary: dict[str, dict[str, float]] = {}
    print(f"\nmode {args.mode}: medians over {args.rounds} rounds (range), ratios paired per round")
    print(f"{'server':<8}{'req/s':>22}{'cpu us/check':>22}{'cpu x floor':>20}{'req/s x floor':>20}")
    for name, runs in samples.items():
        rps = [r for r, _ in runs]
        cpu = [c for _, c in runs]
        cpu_x = [c / b for (_, c), (_, b) in zip(runs, base, strict=True)]
        rps_x = [r / b for (r, _), (b, _) in zip(runs, base, strict=True)]
        summary[name] = {
            "rps": statistics.median(rps),
            "cpu_us_per_check": statistics.median(cpu),
            "cpu_vs_floor": statistics.median(cpu_x),
            "rps_vs_floor": statistics.median(rps_x),
        }
        print(
            f"{name:<8}{_spread(rps, '.0f'):>22}{_spread(cpu, '.1f'):>22}"
            f"{_spread(cpu_x, '.2f'):>20}{_spread(rps_x, '.2f'):>20}"
        )
    if args.mode != "envoy":
        tables = (
            ("process", "", "switches_per_check", "all threads: user CPU, system CPU, context switches"),
            (
                "loop",
                "loop_",
                "loop_voluntary_switches",
                "the main thread alone (the event loop, where grpc.aio runs each call's Python): user CPU, "
                "system CPU, voluntary switches (near 0: busy all the time)",
            ),
        )
        for table, prefix, switches_key, title in tables:
            print(f"\nper check, medians of the rounds (/proc), {title}")
            for name, server in targets.items():
                rounds = _SPLITS[table].get(server.pid, [])[1:]  # the first was the warm-up
                if rounds:
                    user, system, switches = (
                        statistics.median(column) for column in zip(*rounds, strict=True)
                    )
                    summary[name] |= {
                        f"{prefix}user_us": user,
                        f"{prefix}system_us": system,
                        switches_key: switches,
                    }
                    print(f"{name:<8}{user:>10.1f} us{system:>10.1f} us{switches:>10.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({"baseline": args.baseline, "mode": args.mode, "summary": summary, "runs": samples})
            + "\n"
        )
    return 0


def _spread(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


if __name__ == "__main__":
    sys.exit(main())
