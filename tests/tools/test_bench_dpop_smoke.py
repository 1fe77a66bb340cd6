"""Smoke test of bench/bench_dpop.py: it runs, every variant gives a number, the JSON is written.

Not a measurement (a few proofs on whatever else the machine is doing): whether the
target was met is not asserted here, only that the script still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_dpop_runs_and_reports(tmp_path):
    out = tmp_path / "dpop.json"
    completed = subprocess.run(
        [sys.executable, "bench/bench_dpop.py", "--rounds", "1", "--proofs", "20", "--entries", "2000", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr  # a missed target is reported, not an error
    figures = json.loads(out.read_text(encoding="utf-8"))
    for alg in ("ES256", "EdDSA"):
        row = figures["algorithms"][alg]
        assert row["raw"] > 0
        assert row["ours"] > 0  # no timing relation: a smoke run on a busy machine measures noise
        assert row["ours-new"] > 0
    for alg in ("ES256", "EdDSA"):
        check = figures["warm_check"][alg]
        assert 0 < check["bearer_us"] < check["dpop_us"]
    assert 40 < figures["replay_store"]["bytes_per_entry"] < 300
    assert "replay store:" in completed.stdout
