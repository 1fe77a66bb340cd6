"""The HTTP door's cost per request, this tree against a git ref, in one run (before/after a change).

bench/bench_http_door.py runs in turn from a copy of ``--baseline`` (``git archive``) and from
this working tree, one process per run, for ``--rounds`` rounds; the order alternates each
round, so that the machine's drift and noise fall on both alike. Prints the median
microseconds per request of each variant for both trees and the change in per cent.

    .venv/bin/python bench/ab_http_door.py --baseline main --rounds 8
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

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("memo", "memo_log_sampled_0", "decided", "floor")


def _extract(ref: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, stdout=out)  # noqa: S603, S607
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _run(tree: Path, requests: int, out: Path) -> dict[str, float]:
    """One bench_http_door.py process from ``tree``: its first-of-sys.path ``authz`` is the tree's."""
    command = [sys.executable, str(tree / "bench" / "bench_http_door.py")]
    command += ["--rounds", "1", "--requests", str(requests), "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(command, check=True, cwd=tree, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    result: dict[str, float] = json.loads(out.read_text())["us_per_request"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20000, help="requests per variant and run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ab-http-door-") as folder:
        trees = {"before": _extract(args.baseline, Path(folder)), "after": ROOT}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                runs[name].append(_run(trees[name], args.requests, Path(folder) / "run.json"))
                memo = runs[name][-1]["memo"]
                print(f"round {round_ + 1}/{args.rounds} {name:<6} memo {memo:6.2f} us", file=sys.stderr)
    medians = {
        name: {v: statistics.median(run[v] for run in results) for v in VARIANTS}
        for name, results in runs.items()
    }
    print(f"HTTP door, us/request (median of {args.rounds} runs each; before = {args.baseline})")
    print(f"{'variant':<20}{'before':>9}{'after':>9}{'change':>9}")
    change = {}
    for variant in VARIANTS:
        before, after = medians["before"][variant], medians["after"][variant]
        change[variant] = (after - before) / before * 100
        print(f"{variant:<20}{before:>9.2f}{after:>9.2f}{change[variant]:>+8.1f}%")
    if args.json:
        result = {"baseline": args.baseline, "rounds": args.rounds, "requests": args.requests}
        result |= {"us_per_request": medians, "change_percent": change, "runs": runs}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
