"""Smoke test of the benchmark suite: `bench/run.py --quick` runs every scenario and writes its outputs.

Not a measurement (one run of one second per scenario on whatever else the
machine is doing): it checks that every scenario ran, was verified and gave a
number, and that the JSON and the chart are written. It needs wrk and h2load
(`apt-get install -y wrk nghttp2-client`); it installs them when it can and
skips only when they are neither found nor installable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz.grpc.wire import read_wire
from testkit.redis import redis_binary

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

SCENARIOS = {
    "grpc_noop",
    "grpc_1w_cold",
    "grpc_1w_warm",
    "grpc_2w_cold",
    "grpc_2w_warm",
    "envoy_direct_response",
    "envoy_jwt_authn",
    "envoy_noop_ext_authz",
    "envoy_ours_cold",
    "envoy_ours_warm",
    "envoy_ours_warm_2w_1conn",
    "envoy_ours_warm_2w_mcs",
    "envoy_noop_http_ext_authz",
    "envoy_noop_http_uvloop_ext_authz",
    "envoy_ours_http_cold",
    "envoy_ours_http_warm",
    "envoy_ours_http_dpop_warm",
}
if redis_binary():  # CI installs redis-server: the shared-store scenario runs there
    SCENARIOS.add("envoy_ours_http_dpop_store_warm")
ABUSE = {"garbage", "unknown_kid", "alg_not_allowed", "oversize", "wrong_signer"}


@pytest.fixture(scope="module")
def tools():
    import loadgen

    try:
        return loadgen.ensure_tools(install=True)
    except (loadgen.ToolsMissingError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"wrk/h2load not found and not installable: {exc}")


def test_quick_run_covers_every_scenario(tools, tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra is not installed: pip install -e '.[bench]'")
    results_path, chart_path = tmp_path / "results.json", tmp_path / "bench.png"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--no-install",
            "--json",
            str(results_path),
            "--chart",
            str(chart_path),
        ],
        capture_output=True,
        text=True,
        # About 35 s alone; the bound only guards a hang, and must hold on a 2-core machine that
        # is also running other tests and a CPU hog (a 120 s bound was once exceeded at load 6).
        timeout=280,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(results_path.read_text())

    assert set(results["scenarios"]) == SCENARIOS
    for name, scenario in results["scenarios"].items():
        assert scenario["rps"] > 0, name
        assert all(run["requests"] > 0 for run in scenario["runs"]), name
        if scenario["group"] == "grpc":
            assert scenario["server_cpu_us_per_request"] > 0, name
    for name in ("envoy_direct_response", "envoy_ours_warm"):
        assert results["latency"][name]["p50_ms"] > 0
        assert results["latency"][name]["p99_ms"] >= results["latency"][name]["p50_ms"]
    assert results["latency"]["rate"] > 0
    memory = results["memory"]
    assert memory["rss_kib"] > 0
    assert memory["cache_entries"] == memory["tokens"]
    assert 0 < memory["hit_rate"] < 1
    assert set(results["abuse"]) == ABUSE
    assert all(a["rejections_per_s"] > 0 and a["rejected"] > 0 for a in results["abuse"].values())
    assert results["in_process"]["token"]["pairs"]
    assert results["in_process"]["tracing"]["us_per_check"]["bare"] > 0
    assert set(results["in_process"]["http_door"]["us_per_request"]) == {
        "floor", "decided", "memo", "memo_log_sampled_0"}  # fmt: skip
    assert set(results["in_process"]["grpc_door"]["us_per_check"]) == {
        "parse", "decided", "memo", "memo_log_sampled_0"}  # fmt: skip
    for name in (
        "grpc_warm_cpu_vs_noop",
        "grpc_warm_vs_noop",
        "warm_envoy_vs_noop_ext_authz",
        "warm_envoy_vs_jwt_authn",
        "grpc_2w_vs_1w_warm",
        "p99_added_ms",
    ):
        assert "value" in results["ratios"][name]
    assert results["ratios"]["cold_token_path_vs_raw"]["value"] > 0
    assert results["ratios"]["http_dpop_warm_vs_bearer_warm"]["value"] > 0
    assert set(results["in_process"]["dpop"]["warm_check"]) == {"ES256", "EdDSA"}
    assert results["in_process"]["dpop"]["replay_store"]["bytes_per_entry"] > 0
    assert results["in_process"]["subscriptions"]["memory"]["bytes_per_subscription"] > 0
    assert results["in_process"]["subscriptions"]["lookup_us"]["loaded"] > 0
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["envoy"]

    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["warm", "cold", "envoy"])
def test_the_grpc_door_ab_runs_every_server(tools, tmp_path, mode):
    """bench/ab_grpc_door.py (issue 16's A/B against a git ref and the grpc.aio floor): every
    server of the mode measured, with a CPU per check and a ratio to the floor."""
    results_path = tmp_path / "ab.json"
    args = [
        "--baseline",
        "HEAD",
        "--rounds",
        "1",
        "--seconds",
        "1",
        "--mode",
        mode,
        "--json",
        str(results_path),
    ]
    if mode == "warm":
        args.append("--ablate")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab_grpc_door.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads(results_path.read_text())["summary"]
    steps = {"canned", "parse", "read", "unrecorded", "bare"} | ({"wire"} if read_wire is not None else set())
    servers = {"floor", "before", "after"} | (steps if mode == "warm" else set())
    assert set(summary) == servers
    for name, figures in summary.items():
        assert figures["rps"] > 0, name
        assert figures["cpu_us_per_check"] > 0, name
        if mode != "envoy":  # standalone: each server's CPU split, from /proc
            assert figures["user_us"] > 0, name
            assert figures["switches_per_check"] > 0, name
            assert 0 < figures["loop_user_us"] <= figures["user_us"], name  # the event loop's share
    assert summary["floor"]["cpu_vs_floor"] == 1.0
