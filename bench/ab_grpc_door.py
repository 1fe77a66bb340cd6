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
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import loadgen  # noqa: E402
import minting  # noqa: E402
import servers  # noqa: E402


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=4, help="h2load's run per server and round")
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
        logs = folder / "logs"
        logs.mkdir()
        before = _TreeServer("before", configs["warm"], 1, logs)
        before.tree = _extract(args.baseline, folder)
        after = _TreeServer("after", configs["warm"], 1, logs)
        floor = servers.NoopServer(logs)
        targets: dict[str, Any] = {"floor": floor, "before": before, "after": after}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        with servers.started(floor, before, after):
            for server in (before, after):  # the token verified and cached (and kept by a memo)
                answer = loadgen.run_grpc(server.port, [message, message], concurrency=1)
                if answer.codes != {0: 2}:
                    raise RuntimeError(f"{server.name}: the benchmark check answered {answer.codes}")
            for server in targets.values():
                loadgen.run_h2load(server.port, body, seconds=1, clients=8, streams=4)
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
                    server = targets[name]
                    cpu = servers.cpu_seconds(server.pid)
                    result = loadgen.run_h2load(server.port, body, seconds=args.seconds, clients=8, streams=4)
                    used = servers.cpu_seconds(server.pid) - cpu
                    samples[name].append((result["rps"], used / result["requests"] * 1e6))
                print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                    f"{n} {samples[n][-1][1]:.0f} us" for n in targets), flush=True)  # fmt: skip

    base = samples["floor"]
    summary: dict[str, dict[str, float]] = {}
    print(f"\n{'server':<8}{'req/s':>9}{'cpu us/check':>14}{'cpu x floor':>13}{'req/s x floor':>15}")
    for name, runs in samples.items():
        summary[name] = {
            "rps": statistics.median(r for r, _ in runs),
            "cpu_us_per_check": statistics.median(c for _, c in runs),
            "cpu_vs_floor": statistics.median(c / b for (_, c), (_, b) in zip(runs, base, strict=True)),
            "rps_vs_floor": statistics.median(r / b for (r, _), (b, _) in zip(runs, base, strict=True)),
        }
        s = summary[name]
        print(
            f"{name:<8}{s['rps']:>9.0f}{s['cpu_us_per_check']:>14.1f}"
            f"{s['cpu_vs_floor']:>13.2f}{s['rps_vs_floor']:>15.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"baseline": args.baseline, "summary": summary, "runs": samples}) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
