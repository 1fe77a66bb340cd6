"""Envoy bootstrap for the benchmark: one Envoy, one listener per scenario.

Every listener serves ``api.acme.test`` with a ``direct_response`` route (200
"ok") after its filters, so no upstream is involved: what is measured is Envoy,
its filter and (for ext_authz) the Check round trip. Runs are sequential, so the
listeners of one Envoy (``--concurrency 1``) never compete with each other.
Each listener has its own ``stat_prefix`` (its name), so its counters verify
its own runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "HOST",
    "bootstrap",
    "ext_authz_filter",
    "ext_authz_http_filter",
    "http_cluster",
    "jwt_authn_filter",
    "listener",
]

HOST = "api.acme.test"
BODY = "ok"
_T = "type.googleapis.com/"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def ext_authz_filter(cluster: str) -> dict[str, Any]:
    """ext_authz over gRPC to ``cluster``, failing closed, sending what deploy/envoy renders for the
    gRPC door: the peer certificate and the raw header_map (encode_raw_headers)."""
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s"},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "include_peer_certificate": True,
            "encode_raw_headers": True,
        },
    }


HTTP_PREFIX = "/ext-authz"


def ext_authz_http_filter(cluster: str, port: int) -> dict[str, Any]:
    """ext_authz over HTTP (the HTTP door) to ``cluster``, failing closed, as deploy/envoy renders it."""
    exact = lambda names: {"patterns": [{"exact": n} for n in names]}  # noqa: E731
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "http_service": {
                "server_uri": {"uri": f"http://127.0.0.1:{port}", "cluster": cluster, "timeout": "5s"},
                "path_prefix": HTTP_PREFIX,
                "authorization_response": {
                    "allowed_upstream_headers": exact(
                        ["x-authz-tenant", "x-authz-subject", "x-authz-scopes"]
                    ),
                    "allowed_client_headers": exact(["www-authenticate", "content-type", "cache-control"]),
                },
            },
            # dpop and x-forwarded-proto: sender-constrained tokens, as deploy/envoy renders them.
            "allowed_headers": exact(
                ["authorization", "x-request-id", "traceparent", "tracestate", "dpop", "x-forwarded-proto"]
            ),
            "failure_mode_allow": False,
        },
    }


def http_cluster(name: str, port: int) -> dict[str, Any]:
    """An HTTP/1.1 cluster to 127.0.0.1:``port`` (keep-alive; Envoy pools connections)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }


def jwt_authn_filter(issuer: str, audience: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """Envoy's native JWT check: RS256 against an inline JWKS, on every request (no JWT cache)."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "bench": {
                    "issuer": issuer,
                    "audiences": [audience],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "forward": True,
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def listener(name: str, filters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A listener on 127.0.0.1:0: ``filters``, then the router answering 200 "ok" directly."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": BODY}}}
    hcm = {
        "@type": _T + _HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": [HOST, HOST + ":*"], "routes": [route]}],
        },
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": name,
        "address": _address(0),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def grpc_cluster(name: str, port: int, *, max_concurrent_streams: int | None = None) -> dict[str, Any]:
    """An HTTP/2 cluster to 127.0.0.1:``port``; a stream limit makes Envoy open more connections."""
    http2: dict[str, Any] = {}
    if max_concurrent_streams:
        http2["max_concurrent_streams"] = max_concurrent_streams
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
        "typed_extension_protocol_options": {
            _PROTOCOL_OPTIONS: {
                "@type": _T + _PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        },
    }


def bootstrap(
    listeners: Sequence[Mapping[str, Any]], clusters: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "admin": {"address": _address(0)},
        "static_resources": {"listeners": list(listeners), "clusters": list(clusters)},
    }
