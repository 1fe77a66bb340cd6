"""Smoke test of bench/bench_store.py: it runs, every figure is there, the JSON is written.

Not a measurement (a few thousand entries on whatever else the machine is doing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_store_runs_and_reports(tmp_path):
    out = tmp_path / "store.json"
    completed = subprocess.run(
        [sys.executable, "bench/bench_store.py", "--entries", "3000", "--checks", "500", "--rounds", "1", "--claims", "200", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["revocation_check_us"]["loaded"] > 0
    assert 50 < figures["memory"]["bytes_per_entry"] < 5000
    batched = figures["replay_round_trips"]["burst 64"]
    assert batched["round_trips_per_claim"] < 1  # gathered into pipelines
    assert "revocation lookup" in completed.stdout
