"""Configuration file (YAML) -> Config: keys imported, rules compiled, indexes built, defaults filled.

Relative paths resolve against the file's folder. Issuer keys from a ``jwks_uri`` come from
the caller's ``KeySources`` (the server shares its fetchers across reloads); the config
itself only names them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from authz.config.settings import Config, HttpSettings, JwksSettings, ServerSettings, TlsSettings
from authz.config.yaml import LineList, LineMap, Section, empty_map, parse_yaml
from authz.core.claims import ClaimRules
from authz.core.policy import Mode, Rule, Tenant, TenantIndex, compile_path
from authz.core.snapshot import RecordSettings, Snapshot
from authz.errors import ConfigError
from authz.jose.keys import CONTENT_ENCRYPTION_ALGS, IssuerKeys, KeySet, Purpose, RemoteKeys, parse_keyset
from authz.jose.nested import TokenKeys

__all__ = ["KeySources", "load_config"]


class KeySources(Protocol):
    """Where the keys of a ``jwks_uri`` come from (the server's fetchers)."""

    def source(self, settings: JwksSettings) -> RemoteKeys: ...


class _Unfetched:
    """The keys of a ``jwks_uri`` nobody fetches (a load without the server): none, ever."""

    keyset = None

    def source(self, settings: JwksSettings) -> RemoteKeys:
        return self

    async def refetch_for_unknown_kid(self, wait: float) -> bool:
        return False


DEFAULT_CONTENT_ENCRYPTION = ("A256GCM", "A128GCM", "A256CBC-HS512", "A128CBC-HS256")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def load_config(path: str | Path, sources: KeySources | None = None) -> Config:
    """Read, validate and build a configuration; raises ConfigError with file and line.

    ``sources`` provide the keys of each ``jwks_uri`` (the server's fetchers, shared
    between reloads); without them, such an issuer has only its key files.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    return _Builder(path, raw, sources or _Unfetched()).build()


class _Builder:
    def __init__(self, path: Path, raw: bytes, sources: KeySources) -> None:
        self.path = path
        self.source = str(path)
        self.raw = raw
        self.sources = sources
        self.files: list[Path] = [path]
        self.digest = hashlib.sha256(raw)  # over every file, as read for this snapshot
        self.jwks: list[JwksSettings] = []

    def build(self) -> Config:
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(self.source, "the file is not UTF-8") from None
        root = Section(parse_yaml(text, self.source), self.source, "config", 1)
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
        strip_authorization = upstream.get("strip_authorization", bool, False)
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
        record = RecordSettings(
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
            server=server_settings,
            jwks=tuple(self.jwks),
            snapshot=Snapshot(
                tenants=tenants,
                claim_rules=claim_rules,
                token_keys=token_keys,
                cache_size=cache_size,
                strip_authorization=strip_authorization,
                allow_path_parameters=parameters == "strip",
                refetch_wait=server_settings.jwks_unknown_kid_wait,
                record=record,
            ),
        )

    def _issuer(self, item: Section) -> IssuerKeys:
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
            remote = self.sources.source(settings)
            self.jwks.append(settings)
        else:
            for key in ("ca_file", "refresh_interval", "min_refetch_interval", "fetch_timeout"):
                if key in item.data:
                    raise item.error(key, "only applies with jwks_uri")
        return IssuerKeys(static, remote)

    def _tls(self, tls: Section) -> TlsSettings:
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

    def _read(self, path: Path, section: Section, key: str, what: str) -> bytes:
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

    def _keys(self, section: Section, key: str, purpose: Purpose) -> KeySet:
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

    def _tenants(self, root: Section, issuers: dict[str, IssuerKeys], keys: KeySet) -> TenantIndex:
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

    def _tenant(self, item: Section, issuers: dict[str, IssuerKeys], keys: KeySet) -> Tenant:
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
        self, item: Section, keys: KeySet, tenant_issuers: list[str]
    ) -> dict[str, frozenset[str]]:
        """``encrypt_only_keys``: each symmetric kid with the issuers its tokens may name.

        Without a JWS the shared key is the only proof of who made a token, so a key
        speaks for the issuers it is bound to, not for every issuer of the tenant. A
        bare kid is bound to the tenant's one issuer; with several it must say which.
        """
        entries: list[Any] = item.get("encrypt_only_keys", list, [])
        lines = (
            entries.lines
            if isinstance(entries, LineList)
            else [item.line("encrypt_only_keys")] * len(entries)
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
            elif isinstance(entry, LineMap):
                section = Section(entry, self.source, where, line)
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


def _rule(item: Section) -> Rule:
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
    claims = item.get("claims", dict, empty_map(item.line()))
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


def _non_negative(section: Section, key: str, default: int) -> int:
    value = section.get(key, int, default)
    if value < 0:
        raise section.error(key, "must not be negative")
    return value


def _seconds(section: Section, key: str, default: float) -> float:
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
