"""Load generators: wrk (HTTP/1.1 to Envoy), h2load (gRPC frames to our server), a gRPC client.

Every load is bounded in time and in count:

- wrk: ``-d`` bounds the time; a Lua counter stops the thread after ``max_requests``
  responses. Paced runs (fixed rate) schedule requests on a global clock in a
  Lua ``delay()`` (wrk2 is not packaged): one slot every 1/rate s, shared by all
  connections, so a slow response does not slow the schedule down.
- h2load: ``-D`` bounds the time; ``--rps`` caps every client's rate, so the
  count is at most clients x rps x seconds. The cap (25,000/s a client) is far
  above what any server here answers, so it does not shape the measured
  throughput. Until 2026-12-05 it was 1,500/s a client, which held the
  8-client runs, and with them the do-nothing grpc.aio floor, at 12,000/s.
- the gRPC client: a list of requests (the count) and a deadline.

All of them talk to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "CHECK_METHOD",
    "GrpcResult",
    "LoadError",
    "ToolsMissingError",
    "ensure_tools",
    "grpc_frame",
    "run_grpc",
    "run_h2load",
    "run_wrk",
]

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
APT_PACKAGES = ("wrk", "nghttp2-client")
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client"}


class LoadError(RuntimeError):
    """A load generator failed, or its result shows errors: the run is not a valid measurement."""


class ToolsMissingError(RuntimeError):
    """wrk or h2load is not installed and could not be installed."""


def _missing() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def ensure_tools(*, install: bool = True, timeout: float = 600.0) -> dict[str, str]:
    """Return the paths of wrk and h2load, installing them with apt-get if missing and allowed."""
    missing = _missing()
    if missing and install:
        apt = shutil.which("apt-get")
        if apt is None:
            raise ToolsMissingError(f"{', '.join(missing)} not found and apt-get is not available")
        command = [apt, "install", "-y", "--no-install-recommends", *APT_PACKAGES]
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False, env=env)  # noqa: S603
        if done.returncode != 0:  # the package lists may be missing or stale
            subprocess.run([apt, "update"], capture_output=True, timeout=timeout, check=False, env=env)  # noqa: S603
            done = subprocess.run(command, capture_output=True, timeout=timeout, check=False, env=env)  # noqa: S603
        missing = _missing()
        if missing:
            output = (done.stdout + done.stderr).decode("utf-8", "replace")[-2000:]
            raise ToolsMissingError(
                f"{', '.join(missing)} not found; `{' '.join(command)}` failed:\n{output}"
            )
    elif missing:
        raise ToolsMissingError(
            f"{', '.join(missing)} not found (apt-get install -y {' '.join(APT_PACKAGES)})"
        )
    return {tool: str(shutil.which(tool)) for tool in TOOLS}


# wrk -----------------------------------------------------------------------------------

_WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""

# Counts responses and stops the thread at the bound.
_WRK_COUNT = """
local max_requests = {max_requests}
local seen = 0
function response(status, headers, body)
  seen = seen + 1
  if seen >= max_requests then wrk.thread:stop() end
end
"""

# A global schedule: slot k is at start + k/rate. Each connection, before each request,
# takes the next slot and waits until it (ms resolution, wrk's timer). Bounded in count too.
_WRK_PACE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clock_id, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = 1000 / {rate}
local max_requests = {max_requests}
local slot = nil
local taken = 0
function delay()
  taken = taken + 1
  if taken > max_requests then
    wrk.thread:stop()
    return 60000
  end
  local t = now_ms()
  if slot == nil then slot = t end
  slot = slot + interval
  local d = slot - t
  if d <= 0 then return 0 end
  return math.floor(d + 0.5)
end
"""


# One value per request for one header (a DPoP proof is single-use), read from a file at start;
# the count bound keeps the requests sent below the values (one in flight per connection).
_WRK_VARYING = """
local varying = {{}}
local taken = 0
function init(args)
  for line in io.lines("{path}") do varying[#varying + 1] = line end
end
function request()
  taken = taken + 1
  local headers = {{}}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["{name}"] = varying[taken]
  return wrk.format(nil, nil, headers)
end
"""


def run_wrk(
    port: int,
    *,
    path: str,
    headers: Mapping[str, str],
    seconds: int,
    connections: int = 32,
    max_requests: int | None = None,
    rate: float | None = None,
    timeout_s: int = 5,
    varying: tuple[str, Path, int] | None = None,
) -> dict[str, Any]:
    """``wrk -t1 -c<connections> -d<seconds>s`` (paced at ``rate`` req/s if given); returns its numbers.

    ``varying``: (header name, file of values one per line, how many): each request carries
    the next value (a fresh DPoP proof), and no more requests are sent than there are values.
    Raises LoadError on any socket error, timeout or non-2xx response.
    """
    if max_requests is None:  # the count bound: 100k/s (paced: 1.2 x the rate), far above what is measured
        max_requests = int(seconds * (1.2 * rate if rate else 100_000)) + connections
    if varying is not None:
        max_requests = min(max_requests, varying[2] - connections - 1)
    script = _WRK_DONE + (
        _WRK_PACE.format(rate=rate, max_requests=max_requests)
        if rate
        else _WRK_COUNT.format(max_requests=max_requests)
    )
    if varying is not None:
        script += _WRK_VARYING.format(name=varying[0], path=varying[1])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "-s",
        handle.name,
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    try:
        done = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False)  # noqa: S603
    finally:
        Path(handle.name).unlink(missing_ok=True)
    out = done.stdout.decode("utf-8", "replace")
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise LoadError(f"wrk failed ({done.returncode}):\n{out}\n{done.stderr.decode('utf-8', 'replace')}")
    result: dict[str, Any] = json.loads(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout") if result[k]}
    if result["non_2xx"] or errors or result["requests"] <= 0:
        raise LoadError(
            f"wrk saw errors {errors}, {result['non_2xx']} non-2xx of {result['requests']}:\n{out}"
        )
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


# h2load (gRPC) -------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def run_h2load(
    port: int,
    body: Path,
    *,
    seconds: float,
    clients: int = 32,
    streams: int = 2,
    rps_cap: int = 25_000,
) -> dict[str, Any]:
    """POST ``body`` (a gRPC frame) to Check with h2load for ``seconds``; returns its numbers.

    h2load checks the HTTP status only; the gRPC status is in the trailers, so
    callers verify the decisions through the server's metrics.
    """
    command = [
        "h2load",
        "-t1",
        f"-D{seconds}",
        f"-c{clients}",
        f"-m{streams}",
        f"--rps={rps_cap}",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(body),
        f"http://127.0.0.1:{port}{CHECK_METHOD}",
    ]
    done = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False)  # noqa: S603
    out = done.stdout.decode("utf-8", "replace")
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if done.returncode != 0 or not (finished and counts and codes):
        raise LoadError(
            f"h2load failed ({done.returncode}):\n{out}\n{done.stderr.decode('utf-8', 'replace')}"
        )
    _, _, done_n, succeeded, failed, errored, timed_out = (int(x) for x in counts.groups())
    two_xx, *others = (int(x) for x in codes.groups())
    elapsed = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    result = {
        "requests": done_n,
        "succeeded": succeeded,
        "status_2xx": two_xx,
        "seconds": elapsed,
        "rps": float(finished.group(3)),
    }
    if failed or errored or timed_out or any(others) or succeeded != done_n or two_xx != done_n or not done_n:
        raise LoadError(f"h2load saw failures:\n{out}")
    return result


# a gRPC client for per-request tokens ----------------------------------------------------


@dataclass
class GrpcResult:
    sent: int = 0
    seconds: float = 0.0
    codes: dict[int, int] = field(default_factory=dict)  # CheckResponse.status.code -> count
    rpc_errors: int = 0

    @property
    def rps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


async def _run_grpc(port: int, requests: Sequence[bytes], concurrency: int, deadline_s: float) -> GrpcResult:
    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse

    result = GrpcResult()
    stop_at = time.monotonic() + deadline_s
    cursor = iter(requests)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            CHECK_METHOD, request_serializer=None, response_deserializer=CheckResponse.FromString
        )

        async def worker() -> None:
            for data in cursor:
                if time.monotonic() > stop_at:
                    return
                try:
                    response = await call(data, timeout=10.0)
                except grpc.aio.AioRpcError:
                    result.rpc_errors += 1
                    continue
                result.codes[response.status.code] = result.codes.get(response.status.code, 0) + 1
                result.sent += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def run_grpc(
    port: int, requests: Sequence[bytes], *, concurrency: int = 32, deadline_s: float = 60.0
) -> GrpcResult:
    """Send each serialized CheckRequest once (``concurrency`` in flight), until done or the deadline."""
    return asyncio.run(_run_grpc(port, requests, concurrency, deadline_s))
