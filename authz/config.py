"""Configuration file (YAML) -> validated, immutable snapshot.

Everything a request needs is derived here, once: keys imported, path rules
compiled, host and tenant indexes built, defaults filled. Unknown keys are
errors (a typo must not silently drop a rule), and every error names the file,
the line and the reason. Relative paths resolve against the file's folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from authz.cache import TokenCache
from authz.claims import ClaimRules
from authz.errors import ConfigError
from authz.jose.keys import CONTENT_ENCRYPTION_ALGS, IssuerKeys, KeySet, Purpose, parse_keyset
from authz.jose.nested import TokenKeys
from authz.jwks import JwksRegistry, JwksSettings, RemoteJwks
from authz.policy import Mode, Rule, Tenant, TenantIndex, compile_path

__all__ = [
    "Config",
    "HttpSettings",
    "RequestSettings",
    "ServerSettings",
    "TelemetrySettings",
    "TlsSettings",
    "UpstreamSettings",
    "load_config",
]

DEFAULT_CONTENT_ENCRYPTION = ("A256GCM", "A128GCM", "A256CBC-HS512", "A128CBC-HS256")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """How requests are read, the same for both doors."""

    # A path segment may carry parameters (";..."): they are removed before matching,
    # as Servlet containers remove them. False (the default): path_invalid.
    allow_path_parameters: bool


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    strip_authorization: bool


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_concurrent_checks: int
    max_message_bytes: int
    grace_seconds: float
    jwks_first_fetch_wait: float  # at load: how long to wait for a new jwks_uri's first fetch
    jwks_unknown_kid_wait: float  # on a request: how long to wait for an unknown-kid refetch


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP door (Envoy's ``http_service``); limits apply from start-up, the prefix per snapshot."""

    path_prefix: str  # Envoy's http_service path_prefix, stripped before matching
    max_header_bytes: int  # request line and headers together
    max_headers: int
    max_body_bytes: int  # Envoy sends no body unless with_request_body is on; we read none
    header_timeout: float  # seconds for one request's line and headers to arrive
    idle_timeout: float  # seconds a keep-alive connection may wait for its next request
    max_requests_per_connection: int
    max_connections: int
    memo_size: int  # allows kept per snapshot to answer identical repeats; 0: every check decided


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS on the gRPC listener: PEM bytes as read for this snapshot (a reload rotates them)."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)  # set: client certificates are required (mTLS)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    log_subject: bool  # the subject id in spans and decision log lines
    allow_log_sample_rate: float  # fraction of allow decisions logged; denies always are


@dataclass(frozen=True, slots=True)
class Config:
    """One immutable snapshot of the configuration and everything derived from it."""

    source: str
    digest: str  # sha256 over the config file and every key file it references
    files: tuple[str, ...]
    listen: str | None
    admin_listen: str | None  # /metrics, /healthz, /readyz; None: no admin port
    http_listen: str | None  # the HTTP door; None: gRPC only
    tls: TlsSettings | None  # None: plaintext gRPC (a sidecar on localhost, or a mesh's mTLS)
    http: HttpSettings
    request: RequestSettings
    claim_rules: ClaimRules
    token_keys: TokenKeys
    tenants: TenantIndex
    upstream: UpstreamSettings
    server: ServerSettings
    remote_jwks: tuple[RemoteJwks, ...]  # issuer keys from URLs, shared across reloads
    telemetry: TelemetrySettings
    # Verified tokens of this snapshot: a reload starts empty (see authz.cache).
    cache: TokenCache = field(compare=False, repr=False)


def load_config(path: str | Path, registry: JwksRegistry | None = None) -> Config:
    """Read, validate and build a snapshot; raises ConfigError with file and line.

    ``registry`` shares ``jwks_uri`` sources between snapshots (the server's reloads);
    without one, each load gets fresh, never-fetched sources.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    return _Builder(path, raw, registry or JwksRegistry()).build()


# -- YAML with line numbers -------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int
    lines: dict[str, int]


class _List(list[Any]):
    line: int
    lines: list[int]


def _parse_yaml(text: str, source: str) -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            source, f"YAML error: {exc.problem or exc.context}", mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"YAML error: {type(exc).__name__}") from None
    except RecursionError:
        raise ConfigError(source, "YAML error: nested too deeply") from None
    if node is None:
        raise ConfigError(source, "the file is empty")
    try:
        return _Converter(source).convert(node)
    except RecursionError:
        raise ConfigError(source, "YAML error: nested too deeply") from None


class _Converter:
    """YAML nodes -> _Map/_List/scalars. An alias is converted once (``&a`` reused by
    ``*a`` shares the value, so nested aliases cannot blow up), and an alias inside
    its own anchor is an error instead of endless recursion."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.loader = yaml.SafeLoader("")
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def convert(self, node: yaml.Node) -> Any:
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise ConfigError(self.source, "recursive YAML alias", node.start_mark.line + 1)
        self.active.add(key)
        try:
            value = self._convert(node)
        finally:
            self.active.discard(key)
        self.done[key] = value
        return value

    def _convert(self, node: yaml.Node) -> Any:
        source, line = self.source, node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            mapping = _Map()
            mapping.line, mapping.lines = line, {}
            for key_node, value_node in node.value:
                key = self.convert(key_node)
                key_line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise ConfigError(source, "mapping keys must be strings", key_line)
                if key in mapping:
                    raise ConfigError(source, f"duplicate key {key!r}", key_line)
                mapping[key] = self.convert(value_node)
                mapping.lines[key] = key_line
            return mapping
        if isinstance(node, yaml.SequenceNode):
            items = _List(self.convert(item) for item in node.value)
            items.line = line
            items.lines = [item.start_mark.line + 1 for item in node.value]
            return items
        return self._scalar(node, line)

    def _scalar(self, node: yaml.Node, line: int) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise ConfigError(self.source, "invalid scalar value", line) from None


# -- schema -----------------------------------------------------------------


class _Section:
    """Typed, line-aware reads from one mapping; unknown keys are errors."""

    def __init__(self, data: Any, source: str, where: str, line: int | None) -> None:
        if not isinstance(data, _Map):
            raise ConfigError(source, f"{where} must be a mapping", line)
        self.data, self.source, self.where = data, source, where
        self.used: set[str] = set()

    def line(self, key: str | None = None) -> int:
        return self.data.lines.get(key, self.data.line) if key else self.data.line

    def error(self, key: str | None, reason: str) -> ConfigError:
        label = f"{self.where}.{key}" if key else self.where
        return ConfigError(self.source, f"{label}: {reason}", self.line(key))

    def get(self, key: str, kind: type[_T], default: _T | None = None) -> _T:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(None, f"missing required key {key!r}")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise self.error(key, f"must be {_kind_name(kind)}")
        return value  # type: ignore[no-any-return]

    def strings(self, key: str, *, required: bool = True) -> list[str]:
        value = self.get(key, list, None if required else _List())
        if required and not value:
            raise self.error(key, "must not be empty")
        if not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "must be a list of non-empty strings")
        return list(value)

    def section(self, key: str) -> _Section:
        self.used.add(key)
        value = self.data.get(key, _empty_map(self.line()))
        return _Section(value, self.source, f"{self.where}.{key}", self.line(key))

    def items(self, key: str) -> Iterator[tuple[_Section, int]]:
        value = self.get(key, list)
        lines = value.lines if isinstance(value, _List) else [self.line(key)] * len(value)
        for index, (item, line) in enumerate(zip(value, lines, strict=True)):
            yield _Section(item, self.source, f"{self.where}.{key}[{index}]", line), line

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.error(key, "must be a positive integer")
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")


def _empty_map(line: int) -> _Map:
    empty = _Map()
    empty.line, empty.lines = line, {}
    return empty


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)


class _Builder:
    def __init__(self, path: Path, raw: bytes, registry: JwksRegistry) -> None:
        self.path = path
        self.source = str(path)
        self.raw = raw
        self.registry = registry
        self.files: list[Path] = [path]
        self.digest = hashlib.sha256(raw)  # over every file, as read for this snapshot
        self.remote: list[RemoteJwks] = []

    def build(self) -> Config:
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(self.source, "the file is not UTF-8") from None
        root = _Section(_parse_yaml(text, self.source), self.source, "config", 1)
        listen = root.get("listen", str, "") or None
        admin_listen = root.get("admin_listen", str, "") or None
        http_listen = root.get("http_listen", str, "") or None
        tls_settings = self._tls(root.section("tls")) if "tls" in root.data else None
        root.used.add("tls")
        http = root.section("http")
        prefix = http.get("path_prefix", str, "")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise http.error("path_prefix", "must start with / and not end with /")
        http_settings = HttpSettings(
            path_prefix=prefix,
            max_header_bytes=http.positive("max_header_bytes", 16384),
            max_headers=http.positive("max_headers", 100),
            max_body_bytes=_non_negative(http, "max_body_bytes", 65536),
            header_timeout=_seconds(http, "header_timeout", 10.0),
            idle_timeout=_seconds(http, "idle_timeout", 60.0),
            max_requests_per_connection=http.positive("max_requests_per_connection", 10000),
            max_connections=http.positive("max_connections", 4096),
            memo_size=_non_negative(http, "memo_size", 4096),
        )
        http.finish()
        request = root.section("request")
        parameters = request.get("path_parameters", str, "reject")
        if parameters not in ("reject", "strip"):
            raise request.error("path_parameters", "must be reject or strip")
        request_settings = RequestSettings(allow_path_parameters=parameters == "strip")
        request.finish()
        token = root.section("token")
        claim_rules = ClaimRules(
            clock_skew=_non_negative(token, "clock_skew", 30),
            max_lifetime=token.positive("max_lifetime", 86400),
            tenant_claim=token.get("tenant_claim", str, "tenant"),
        )
        max_bytes = token.positive("max_bytes", 8192)
        cache_size = _non_negative(token, "cache_size", 10000)
        typ = frozenset(t.lower().removeprefix("application/") for t in token.strings("typ", required=False))
        token.finish()

        decryption = root.section("decryption")
        decryption_keys = self._keys(decryption, "keys", Purpose.DECRYPT)
        enc = decryption.strings("content_encryption", required=False) or list(DEFAULT_CONTENT_ENCRYPTION)
        for name in enc:
            if name not in CONTENT_ENCRYPTION_ALGS:
                raise decryption.error("content_encryption", f"unknown content encryption {name!r}")
        decryption.finish()

        issuers: dict[str, IssuerKeys] = {}
        for item, _line in root.items("issuers"):
            name = item.get("issuer", str)
            if name in issuers:
                raise item.error("issuer", "duplicate issuer")
            issuers[name] = self._issuer(item)
            item.finish()

        tenants = self._tenants(root, issuers, decryption_keys)
        upstream = root.section("upstream")
        upstream_settings = UpstreamSettings(
            strip_authorization=upstream.get("strip_authorization", bool, False)
        )
        upstream.finish()
        server = root.section("server")
        server_settings = ServerSettings(
            max_concurrent_checks=server.positive("max_concurrent_checks", 256),
            max_message_bytes=server.positive("max_message_bytes", 1 << 20),
            grace_seconds=float(server.positive("grace_seconds", 10)),
            jwks_first_fetch_wait=_seconds(server, "jwks_first_fetch_wait", 5.0),
            jwks_unknown_kid_wait=_seconds(server, "jwks_unknown_kid_wait", 0.5),
        )
        server.finish()
        telemetry = root.section("telemetry")
        rate = telemetry.data.get("allow_log_sample_rate", 1.0)
        telemetry.used.add("allow_log_sample_rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise telemetry.error("allow_log_sample_rate", "must be a number from 0 to 1")
        telemetry_settings = TelemetrySettings(
            log_subject=telemetry.get("subject", bool, False), allow_log_sample_rate=float(rate)
        )
        telemetry.finish()
        root.finish()

        token_keys = TokenKeys(
            decryption=decryption_keys,
            content_encryption=frozenset(enc),
            issuers=MappingProxyType(issuers),
            max_bytes=max_bytes,
            allowed_typ=typ,
        )
        return Config(
            source=self.source,
            digest=self.digest.hexdigest(),
            files=tuple(str(f) for f in self.files),
            listen=listen,
            admin_listen=admin_listen,
            tls=tls_settings,
            http_listen=http_listen,
            http=http_settings,
            request=request_settings,
            claim_rules=claim_rules,
            token_keys=token_keys,
            tenants=tenants,
            upstream=upstream_settings,
            server=server_settings,
            remote_jwks=tuple(self.remote),
            telemetry=telemetry_settings,
            cache=TokenCache(cache_size),
        )

    def _issuer(self, item: _Section) -> IssuerKeys:
        has_file, has_uri = "jwks" in item.data, "jwks_uri" in item.data
        if not has_file and not has_uri:
            raise item.error(None, "an issuer needs jwks (key files), jwks_uri (a URL), or both")
        static = self._keys(item, "jwks", Purpose.VERIFY) if has_file else KeySet.of(())
        remote = None
        if has_uri:
            uri = item.get("jwks_uri", str)
            if not uri.startswith("https://"):
                raise item.error("jwks_uri", "must be an https:// URL")
            ca_file = ca_digest = None
            if "ca_file" in item.data:
                ca_path = self._path(item.get("ca_file", str))
                ca_digest = hashlib.sha256(self._read(ca_path, item, "ca_file", "CA bundle")).hexdigest()
                ca_file = str(ca_path)
            settings = JwksSettings(
                uri=uri,
                ca_file=ca_file,
                ca_digest=ca_digest,
                refresh_interval=_seconds(item, "refresh_interval", 300.0),
                min_refetch_interval=_seconds(item, "min_refetch_interval", 30.0),
                timeout=_seconds(item, "fetch_timeout", 5.0),
            )
            remote = self.registry.source(settings)
            self.remote.append(remote)
        else:
            for key in ("ca_file", "refresh_interval", "min_refetch_interval", "fetch_timeout"):
                if key in item.data:
                    raise item.error(key, "only applies with jwks_uri")
        return IssuerKeys(static, remote)

    def _tls(self, tls: _Section) -> TlsSettings:
        cert = self._read(self._path(tls.get("cert", str)), tls, "cert", "TLS certificate chain")
        key = self._read(self._path(tls.get("key", str)), tls, "key", "TLS private key")
        client_ca = None
        if "client_ca" in tls.data:
            client_ca = self._read(
                self._path(tls.get("client_ca", str)), tls, "client_ca", "client CA bundle"
            )
        tls.finish()
        problem = _tls_problem(cert, key, client_ca)
        if problem:
            raise tls.error(None, problem)
        return TlsSettings(cert_chain=cert, private_key=key, client_ca=client_ca)

    def _path(self, relative: str) -> Path:
        # Absolute, but not through symlinks: the watcher must keep following the
        # path the operator wrote (Kubernetes swaps the ..data link behind it).
        return Path(os.path.abspath(self.path.parent / relative))

    def _read(self, path: Path, section: _Section, key: str, what: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                str(path),
                f"cannot read {what}: {exc.strerror or exc} "
                f"(referenced from {self.source}:{section.line(key)})",
            ) from None
        self.digest.update(data)
        self.files.append(path)
        return data

    def _keys(self, section: _Section, key: str, purpose: Purpose) -> KeySet:
        section.used.add(key)
        value = section.data.get(key)
        paths = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise section.error(key, "must be a file path or a non-empty list of file paths")
        merged: dict[str, Any] = {}
        for relative in paths:
            path = self._path(relative)
            try:
                raw = path.read_bytes()
                keyset = parse_keyset(raw, purpose, str(path))
            except OSError as exc:
                raise ConfigError(
                    str(path),
                    f"cannot read key file: {exc.strerror or exc} "
                    f"(referenced from {self.source}:{section.line(key)})",
                ) from None
            except ConfigError as exc:
                raise ConfigError(
                    exc.file, f"{exc.reason} (referenced from {self.source}:{section.line(key)})", exc.line
                ) from None
            for kid, k in keyset.by_kid.items():
                if kid in merged:
                    raise section.error(key, f"kid {kid!r} appears in more than one key file")
                merged[kid] = k
            self.digest.update(raw)
            self.files.append(path)
        return KeySet.of(merged.values())

    def _tenants(self, root: _Section, issuers: dict[str, IssuerKeys], keys: KeySet) -> TenantIndex:
        by_name: dict[str, Tenant] = {}
        by_host: dict[str, Tenant] = {}
        by_suffix: dict[str, Tenant] = {}
        issuer_use: dict[str, int] = {}
        for item, _line in root.items("tenants"):
            tenant = self._tenant(item, issuers, keys)
            if tenant.name in by_name:
                raise item.error("name", "duplicate tenant name")
            by_name[tenant.name] = tenant
            for host in tenant.hosts:
                table, name = (by_suffix, host[1:]) if host.startswith("*.") else (by_host, host)
                if name in table:
                    raise item.error("hosts", f"host {host!r} belongs to tenant {table[name].name!r} already")
                table[name] = tenant
            for issuer in tenant.issuers:
                issuer_use[issuer] = issuer_use.get(issuer, 0) + 1
        if not by_name:
            raise root.error("tenants", "must not be empty")
        return TenantIndex(
            by_name=MappingProxyType(by_name),
            by_host=MappingProxyType(by_host),
            by_suffix=tuple(sorted(by_suffix.items(), key=lambda kv: -len(kv[0]))),
            shared_issuers=frozenset(i for i, n in issuer_use.items() if n > 1),
        )

    def _tenant(self, item: _Section, issuers: dict[str, IssuerKeys], keys: KeySet) -> Tenant:
        name = item.get("name", str)
        if not _NAME.fullmatch(name):
            raise item.error("name", "must be 1-63 letters, digits, '.', '_' or '-'")
        tenant_issuers = item.strings("issuers")
        for issuer in tenant_issuers:
            if issuer not in issuers:
                raise item.error("issuers", f"issuer {issuer!r} is not configured under issuers")
        audiences = item.strings("audiences")
        hosts = [h.lower() for h in item.strings("hosts", required=False)]
        for host in hosts:
            if not _HOST.fullmatch(host):
                raise item.error("hosts", f"{host!r} is not a host name or *.suffix")
        mode_text = item.get("mode", str, "enforce")
        try:
            mode = Mode(mode_text)
        except ValueError:
            raise item.error("mode", "must be enforce or dry-run") from None
        encrypt_only = self._encrypt_only(item, keys, tenant_issuers)
        rules: list[Rule] = []
        for rule_item, _line in item.items("rules"):
            rule = _rule(rule_item)
            if any(r.name == rule.name for r in rules):
                raise rule_item.error("name", "duplicate rule name in this tenant")
            rules.append(rule)
        item.finish()
        return Tenant(
            name=name,
            issuers=frozenset(tenant_issuers),
            audiences=frozenset(audiences),
            hosts=tuple(hosts),
            mode=mode,
            rules=tuple(rules),
            encrypt_only_keys=MappingProxyType(encrypt_only),
        )

    def _encrypt_only(
        self, item: _Section, keys: KeySet, tenant_issuers: list[str]
    ) -> dict[str, frozenset[str]]:
        """``encrypt_only_keys``: each symmetric kid with the issuers its tokens may name.

        Without a JWS the shared key is the only proof of who made a token, so a key
        speaks for the issuers it is bound to, not for every issuer of the tenant. A
        bare kid is bound to the tenant's one issuer; with several it must say which.
        """
        entries: list[Any] = item.get("encrypt_only_keys", list, [])
        lines = (
            entries.lines if isinstance(entries, _List) else [item.line("encrypt_only_keys")] * len(entries)
        )
        bound: dict[str, frozenset[str]] = {}
        for index, (entry, line) in enumerate(zip(entries, lines, strict=True)):
            where = f"{item.where}.encrypt_only_keys[{index}]"
            if isinstance(entry, str) and entry:
                if len(tenant_issuers) != 1:
                    raise ConfigError(
                        self.source,
                        f"{where}: the tenant has {len(tenant_issuers)} issuers: bind the key to the ones "
                        f"it may speak for, e.g. {{kid: {entry}, issuers: [{tenant_issuers[0]}]}}",
                        line,
                    )
                kid, issuers = entry, list(tenant_issuers)
            elif isinstance(entry, _Map):
                section = _Section(entry, self.source, where, line)
                kid = section.get("kid", str)
                issuers = section.strings("issuers")
                for issuer in issuers:
                    if issuer not in tenant_issuers:
                        raise section.error(
                            "issuers", f"issuer {issuer!r} is not one of this tenant's issuers"
                        )
                section.finish()
            else:
                raise ConfigError(self.source, f"{where}: must be a kid or a mapping {{kid, issuers}}", line)
            key = keys.by_kid.get(kid)
            if key is None or not key.symmetric:
                raise ConfigError(self.source, f"{where}: {kid!r} is not a symmetric decryption key", line)
            if kid in bound:
                raise ConfigError(self.source, f"{where}: {kid!r} is listed twice", line)
            bound[kid] = frozenset(issuers)
        return bound


def _rule(item: _Section) -> Rule:
    name = item.get("name", str)
    methods = [m.upper() for m in item.strings("methods", required=False)]
    for method in methods:
        if method not in _METHODS:
            raise item.error("methods", f"unknown method {method!r}")
    paths = []
    for pattern in item.strings("paths"):
        try:
            paths.append(compile_path(pattern))
        except ValueError as exc:
            raise item.error("paths", f"{pattern!r}: {exc}") from None
    public = item.get("public", bool, False)
    scopes = item.strings("scopes", required=False)
    roles = item.strings("roles", required=False)
    claims = item.get("claims", dict, _empty_map(item.line()))
    if public and (scopes or roles or claims):
        raise item.error("public", "a public rule cannot also require scopes, roles or claims")
    for value in claims.values():
        if not isinstance(value, str | int | float | bool):
            raise item.error("claims", "claim values must be strings, numbers or booleans")
    item.finish()
    return Rule(
        name=name,
        methods=frozenset(methods),
        paths=tuple(paths),
        public=public,
        scopes=frozenset(scopes),
        roles=frozenset(roles),
        claims=MappingProxyType(dict(claims)),
    )


def _non_negative(section: _Section, key: str, default: int) -> int:
    value = section.get(key, int, default)
    if value < 0:
        raise section.error(key, "must not be negative")
    return value


def _seconds(section: _Section, key: str, default: float) -> float:
    section.used.add(key)
    value = section.data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise section.error(key, "must be a positive number of seconds")
    return float(value)


def _tls_problem(cert: bytes, key: bytes, client_ca: bytes | None) -> str | None:
    """Why these PEM files cannot serve TLS (never quoting key material), or None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "cert is not a PEM certificate chain"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "key is not an unencrypted PEM private key"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(encoding, public) != private.public_key().public_bytes(
        encoding, public
    ):
        return "key does not match the first certificate of cert"
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            return "client_ca is not a PEM certificate bundle"
    return None
