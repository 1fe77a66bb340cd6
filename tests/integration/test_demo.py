"""`make demo` / `make demo-stop`: the local stack on free ports, its table of statuses, and a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.redis import redis_binary

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
MAKE_TIMEOUT = 120  # seconds for one make run; the stack starts in a few
EXPECTED = {"allowed": 200, "unauthenticated": 401, "forbidden": 403, "cross-tenant": 403}


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # -o: the venv stamp is never remade here (no pip install during a test); VENV: this venv.
    return subprocess.run(
        [
            make,
            "--no-print-directory",
            "-C",
            str(REPO),
            "-o",
            f"{VENV}/.installed-dev",
            f"VENV={VENV}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def _table(stdout: str) -> dict[str, dict[str, str]]:
    """The demo's table: case -> {column: cell}."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[1:]
    ]
    return {row["case"]: row for row in rows}


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What one `make demo` + `make demo-stop` did."""

    start: subprocess.CompletedProcess[str]
    stop: subprocess.CompletedProcess[str]
    rows: dict[str, dict[str, str]]
    pids: dict[str, int]
    alive_after_stop: list[str]
    pid_files_after_stop: list[str]
    authz_log: str
    envoy_log: str


def _run_demo(state: Path, otlp: str) -> DemoRun:
    ports = _free_ports(6)
    names = ["ENVOY", "ENVOY_ADMIN", "AUTHZ", "AUTHZ_ADMIN", "UPSTREAM", "STORE"]
    variables = [f"DEMO_{name}_PORT={port}" for name, port in zip(names, ports, strict=True)]
    variables += [f"DEMO_STATE={state}", f"DEMO_OTLP={otlp}"]
    try:
        start = _make("demo", *variables)
        pids = {p.stem: int(p.read_text()) for p in state.glob("*.pid")}
    finally:
        stop = _make("demo-stop", f"DEMO_STATE={state}")
    return DemoRun(
        start=start,
        stop=stop,
        rows=_table(start.stdout),
        pids=pids,
        alive_after_stop=[name for name, pid in pids.items() if _alive(pid)],
        pid_files_after_stop=sorted(p.name for p in state.glob("*.pid")),
        authz_log=(state / "authz.log").read_text(errors="replace"),
        envoy_log=(state / "envoy.log").read_text(errors="replace"),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`make demo` without a collector (trace ids printed), then `make demo-stop`."""
    return _run_demo(tmp_path_factory.mktemp("demo") / "state", "none")


def test_make_demo_shows_the_expected_statuses(demo: DemoRun) -> None:
    """Allowed 200, unauthenticated 401, forbidden 403 and cross-tenant 403, as its table prints them."""
    assert demo.start.returncode == 0, demo.start.stdout + demo.start.stderr
    for case, status in EXPECTED.items():
        row = demo.rows[case]
        assert int(row["expected"]) == status
        assert int(row["status"]) == status, row
    assert demo.rows["unauthenticated"]["result"].endswith("token_missing")
    assert demo.rows["forbidden"]["result"].endswith("role_missing")
    assert "tenant=acme" in demo.rows["allowed"]["result"]
    assert all(row["status"] == row["expected"] for row in demo.rows.values())
    assert f"{len(demo.rows)} of {len(demo.rows)} requests got the expected status" in demo.start.stdout


def test_make_demo_shows_a_revocation_taking_effect(demo: DemoRun) -> None:
    """With a redis-server installed (.ci/run installs it), the demo runs the shared store and shows
    the allowed token refused after `authz revoke --subject demo-user`."""
    assert redis_binary() is not None, "redis-server missing: apt-get install redis-server"
    row = demo.rows["revoked"]
    assert (int(row["status"]), row["result"]) == (401, "invalid_token: token_revoked")


def test_make_demo_prints_trace_ids_that_reach_authz(demo: DemoRun) -> None:
    """Without a collector each request's trace id is printed, and authz logged its decision under it."""
    assert "no OTLP collector found" in demo.start.stdout
    decisions = [json.loads(line) for line in demo.authz_log.splitlines() if '"authz.decision"' in line]
    logged = {d["trace_id"] for d in decisions}
    for case in EXPECTED:
        trace_id = demo.rows[case]["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
        assert trace_id in logged, case


def test_demo_envoy_access_log_carries_the_decision(demo: DemoRun) -> None:
    """Envoy's JSON access log records authz's decision, reason, tenant and rule for each checked request."""
    entries: list[dict[str, Any]] = []
    for line in demo.envoy_log.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    by_trace = {e["traceparent"].split("-")[1]: e for e in entries if e.get("traceparent")}
    forbidden = by_trace[demo.rows["forbidden"]["trace_id"]]
    assert (forbidden["status"], forbidden["authz_decision"], forbidden["authz_reason"]) == (
        403,
        "deny",
        "role_missing",
    )
    assert (forbidden["authz_tenant"], forbidden["authz_rule"]) == ("acme", "admin")
    allowed = by_trace[demo.rows["allowed"]["trace_id"]]
    assert (allowed["status"], allowed["authz_decision"], allowed["authz_tenant"]) == (200, "allow", "acme")


def test_make_demo_stop_leaves_no_process_behind(demo: DemoRun) -> None:
    """`make demo-stop` ends Envoy, authz, the echo upstream and the store it started, and removes their pid files."""
    assert set(demo.pids) == {"echo", "authz", "envoy", "store"}
    assert demo.stop.returncode == 0, demo.stop.stdout + demo.stop.stderr
    assert demo.alive_after_stop == []
    assert demo.pid_files_after_stop == []


@pytest.fixture
def otlp_receiver() -> Iterator[Any]:
    """A real OTLP/gRPC trace receiver on 127.0.0.1."""
    receiver_module = pytest.importorskip("testkit.otlp")
    with receiver_module.OtlpReceiver() as receiver:
        yield receiver


def test_make_demo_exports_traces_to_a_collector(otlp_receiver: Any, tmp_path: Path) -> None:
    """Given a collector, Envoy's and authz's spans of a demo request arrive under the printed trace id."""
    address = otlp_receiver.endpoint.split("//")[-1]
    run = _run_demo(tmp_path / "state", address)
    assert run.start.returncode == 0, run.start.stdout + run.start.stderr
    assert f"exported to {address}" in run.start.stdout
    trace_id = run.rows["allowed"]["trace_id"]
    spans = otlp_receiver.wait_for_trace(
        trace_id, names={"envoy.service.auth.v3.Authorization/Check"}, services={"envoy", "envoy-jwe-authz"}
    )
    assert {s.trace_id for s in spans} == {trace_id}
    assert run.alive_after_stop == []
