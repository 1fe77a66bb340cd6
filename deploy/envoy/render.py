#!/usr/bin/env python3
"""The one source of every Envoy configuration in this repository.

Each variant is this configuration with a few parameters: where Envoy listens,
its admin address, where authz is and which of its doors Envoy calls (gRPC:
the ext_authz gRPC protocol; http: Envoy's HTTP ext_authz protocol,
``http_service``), where the upstream is (none: a direct response that echoes
the identity headers, for the quick start) and where the OTLP collector is
(none: no tracing).

    python deploy/envoy/render.py            # rewrite every committed variant
    python deploy/envoy/render.py --check    # exit 1 if a committed file is stale
    python deploy/envoy/render.py --listen 127.0.0.1:10080 --admin 127.0.0.1:10081 \\
        --authz 127.0.0.1:10091 --upstream 127.0.0.1:10093 --output envoy.yaml
    python deploy/envoy/render.py --door http --listen 127.0.0.1:10001 --admin 127.0.0.1:9902 \\
        --authz 127.0.0.1:9003
    python deploy/envoy/render.py --listen 0.0.0.0:8443 --authz 127.0.0.1:9001 \\
        --downstream-cert server.pem --downstream-key server-key.pem --client-ca clients.pem
        # an mTLS listener for certificate-bound tokens (RFC 8705)

The committed variants are listed in VARIANTS; tests/deploy/test_deploy.py fails when a
committed file differs from what this script renders, and validates each with
``envoy --mode validate``. Only the standard library and PyYAML are needed.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALLOW_CLIENT_HEADERS",
    "DENY_HEADERS",
    "DOORS",
    "EDGE_REMOVED_HEADERS",
    "EDGE_REMOVED_PREFIXES",
    "HEALTH_PATH",
    "HTTP_CHECK_HEADERS",
    "HTTP_PATH_PREFIX",
    "IDENTITY_HEADERS",
    "IDENTITY_SPELLINGS_REGEX",
    "MAX_HEADERS_COUNT",
    "MAX_REQUEST_HEADERS_KB",
    "METHOD_OVERRIDE_HEADERS",
    "TENANTS",
    "TRACE_CONTEXT_HEADERS",
    "UNDERSCORE_HEADERS_ACTION",
    "VARIANTS",
    "DownstreamTls",
    "Params",
    "Variant",
    "render",
    "render_text",
]

DEPLOY = Path(__file__).resolve().parent.parent
NAMESPACE = "jwe-authz"  # the Kubernetes namespace of deploy/kubernetes (base/kustomization.yaml)
CLUSTER_DOMAIN = "svc.cluster.local"

HEALTH_PATH = "/envoy-health"  # answered by Envoy itself, ext_authz disabled: probes need no token
AUTHZ_TIMEOUT = "1s"  # one Check; authz answers in about a millisecond
ROUTE_TIMEOUT = "15s"

DOORS = ("grpc", "http")  # authz's two front doors: the ext_authz gRPC service, or its HTTP protocol
# The HTTP door (authz serve --http-listen; config http:). Envoy prefixes the original
# path with this and authz strips it (authz config http.path_prefix: the same value).
HTTP_PATH_PREFIX = "/ext-authz"
# Headers with which frameworks replace a POST's method (Rails' Rack::MethodOverride, Symfony
# and Laravel, Express method-override, ASP.NET Core): removed at the edge (EDGE_REMOVED_HEADERS)
# and, should another proxy keep them, refused by authz when they name another method
# (method_override; authz.core.request.METHOD_OVERRIDE_HEADERS, a test holds them equal).
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
# The client headers Envoy passes to the HTTP door (method, path and host always go):
# the token, the request id for the deny body and the logs, the trace context (Envoy's
# own, when it traces: the client's is removed at the edge) and method overrides; for
# sender-constrained tokens the DPoP proof, the scheme a proof's htu names (Envoy sets
# x-forwarded-proto itself: use_remote_address) and the client certificate's hash in
# x-forwarded-client-cert (Envoy removes a client's, and sets its own on an mTLS
# listener: forward_client_cert_details).
HTTP_CHECK_HEADERS = (
    "authorization",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    *METHOD_OVERRIDE_HEADERS,
    "dpop",
    "x-forwarded-proto",
    "x-forwarded-client-cert",
)
HTTP_CHECK_HEADER_PREFIXES = ("x-b3-",)
# Copied from an allow to the upstream request, overwriting the client's copies (authz
# lists the ones it does not set in x-envoy-auth-headers-to-remove: Envoy drops them).
IDENTITY_HEADERS = ("x-authz-tenant", "x-authz-subject", "x-authz-scopes")
# Every other spelling of an identity header (x_authz_subject, x-authz.scopes; Envoy's names
# are lower case) also goes to the HTTP door: an upstream that follows CGI reads it as ours,
# so authz names it in the answer's x-envoy-auth-headers-to-remove. Envoy drops those with
# underscores itself first (UNDERSCORE_HEADERS_ACTION); this covers the others, and the
# underscores when that setting is changed. The client's dashed copies stay out of the check.
IDENTITY_SPELLINGS_REGEX = "x(-authz[^a-z0-9-]|[^a-z0-9-]authz[^a-z0-9])({})".format(
    "|".join(name.removeprefix("x-authz-") for name in IDENTITY_HEADERS)
)
# Passed from a deny to the client, with its JSON body (dpop-nonce: RFC 9449 9, a server
# nonce for the client's next proof).
DENY_HEADERS = ("www-authenticate", "content-type", "cache-control", "dpop-nonce")
# Passed from an allow to the client's response: a fresh DPoP nonce, never cached (authz sets
# cache-control only beside it). Envoy appends them (an upstream's cache-control stays).
ALLOW_CLIENT_HEADERS = ("dpop-nonce", "cache-control")
# Envoy retires its HTTP/1.1 connections to the door before authz would close them
# (authz config http: max_requests_per_connection 10000, idle_timeout 60 s): a
# connection the server closes while Envoy sends a check on it fails that check.
HTTP_MAX_REQUESTS_PER_CONNECTION = 1000
HTTP_IDLE_TIMEOUT = "30s"

# What Envoy does with a client header whose name has an underscore. Upstreams that
# follow CGI/WSGI (Python's wsgiref, PHP, many frameworks) read x_authz_subject and
# x-authz-subject as one key (HTTP_X_AUTHZ_SUBJECT): a forged underscore copy would
# travel beside authz's value. DROP_HEADER removes such headers before any filter, so
# neither authz nor the upstream sees them, and clients that send harmless ones (SDK
# baggage, CDN headers) keep working; Envoy counts each in
# http1/http2.dropped_headers_with_underscores. REJECT_REQUEST (Envoy's edge
# recommendation) would answer those clients 400 (HTTP/2: a stream reset) instead.
UNDERSCORE_HEADERS_ACTION = "DROP_HEADER"

# Client headers removed at the edge, before routing, any filter and Envoy's own
# x-forwarded-for (early_header_mutation_extensions): authz decides on the method, Host and
# path of the request line, and an upstream that honours one of these would run another
# request than the one decided. Envoy is the edge (use_remote_address): what the client
# claims about itself or about proxies in front of it is not true here.
EDGE_REMOVED_HEADERS = (
    # Another method (see METHOD_OVERRIDE_HEADERS).
    *METHOD_OVERRIDE_HEADERS,
    # Another host: Rack (Rails) prefers X-Forwarded-Host and Forwarded host= without any
    # trust setting; Django, Spring, Express read them when told to trust proxies.
    "x-forwarded-host",
    "forwarded",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
    # Another path (IIS-era rewrites read by older Symfony, Zend/Laminas; prefix headers).
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    # Another client address, port or scheme: Envoy then sets x-forwarded-for to the peer
    # alone (and x-forwarded-proto from the connection), never after a client's own list.
    "x-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    # x-client-trace-id forces Envoy to sample (and marks the request id).
    "x-client-trace-id",
    # The client's trace context (TRACE_CONTEXT_HEADERS, below).
)
EDGE_REMOVED_PREFIXES = ("x-b3-",)  # B3's multi-header form, with the trace context
# The client's trace context: the trace id joins Envoy's access log, authz's decision log
# and the traces, like the request id Envoy makes itself. A client would otherwise choose it
# (Envoy continues a traceparent; authz reads traceparent and b3 when Envoy does not trace).
# Removed at the edge with EDGE_REMOVED_HEADERS, unless Params.trusted_trace_context says that
# whoever reaches this Envoy is a trusted front proxy that owns the trace (docs/deployment/envoy.md: Traces).
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate", "b3")
# Envoy's bounds on a client's request headers, explicit because authz's HTTP door must
# accept whatever they let through (its http.max_header_bytes 64 KiB and max_headers 128
# cover these plus the few headers Envoy adds to a check; a test holds them so).
MAX_REQUEST_HEADERS_KB = 60  # request line (its target) and headers, as Envoy counts them
MAX_HEADERS_COUNT = 100

# Tenant -> Envoy domains. The per-route context_extensions name the tenant, so a
# request on these hosts is checked against that tenant's policy whatever else
# it carries. Any other host falls to the "*" virtual host, where authz picks
# the tenant from the Host (the only way under Istio: docs/deployment/istio.md).
TENANTS: dict[str, list[str]] = {
    "acme": ["api.acme.test", "*.acme.test"],
    "globex": ["api.globex.test"],
}

_T = "type.googleapis.com/"
_DOWNSTREAM_CONNECTIONS = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_EXT_AUTHZ = "envoy.filters.http.ext_authz"


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """An mTLS listener: clients present a certificate (certificate-bound tokens, RFC 8705).

    ``client_ca``: the CA bundle client certificates must chain to; None accepts any
    certificate (RFC 8705 2.2, self-signed: the token's cnf is then the only check, which is
    what proof of possession needs). Either way a connection without one is refused.
    """

    cert: str  # server certificate chain (PEM file)
    key: str  # its private key (PEM file)
    client_ca: str | None = None


@dataclass(frozen=True, slots=True)
class Params:
    """The parameters of one rendering: ``host:port`` addresses."""

    listen: str
    admin: str
    authz: str
    upstream: str | None = None  # None: direct response echoing x-authz-* (quick start)
    otlp: str | None = None  # None: no tracing
    door: str = "grpc"  # which authz door Envoy calls: "grpc" or "http" (DOORS)
    # http door: authz's admin port on the same hosts; given, Envoy health-checks its
    # /readyz (the HTTP door has no health endpoint of its own). gRPC: grpc.health.v1.
    authz_admin_port: int | None = None
    # True: keep the trace context a request arrives with (TRACE_CONTEXT_HEADERS, x-b3-*),
    # for an Envoy that only a trusted front proxy reaches; that proxy then owns the trace
    # id. Never for an Envoy clients reach directly: they would choose the trace id.
    trusted_trace_context: bool = False
    # An mTLS listener (certificate-bound tokens); None: plaintext, as the quick start's.
    downstream_tls: DownstreamTls | None = None


@dataclass(frozen=True, slots=True)
class Variant:
    """A committed rendering: where it goes, its parameters and a header comment."""

    path: Path
    params: Params
    about: str


VARIANTS: tuple[Variant, ...] = (
    Variant(
        DEPLOY / "envoy" / "demo.yaml",
        Params(listen="127.0.0.1:10000", admin="127.0.0.1:9901", authz="127.0.0.1:9001"),
        "Envoy in front of the demo (README, quick start): `make run` serves authz on\n"
        "127.0.0.1:9001; then\n"
        "  envoy -c deploy/envoy/demo.yaml --concurrency 1 --disable-hot-restart\n"
        "listens on 127.0.0.1:10000. For the demo the upstream is Envoy itself: an\n"
        "allowed request gets a direct response that echoes the identity headers that\n"
        "authz set (x-authz-*) back to the client, so you can see them with curl -i.",
    ),
    Variant(
        DEPLOY / "kubernetes" / "overlays" / "sidecar" / "envoy.yaml",
        Params(
            listen="0.0.0.0:8080",
            admin="127.0.0.1:9901",
            authz="127.0.0.1:9001",
            upstream=f"echo.{NAMESPACE}.{CLUSTER_DOMAIN}:80",
            otlp=f"jaeger.{NAMESPACE}.{CLUSTER_DOMAIN}:4317",
        ),
        "Kubernetes, sidecar overlay: authz runs in the same pod, Envoy calls it on\n"
        "127.0.0.1:9001 (a STATIC cluster of one host).",
    ),
    Variant(
        DEPLOY / "kubernetes" / "overlays" / "standalone" / "envoy.yaml",
        Params(
            listen="0.0.0.0:8080",
            admin="127.0.0.1:9901",
            authz=f"authz-headless.{NAMESPACE}.{CLUSTER_DOMAIN}:9001",
            upstream=f"echo.{NAMESPACE}.{CLUSTER_DOMAIN}:80",
            otlp=f"jaeger.{NAMESPACE}.{CLUSTER_DOMAIN}:4317",
        ),
        "Kubernetes, standalone overlay: authz is its own Deployment. Envoy resolves\n"
        "the headless Service authz-headless (STRICT_DNS: one upstream host per ready\n"
        "authz pod IP) instead of the ClusterIP Service: a long-lived HTTP/2\n"
        "connection through a ClusterIP is balanced once, when it opens, so all\n"
        "checks of an Envoy would stick to one authz pod.",
    ),
    Variant(
        DEPLOY / "envoy" / "demo-http.yaml",
        Params(
            listen="127.0.0.1:10001",
            admin="127.0.0.1:9902",
            authz="127.0.0.1:9003",
            door="http",
        ),
        "Like demo.yaml, through authz's HTTP door (Envoy's http_service) instead of\n"
        "gRPC (docs/deployment/which-door.md). Serve the demo with the door on (the\n"
        f"demo config already has its path prefix, {HTTP_PATH_PREFIX}):\n"
        "  .venv/bin/authz serve --config .demo/config.yaml --http-listen 127.0.0.1:9003\n"
        "then\n"
        "  envoy -c deploy/envoy/demo-http.yaml --concurrency 1 --disable-hot-restart\n"
        "listens on 127.0.0.1:10001, with the same echoing direct response as demo.yaml.",
    ),
    Variant(
        DEPLOY / "kubernetes" / "overlays" / "standalone-http" / "envoy.yaml",
        Params(
            listen="0.0.0.0:8080",
            admin="127.0.0.1:9901",
            authz=f"authz-headless.{NAMESPACE}.{CLUSTER_DOMAIN}:9003",
            upstream=f"echo.{NAMESPACE}.{CLUSTER_DOMAIN}:80",
            otlp=f"jaeger.{NAMESPACE}.{CLUSTER_DOMAIN}:4317",
            door="http",
            authz_admin_port=9002,
        ),
        "Kubernetes, standalone-http overlay: the standalone overlay with Envoy calling\n"
        "authz's HTTP door (9003) instead of gRPC. HTTP/1.1 carries one check at a time\n"
        "per connection, so Envoy keeps a pool of keep-alive connections per authz pod\n"
        "(STRICT_DNS over authz-headless: one upstream host per ready pod) and retires\n"
        "them before authz would; it health-checks each pod's /readyz on its admin\n"
        "port 9002.",
    ),
)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        msg = f"not host:port: {address!r}"
        raise ValueError(msg)
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(address: str) -> dict[str, Any]:
    host, port = _split(address)
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, address: str, *, http2: bool) -> dict[str, Any]:
    """A cluster of the hosts behind ``address``: STATIC for an IP, else STRICT_DNS.

    STRICT_DNS keeps every address the name resolves to as its own upstream host
    (a headless Service resolves to every ready pod IP), each with its own
    connection pool, so load spreads over pods instead of riding one connection.
    """
    host, _ = _split(address)
    cluster: dict[str, Any] = {"name": name, "connect_timeout": "1s"}
    if _is_ip(host):
        cluster["type"] = "STATIC"
    else:
        cluster["type"] = "STRICT_DNS"
        # Re-resolved every 5 s (Envoy's default refresh): new and removed pods are seen within seconds.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(address)}}]}],
    }
    return cluster


def _authz_cluster(address: str) -> dict[str, Any]:
    """The ext_authz cluster, tuned so that checks spread over every authz pod and process.

    Envoy opens ONE HTTP/2 connection per upstream host (per worker thread) and
    multiplexes every Check on it, so without limits a busy Envoy pins all of its
    checks to one connection, i.e. one authz process, however many there are:
    - STRICT_DNS over a headless Service (see _cluster) makes each pod a host;
    - max_concurrent_streams: 100 makes Envoy open another connection to the same
      host once 100 checks are in flight on one (another accept, possibly another
      process behind an SO_REUSEPORT listener, and bounded per-connection queues);
    - max_requests_per_connection: 1000 retires connections regularly, so new
      pods and processes get connections without waiting for a restart;
    - LEAST_REQUEST prefers the host with the fewest checks in flight;
    - an active gRPC health check (grpc.health.v1, what authz serves) takes a pod
      out as soon as it reports NOT_SERVING (draining on SIGTERM), before the DNS
      refresh does.
    """
    cluster = _cluster("authz", address, http2=True)
    cluster["lb_policy"] = "LEAST_REQUEST"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    options["common_http_protocol_options"] = {"max_requests_per_connection": 1000, "idle_timeout": "300s"}
    options["explicit_http_config"]["http2_protocol_options"] = {
        "max_concurrent_streams": 100,
        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
    }
    cluster["circuit_breakers"] = {
        "thresholds": [{"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 4096}]
    }
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "5s",
            "no_traffic_interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
    # The dict order above keeps load_assignment last, where readers look for it.
    cluster["load_assignment"] = cluster.pop("load_assignment")
    return cluster


def _authz_http_cluster(address: str, admin_port: int | None) -> dict[str, Any]:
    """The cluster of authz's HTTP door: HTTP/1.1, a pool of keep-alive connections per pod.

    HTTP/1.1 carries one check at a time per connection, so Envoy opens as many
    connections to a host as it has checks in flight there (bounded by the
    circuit breakers) and reuses them (keep-alive):
    - STRICT_DNS over a headless Service (see _cluster) makes each pod a host, and
      LEAST_REQUEST prefers the one with the fewest checks in flight;
    - max_requests_per_connection and idle_timeout retire connections BEFORE authz
      would close them (its http.max_requests_per_connection, http.idle_timeout):
      a connection that the server closes just as Envoy sends a check on it fails
      that check; retiring also lets new pods and processes get connections;
    - TCP keepalive finds connections to pods that vanished without a FIN;
    - with ``admin_port``, an active HTTP health check of authz's /readyz on that
      port takes a pod out while it starts or drains (the door has no health
      endpoint: every path on it is a check).
    """
    cluster = _cluster("authz", address, http2=False)
    cluster["lb_policy"] = "LEAST_REQUEST"
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {
                "max_requests_per_connection": HTTP_MAX_REQUESTS_PER_CONNECTION,
                "idle_timeout": HTTP_IDLE_TIMEOUT,
            },
        }
    }
    cluster["upstream_connection_options"] = {
        "tcp_keepalive": {"keepalive_time": 30, "keepalive_interval": 5, "keepalive_probes": 3}
    }
    # One check per connection: connections, not requests, bound the concurrency.
    cluster["circuit_breakers"] = {
        "thresholds": [{"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024}]
    }
    if admin_port is not None:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "5s",
                "no_traffic_interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/readyz"},
            }
        ]
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["health_check_config"] = {"port_value": admin_port}
    cluster["load_assignment"] = cluster.pop("load_assignment")
    return cluster


def _per_route(config: dict[str, Any]) -> dict[str, Any]:
    return {
        _EXT_AUTHZ: {"@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute", **config}
    }


def _routes(tenant: str | None, params: Params) -> list[dict[str, Any]]:
    health = {
        "name": "envoy-health",
        "match": {"path": HEALTH_PATH},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        # Probes and load balancer health checks carry no token: no Check for them.
        "typed_per_filter_config": _per_route({"disabled": True}),
    }
    protected: dict[str, Any] = {"name": tenant or "by-host", "match": {"prefix": "/"}}
    if params.upstream is None:
        protected["direct_response"] = {"status": 200, "body": {"inline_string": "hello from the upstream\n"}}
        protected["response_headers_to_add"] = [
            {"header": {"key": f"x-seen-{name}", "value": f"%REQ(x-authz-{name})%"}}
            for name in ("tenant", "subject", "scopes")
        ]
    else:
        protected["route"] = {"cluster": "upstream", "timeout": ROUTE_TIMEOUT}
    if tenant is not None:
        # The tenant travels with the route, not with anything the client sends.
        protected["typed_per_filter_config"] = _per_route(
            {"check_settings": {"context_extensions": {"tenant": tenant}}}
        )
    return [health, protected]


def _access_log(door: str) -> list[dict[str, Any]]:
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "authority": "%REQ(:AUTHORITY)%",
        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",  # no query: it may carry secrets
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_HOST%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "trace_id": "%TRACE_ID%",
        "traceparent": "%REQ(TRACEPARENT)%",
    }
    if door == "grpc":
        # Dynamic metadata that authz returns with its decision (docs/concepts/decision.md,
        # step 10). The HTTP protocol has none: join authz's decision log on request_id.
        fields |= {
            f"authz_{key}": f"%DYNAMIC_METADATA({_EXT_AUTHZ}:{key})%"
            for key in ("decision", "reason", "tenant", "rule")
        }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _T + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "json_format": fields,
                    "formatters": [
                        {
                            "name": "envoy.formatter.req_without_query",
                            "typed_config": {
                                "@type": _T
                                + "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                            },
                        }
                    ],
                },
            },
        }
    ]


def _matcher(
    names: tuple[str, ...], prefixes: tuple[str, ...] = (), regexes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A ListStringMatcher: exact names, prefixes and (RE2, whole-name) regexes."""
    return {
        "patterns": [{"exact": n} for n in names]
        + [{"prefix": p} for p in prefixes]
        + [{"safe_regex": {"regex": r}} for r in regexes]
    }


def _ext_authz(params: Params) -> dict[str, Any]:
    """The ext_authz filter: fail closed, a timeout, no body; gRPC or HTTP service."""
    if params.door == "grpc":
        return {
            "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": AUTHZ_TIMEOUT},
            "failure_mode_allow": False,  # fail closed: authz unreachable or slow is a deny
            "status_on_error": {"code": "ServiceUnavailable"},  # ...a 503, not a misleading 403
            "include_peer_certificate": True,  # certificate-bound tokens: the client's certificate
            "encode_raw_headers": True,  # header_map with raw bytes: no lossy UTF-8 or joining
            # with_request_body is not set: the body is never buffered nor sent to authz.
        }
    return {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "http_service": {
            # The uri names the door for humans; Envoy sends to the cluster, with the
            # client's Host (authz picks the tenant from it).
            "server_uri": {"uri": f"http://{params.authz}", "cluster": "authz", "timeout": AUTHZ_TIMEOUT},
            "path_prefix": HTTP_PATH_PREFIX,
            "authorization_response": {
                "allowed_upstream_headers": _matcher(IDENTITY_HEADERS),
                "allowed_client_headers": _matcher(DENY_HEADERS),
                "allowed_client_headers_on_success": _matcher(ALLOW_CLIENT_HEADERS),
            },
            # A check is idempotent: one more try, on another pod, when a connection
            # fails or is reset (an HTTP/1.1 connection closed by authz as Envoy used it).
            "retry_policy": {
                "retry_on": "connect-failure,reset",
                "num_retries": 1,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": _T
                            + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": 3,
            },
        },
        "allowed_headers": _matcher(
            HTTP_CHECK_HEADERS, HTTP_CHECK_HEADER_PREFIXES, (IDENTITY_SPELLINGS_REGEX,)
        ),
        "failure_mode_allow": False,  # fail closed: authz unreachable, slow or 5xx is a deny
        "status_on_error": {"code": "ServiceUnavailable"},  # ...a 503, not a misleading 403
        # with_request_body is not set: the body is never buffered nor sent to authz.
    }


def _edge_removals(*, trusted_trace_context: bool = False) -> dict[str, Any]:
    """The early header mutation that removes EDGE_REMOVED_HEADERS, the trace context (unless
    trusted) and EDGE_REMOVED_PREFIXES (x-b3-*, also trace context) from every request."""
    names = EDGE_REMOVED_HEADERS + (() if trusted_trace_context else TRACE_CONTEXT_HEADERS)
    prefixes = () if trusted_trace_context else EDGE_REMOVED_PREFIXES
    mutations: list[dict[str, Any]] = [{"remove": name} for name in names]
    mutations += [{"remove_on_match": {"key_matcher": {"prefix": p}}} for p in prefixes]
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": _T + "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": mutations,
        },
    }


def render(params: Params) -> dict[str, Any]:
    """Return the Envoy v3 bootstrap for ``params``."""
    if params.door not in DOORS:
        msg = f"door must be one of {DOORS}: {params.door!r}"
        raise ValueError(msg)
    # The HTTP protocol carries no context_extensions: authz picks the tenant from the
    # Host, so per-tenant virtual hosts would only repeat the "*" one.
    tenants = TENANTS if params.door == "grpc" else {}
    vhosts = [
        {"name": tenant, "domains": domains, "routes": _routes(tenant, params)}
        for tenant, domains in tenants.items()
    ]
    vhosts.append({"name": "by-host", "domains": ["*"], "routes": _routes(None, params)})
    ext_authz = _ext_authz(params)
    hcm: dict[str, Any] = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        # Match what authz matches: decode unreserved escapes, remove dot segments, merge slashes.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "strip_any_host_port": True,
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "common_http_protocol_options": {
            "headers_with_underscores_action": UNDERSCORE_HEADERS_ACTION,
            "max_headers_count": MAX_HEADERS_COUNT,
        },
        "early_header_mutation_extensions": [
            _edge_removals(trusted_trace_context=params.trusted_trace_context)
        ],
        # This Envoy is the edge: the client is the TCP peer, and no peer is "internal"
        # (Envoy >= 1.33 trusts no address without internal_address_config; careful: one
        # without cidr_ranges falls back to RFC 1918 and loopback). So every request is an
        # external one: Envoy replaces a client's x-request-id with its own (the id that
        # joins Envoy's and authz's logs is Envoy's) and ignores x-envoy-* control headers
        # a client sends. Behind a trusted proxy, see docs/deployment/envoy.md: Request ids.
        "use_remote_address": True,
        "preserve_external_request_id": False,
        # A client's x-forwarded-client-cert never passes (authz's HTTP door reads the client
        # certificate's hash from it); on the mTLS listener Envoy sets its own, with Hash=.
        "forward_client_cert_details": "SANITIZE" if params.downstream_tls is None else "SANITIZE_SET",
        # The scheme is this listener's, never the client's: over HTTP/2 a client sends its own
        # :scheme, which Envoy would otherwise keep and pass on as the request's (the gRPC door's
        # attributes.request.http.scheme), so a DPoP proof's htu could name https on plaintext.
        # Behind a proxy that ends TLS, the public scheme is the tenant's origins'.
        "scheme_header_transformation": {
            "scheme_to_overwrite": "http" if params.downstream_tls is None else "https"
        },
        "access_log": _access_log(params.door),
    }
    if params.otlp is not None:
        hcm["tracing"] = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": _T + "envoy.config.trace.v3.OpenTelemetryConfig",
                    "service_name": "envoy",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "opentelemetry_collector"},
                        "timeout": "1s",
                    },
                },
            }
        }
    hcm["route_config"] = {"name": "ingress", "virtual_hosts": vhosts}
    hcm["http_filters"] = [
        {"name": _EXT_AUTHZ, "typed_config": ext_authz},
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
        },
    ]
    clusters = [  # first: tests and the quick start look here
        _authz_cluster(params.authz)
        if params.door == "grpc"
        else _authz_http_cluster(params.authz, params.authz_admin_port)
    ]
    if params.upstream is not None:
        clusters.append(_cluster("upstream", params.upstream, http2=False))
    if params.otlp is not None:
        clusters.append(_cluster("opentelemetry_collector", params.otlp, http2=True))
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if params.downstream_tls is not None:
        chain = {"transport_socket": _downstream_tls(params.downstream_tls), **chain}
    return {
        "static_resources": {
            "listeners": [{"name": "ingress", "address": _socket(params.listen), "filter_chains": [chain]}],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _T + _DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
        "admin": {"address": _socket(params.admin)},
    }


def _downstream_tls(tls: DownstreamTls) -> dict[str, Any]:
    """The listener's TLS: a client certificate required, verified against ``client_ca`` or, without
    one, accepted untrusted (RFC 8705 2.2: the token's cnf names the very certificate)."""
    if tls.client_ca is not None:
        validation: dict[str, Any] = {"trusted_ca": {"filename": tls.client_ca}}
    else:
        validation = {"trust_chain_verification": "ACCEPT_UNTRUSTED"}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificates": [
                    {"certificate_chain": {"filename": tls.cert}, "private_key": {"filename": tls.key}}
                ],
                "validation_context": validation,
            },
        },
    }


def render_text(params: Params, about: str = "") -> str:
    """Return the YAML text of the rendering, with a header comment."""
    header = [
        "GENERATED by deploy/envoy/render.py (the one source of every Envoy config): do not edit.",
        "Regenerate with `python deploy/envoy/render.py`; tests/deploy/test_deploy.py fails when stale.",
        "",
        *about.splitlines(),
    ]
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header)
    body = yaml.safe_dump(render(params), sort_keys=False, default_flow_style=False, width=120)
    return comment + body


def stale() -> list[Path]:
    """Return the committed variants whose file differs from their rendering."""
    return [
        v.path
        for v in VARIANTS
        if not v.path.is_file() or v.path.read_text(encoding="utf-8") != render_text(v.params, v.about)
    ]


def main(argv: list[str] | None = None) -> int:
    """Command line: render all committed variants, check them, or render one to a file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed rendering is stale")
    parser.add_argument("--listen", help="render one configuration: listener host:port")
    parser.add_argument("--admin", default="127.0.0.1:9901")
    parser.add_argument("--authz", default="127.0.0.1:9001")
    parser.add_argument("--upstream", default=None, help="host:port; omitted: direct response")
    parser.add_argument("--otlp", default=None, help="OTLP/gRPC collector host:port; omitted: no tracing")
    parser.add_argument("--door", choices=DOORS, default="grpc", help="which authz door --authz is")
    parser.add_argument("--authz-admin-port", type=int, default=None, help="http door: health-check /readyz")
    parser.add_argument(
        "--trusted-trace-context",
        action="store_true",
        help="keep the trace context requests arrive with (only a trusted front proxy reaches this Envoy)",
    )
    parser.add_argument("--downstream-cert", help="an mTLS listener: its certificate chain (PEM file)")
    parser.add_argument("--downstream-key", help="an mTLS listener: its private key (PEM file)")
    parser.add_argument(
        "--client-ca", help="an mTLS listener: the clients' CA bundle; omitted: any client certificate"
    )
    parser.add_argument("--output", type=Path, help="file for --listen (default: stdout)")
    args = parser.parse_args(argv)
    if args.listen:
        tls = None
        if args.downstream_cert or args.downstream_key or args.client_ca:
            if not (args.downstream_cert and args.downstream_key):
                parser.error("an mTLS listener needs --downstream-cert and --downstream-key")
            tls = DownstreamTls(args.downstream_cert, args.downstream_key, args.client_ca)
        params = Params(
            args.listen,
            args.admin,
            args.authz,
            args.upstream or None,
            args.otlp or None,
            door=args.door,
            authz_admin_port=args.authz_admin_port,
            trusted_trace_context=args.trusted_trace_context,
            downstream_tls=tls,
        )
        text = render_text(params, f"Rendered with {params}.")
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        return 0
    if args.check:
        for path in stale():
            print(
                f"stale: {path.relative_to(DEPLOY.parent)} (run python deploy/envoy/render.py)",
                file=sys.stderr,
            )
        return 1 if stale() else 0
    for variant in VARIANTS:
        variant.path.write_text(render_text(variant.params, variant.about), encoding="utf-8")
        print(f"wrote {variant.path.relative_to(DEPLOY.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
