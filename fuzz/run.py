"""Run the fuzz targets for a bounded time each; print executions and time per target.

    python -m fuzz.run [--seconds 60] [--parallel] [TARGET ...] [-- LIBFUZZER_OPTION ...]
    make fuzz FUZZ_SECONDS=60

Each target starts from its seed corpus (fuzz/corpus/<target>/, read only) and
a working corpus (fuzz/work/<target>/, git-ignored, kept between runs so that
runs build on each other). The working corpora are emptied when the seeds'
valid tokens or proofs change (python -m fuzz.make_corpus, python -m
fuzz.dpop_seeds): the targets take exactly those as our issuers' tokens (and
proofs), and an input holding an older one (made with the same fixed keys)
would be reported as an acceptance of a foreign token.
Crashes, timeouts and out-of-memory inputs are written by libFuzzer to
fuzz/crashes/<target>-* (git-ignored); the exit status is 1 when any target
found one. ``--json FILE`` writes the figures.
Reproduce one: ``python -m fuzz.<target> fuzz/crashes/<file>``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
TARGETS = ("fuzz_token", "fuzz_inner", "fuzz_check", "fuzz_http", "fuzz_dpop", "fuzz_wire")
# The longest input worth trying: a little over the configured token limit (8192), and a request with one;
# a little over the DPoP proof limit (8192); CheckRequests past the memo's kept sizes (fuzz_wire).
MAX_LEN = {
    "fuzz_token": 9000,
    "fuzz_inner": 9000,
    "fuzz_check": 16384,
    "fuzz_http": 20000,
    "fuzz_dpop": 9000,
    "fuzz_wire": 16384,
}


@dataclass
class Result:
    target: str
    exit_code: int
    executions: int
    seconds: float
    exec_per_second: int
    new_units: int
    coverage: int
    crashes: list[str]
    log: str


def _seeds_digest() -> str:
    digest = hashlib.sha256()
    # fuzz_dpop's valid-* proofs are its "may pass" list, as fuzz_token's tokens are.
    for target in ("fuzz_token", "fuzz_dpop"):
        for path in sorted((FUZZ / "corpus" / target).glob("valid-*")):
            digest.update(path.read_bytes() + b"\n")
    return digest.hexdigest()


def _wire_built() -> bool:
    """Whether fuzz_wire's subject exists (it is optional: built where a C compiler was found)."""
    return importlib.util.find_spec("authz.grpc._wire") is not None


def forget_stale_work(work: Path, targets: list[str]) -> None:
    """Empty the working corpora made from other seeds than the current ones."""
    stamp, current = work / "seeds.sha256", _seeds_digest()
    if stamp.exists() and stamp.read_text(encoding="ascii").strip() == current:
        return
    for target in targets:
        shutil.rmtree(work / target, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current + "\n", encoding="ascii")


def command(target: str, seconds: int, work: Path, crashes: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        f"fuzz.{target}",
        str(work / target),
        str(FUZZ / "corpus" / target),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}/{target}-",
        f"-max_len={MAX_LEN[target]}",
        "-len_control=0",  # whole tokens from the start: a truncated one never decrypts
        "-timeout=30",  # one input for longer than this is a hang: written as timeout-*
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        *extra,
    ]


Started = tuple[subprocess.Popen[bytes], Path, float, set[Path]]  # process, log, start time, old crashes


def _stat(log: str, name: str) -> int:
    match = re.search(rf"stat::{name}:\s*(\d+)", log)
    return int(match.group(1)) if match else 0


def _coverage(log: str) -> int:
    found = re.findall(r"\bcov: (\d+)", log)
    return int(found[-1]) if found else 0


def start(target: str, args: argparse.Namespace) -> Started:
    (args.work / target).mkdir(parents=True, exist_ok=True)
    args.crashes.mkdir(parents=True, exist_ok=True)
    before = set(args.crashes.glob(f"{target}-*"))
    log = args.work / f"{target}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603 - our own target, our interpreter
            command(target, args.seconds, args.work, args.crashes, args.extra),
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return process, log, time.monotonic(), before


def finish(target: str, started: Started, args: argparse.Namespace) -> Result:
    process, log_path, began, before = started
    exit_code = process.wait()
    elapsed = time.monotonic() - began
    log = log_path.read_text("utf-8", "replace")
    crashes = sorted(str(p) for p in set(args.crashes.glob(f"{target}-*")) - before)
    executions = _stat(log, "number_of_executed_units")
    return Result(
        target=target,
        exit_code=exit_code,
        executions=executions,
        seconds=round(elapsed, 1),
        exec_per_second=_stat(log, "average_exec_per_sec"),
        new_units=_stat(log, "new_units_added"),
        coverage=_coverage(log),
        crashes=crashes,
        log=str(log_path),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=int, default=60, help="-max_total_time of each target")
    parser.add_argument("--parallel", action="store_true", help="run the targets at the same time")
    parser.add_argument("--work", type=Path, default=FUZZ / "work", help="working corpora and logs")
    parser.add_argument(
        "--crashes", type=Path, default=FUZZ / "crashes", help="where libFuzzer writes crashes"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    args.extra = extra
    args.work, args.crashes = args.work.resolve(), args.crashes.resolve()
    targets = args.targets or list(TARGETS)
    if not args.targets and not _wire_built():
        print("fuzz_wire left out: the C extension authz.grpc._wire is not built here", file=sys.stderr)
        targets.remove("fuzz_wire")
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    forget_stale_work(args.work, list(TARGETS))
    results: list[Result] = []
    if args.parallel:
        running = [(target, start(target, args)) for target in targets]
        results = [finish(target, started, args) for target, started in running]
    else:
        for target in targets:
            print(f"fuzzing {target} for {args.seconds} s ...", flush=True)
            results.append(finish(target, start(target, args), args))
    print(f"{'target':<12} {'executions':>11} {'exec/s':>7} {'time s':>7} {'cov':>5} {'new':>5}  result")
    for r in results:
        verdict = (
            "ok"
            if r.exit_code == 0 and not r.crashes
            else f"FAILED (exit {r.exit_code}): " + (", ".join(r.crashes) or f"see {r.log}")
        )
        figures = f"{r.executions:>11} {r.exec_per_second:>7} {r.seconds:>7} {r.coverage:>5} {r.new_units:>5}"
        print(f"{r.target:<12} {figures}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.exit_code == 0 and not r.crashes for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
