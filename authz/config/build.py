"""Configuration file -> Config: the model checked across fields, key and TLS files read, a snapshot built.

Relative paths resolve against the file's folder. Issuer keys from a ``jwks_uri`` come from the
caller's ``KeySources`` (the server shares its fetchers across reloads); the config only names them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from msgspec import UNSET, UnsetType

from authz.config import model as m
from authz.config.convert import to_model
from authz.config.revocations import parse_revocation_file
from authz.config.settings import (
    Config,
    HttpSettings,
    JwksSettings,
    RevocationSettings,
    ServerSettings,
    StoreSettings,
    SubscriptionSettings,
    TlsSettings,
)
from authz.config.store import parse_store_url
from authz.config.subscriptions import known_apis, parse_subscription_file
from authz.config.tenants import compile_tenants
from authz.config.yaml import Place, parse_yaml
from authz.core.binding import DpopSettings
from authz.core.claims import ClaimRules
from authz.core.policy import TenantIndex
from authz.core.request import CertificateSource
from authz.core.revocation import Entry
from authz.core.snapshot import RecordSettings, Snapshot
from authz.core.subscription import Subscription
from authz.errors import ConfigError
from authz.jose.keys import IssuerKeys, KeySet, Purpose, RemoteKeys, parse_keyset
from authz.jose.nested import TokenKeys
from authz.jose.nonce import NonceIssuer, parse_nonce_keys

__all__ = ["KeySources", "load_config"]

# Settings of an issuer that only a jwks_uri uses.
_URI_ONLY = ("ca_file", "refresh_interval", "min_refetch_interval", "fetch_timeout")


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


def read_regular(path: str | Path) -> bytes:
    """A file's bytes, refusing anything but a regular file (a FIFO, a device, a socket).

    Opened without blocking and checked before reading: a FIFO named as a key or config file
    would otherwise block the reload thread forever, and no later edit would apply.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb") as handle:
            descriptor = -1
            return handle.read()
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def load_config(path: str | Path, sources: KeySources | None = None) -> Config:
    """Read, validate and build a configuration; raises ConfigError with file and line.

    ``sources`` provide the keys of each ``jwks_uri`` (the server's fetchers, shared
    between reloads); without them, such an issuer has only its key files.
    """
    path = Path(path)
    try:
        raw = read_regular(path)
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
        config, root = to_model(parse_yaml(text, self.source), self.source)
        tls = None if config.tls is UNSET else self._tls(config.tls, root.key("tls"))
        store = None if config.store is UNSET else self._store(config.store, root.key("store"))
        revocation = self._revocation(config, root.key("revocation"), store)
        decryption = root.key("decryption")
        decryption_keys = self._keys(config.decryption.keys, decryption.key("keys"), Purpose.DECRYPT)
        issuers: dict[str, IssuerKeys] = {}
        for index, issuer in enumerate(config.issuers):
            place = root.key("issuers").item(index)
            if issuer.issuer in issuers:
                raise place.key("issuer").error("duplicate issuer")
            issuers[issuer.issuer] = self._issuer(issuer, place)
        tenants = compile_tenants(config.tenants, root, issuers, decryption_keys)
        subscriptions = self._subscriptions(config, root.key("subscriptions"), store, tenants)
        dpop = self._dpop(config.dpop, root.key("dpop"))
        token, http, server = config.token, config.http, config.server
        token_keys = TokenKeys(
            decryption=decryption_keys,
            content_encryption=frozenset(
                config.decryption.content_encryption or m.DEFAULT_CONTENT_ENCRYPTION
            ),
            issuers=MappingProxyType(issuers),
            max_bytes=token.max_bytes,
            allowed_typ=frozenset(t.lower().removeprefix("application/") for t in token.typ),
        )
        server_settings = ServerSettings(
            max_concurrent_checks=server.max_concurrent_checks,
            max_message_bytes=server.max_message_bytes,
            grace_seconds=float(server.grace_seconds),
            jwks_first_fetch_wait=server.jwks_first_fetch_wait,
            jwks_unknown_kid_wait=server.jwks_unknown_kid_wait,
            memo_size=server.memo_size,
        )
        return Config(
            source=self.source,
            digest=self.digest.hexdigest(),
            files=tuple(str(f) for f in self.files),
            listen=_address(config.listen),
            admin_listen=_address(config.admin_listen),
            tls=tls,
            http_listen=_address(config.http_listen),
            http=HttpSettings(
                path_prefix=http.path_prefix,
                max_header_bytes=http.max_header_bytes,
                max_headers=http.max_headers,
                max_body_bytes=http.max_body_bytes,
                header_timeout=http.header_timeout,
                idle_timeout=http.idle_timeout,
                max_requests_per_connection=http.max_requests_per_connection,
                max_connections=http.max_connections,
                memo_size=http.memo_size,
            ),
            server=server_settings,
            jwks=tuple(self.jwks),
            snapshot=Snapshot(
                tenants=tenants,
                claim_rules=ClaimRules(
                    clock_skew=token.clock_skew,
                    max_lifetime=token.max_lifetime,
                    tenant_claim=token.tenant_claim,
                ),
                token_keys=token_keys,
                cache_size=token.cache_size,
                strip_authorization=config.upstream.strip_authorization,
                allow_path_parameters=config.request.path_parameters == "strip",
                refetch_wait=server_settings.jwks_unknown_kid_wait,
                record=RecordSettings(
                    log_subject=config.telemetry.subject,
                    allow_log_sample_rate=config.telemetry.allow_log_sample_rate,
                ),
                dpop=dpop,
                certificate_source=CertificateSource(config.request.client_certificate),
            ),
            store=store,
            revocation=revocation,
            subscriptions=subscriptions,
        )

    def _store(self, store: m.Store, place: Place) -> StoreSettings:
        try:
            url = parse_store_url(store.url)
        except ValueError as exc:
            raise place.key("url").error(str(exc)) from None
        password = None
        if store.password_file is not UNSET:
            raw = self._read(self._path(store.password_file), place.key("password_file"), "store password")
            password = raw.rstrip(b"\r\n")  # a file written by echo ends with a newline
            if not password or b"\n" in password:
                raise place.key("password_file").error("the password file must hold one non-empty line")
        ca_file = None
        if store.ca_file is not UNSET:
            if not url.tls:
                raise place.key("ca_file").error("only applies with rediss:// (TLS)")
            ca_path = self._path(store.ca_file)
            self._read(ca_path, place.key("ca_file"), "store CA bundle")
            ca_file = str(ca_path)
        return StoreSettings(
            url=store.url,
            hosts=url.hosts,
            sentinel_service=url.sentinel_service,
            db=url.db,
            username=url.username,
            tls=url.tls,
            password=password,
            ca_file=ca_file,
            key_prefix=store.key_prefix,
            timeout=store.timeout,
            local_fallback=store.on_unavailable == "local",
            max_connections=store.max_connections,
        )

    def _revocation(
        self, config: m.ConfigFile, place: Place, store: StoreSettings | None
    ) -> RevocationSettings:
        revocation, token = config.revocation, config.token
        file: str | None = None
        entries: tuple[Entry, ...] = ()
        lifetime = float(token.max_lifetime + token.clock_skew)
        if revocation.file is not UNSET:
            # Read as part of the config: its changes reload like the config's, and a bad
            # edit keeps the last good configuration and its entries (file, line, reason).
            path = self._path(revocation.file)
            raw = self._read(path, place.key("file"), "revocation file")
            try:
                entries = parse_revocation_file(raw, str(path), lifetime)
            except ConfigError as exc:
                raise ConfigError(
                    exc.file,
                    f"{exc.reason} (referenced from {self.source}:{place.key('file').line})",
                    exc.line,
                ) from None
            file = str(path)
        elif store is not None and revocation.resync_interval >= revocation.max_staleness:
            raise place.key("resync_interval").error(
                "must be shorter than max_staleness (else the mirror goes stale between resyncs)"
            )
        if file is not None or store is None:
            for key in ("max_staleness", "on_stale", "resync_interval", "full_resync_interval"):
                if place.has(key):
                    raise place.key(key).error("only applies to revocations from the store")
        return RevocationSettings(
            file=file,
            max_staleness=revocation.max_staleness,
            serve_stale=revocation.on_stale == "serve",
            resync_interval=revocation.resync_interval,
            full_resync_interval=revocation.full_resync_interval,
            entry_lifetime=lifetime,
            entries=entries,
        )

    def _subscriptions(
        self, config: m.ConfigFile, place: Place, store: StoreSettings | None, tenants: TenantIndex
    ) -> SubscriptionSettings:
        spec = config.subscriptions
        file: str | None = None
        records: tuple[Subscription, ...] = ()
        if spec.file is not UNSET:
            # Read as part of the config, like the revocation file: an edit reloads, and a bad
            # one keeps the last good configuration and its subscriptions (file, line, reason).
            path = self._path(spec.file)
            raw = self._read(path, place.key("file"), "subscriptions file")
            try:
                records = parse_subscription_file(raw, str(path), known_apis(tenants))
            except ConfigError as exc:
                raise ConfigError(
                    exc.file,
                    f"{exc.reason} (referenced from {self.source}:{place.key('file').line})",
                    exc.line,
                ) from None
            file = str(path)
        elif store is not None and spec.resync_interval >= spec.max_staleness:
            raise place.key("resync_interval").error(
                "must be shorter than max_staleness (else the mirror goes stale between resyncs)"
            )
        if file is not None or store is None:
            for key in ("max_staleness", "on_stale", "resync_interval", "full_resync_interval"):
                if place.has(key):
                    raise place.key(key).error("only applies to subscriptions from the store")
        return SubscriptionSettings(
            file=file,
            max_staleness=spec.max_staleness,
            serve_stale=spec.on_stale == "serve",
            resync_interval=spec.resync_interval,
            full_resync_interval=spec.full_resync_interval,
            records=records,
            required=any(api.subscription for t in tenants.by_name.values() for api in t.apis.values()),
        )

    def _dpop(self, dpop: m.Dpop, place: Place) -> DpopSettings:
        if len(set(dpop.algorithms)) != len(dpop.algorithms):
            raise place.key("algorithms").error("an algorithm is listed twice")
        nonce, where = dpop.nonce, place.key("nonce")
        issuer = None
        if nonce.secret is not UNSET:
            # Read and checked even while not required: turning nonces on is then a flag.
            path = self._path(nonce.secret)
            raw = self._read(path, where.key("secret"), "nonce key file")
            try:
                keys = parse_nonce_keys(raw, str(path))
            except ConfigError as exc:
                line = where.key("secret").line
                raise ConfigError(
                    exc.file, f"{exc.reason} (referenced from {self.source}:{line})", exc.line
                ) from None
            if nonce.required:
                if nonce.lifetime <= dpop.clock_skew:
                    raise where.key("lifetime").error("must be longer than dpop.clock_skew")
                issuer = NonceIssuer(keys, nonce.lifetime, float(dpop.clock_skew))
        elif nonce.required:
            raise where.error("required nonces need a secret (a JWK Set file of oct keys)")
        return DpopSettings(
            algorithms=tuple(dpop.algorithms),
            max_age=float(dpop.max_age),
            skew=float(dpop.clock_skew),
            nonce=issuer,
            replay_cache_size=dpop.replay_cache_size,
        )

    def _issuer(self, issuer: m.Issuer, place: Place) -> IssuerKeys:
        if issuer.jwks is UNSET and issuer.jwks_uri is UNSET:
            raise place.error("an issuer needs jwks (key files), jwks_uri (a URL), or both")
        static = (
            KeySet.of(())
            if issuer.jwks is UNSET
            else self._keys(issuer.jwks, place.key("jwks"), Purpose.VERIFY)
        )
        if issuer.jwks_uri is UNSET:
            for key in _URI_ONLY:
                if place.has(key):
                    raise place.key(key).error("only applies with jwks_uri")
            return IssuerKeys(static, None)
        ca_file = ca_digest = None
        if issuer.ca_file is not UNSET:
            ca_path = self._path(issuer.ca_file)
            ca_digest = hashlib.sha256(self._read(ca_path, place.key("ca_file"), "CA bundle")).hexdigest()
            ca_file = str(ca_path)
        settings = JwksSettings(
            uri=issuer.jwks_uri,
            ca_file=ca_file,
            ca_digest=ca_digest,
            refresh_interval=issuer.refresh_interval,
            min_refetch_interval=issuer.min_refetch_interval,
            timeout=issuer.fetch_timeout,
        )
        remote = self.sources.source(settings)
        self.jwks.append(settings)
        return IssuerKeys(static, remote)

    def _tls(self, tls: m.Tls, place: Place) -> TlsSettings:
        cert = self._read(self._path(tls.cert), place.key("cert"), "TLS certificate chain")
        key = self._read(self._path(tls.key), place.key("key"), "TLS private key")
        client_ca = None
        if tls.client_ca is not UNSET:
            client_ca = self._read(self._path(tls.client_ca), place.key("client_ca"), "client CA bundle")
        problem = _tls_problem(cert, key, client_ca)
        if problem:
            raise place.error(problem)
        return TlsSettings(cert_chain=cert, private_key=key, client_ca=client_ca)

    def _path(self, relative: str) -> Path:
        # Absolute, but not through symlinks: the watcher must keep following the
        # path the operator wrote (Kubernetes swaps the ..data link behind it).
        return Path(os.path.abspath(self.path.parent / relative))

    def _read(self, path: Path, place: Place, what: str) -> bytes:
        try:
            data = read_regular(path)
        except OSError as exc:
            raise ConfigError(
                str(path),
                f"cannot read {what}: {exc.strerror or exc} (referenced from {self.source}:{place.line})",
            ) from None
        self.digest.update(data)
        self.files.append(path)
        return data

    def _keys(self, files: str | tuple[str, ...], place: Place, purpose: Purpose) -> KeySet:
        merged: dict[str, Any] = {}
        for relative in (files,) if isinstance(files, str) else files:
            path = self._path(relative)
            try:
                raw = read_regular(path)
                keyset = parse_keyset(raw, purpose, str(path))
            except OSError as exc:
                reason = f"cannot read key file: {exc.strerror or exc}"
                raise ConfigError(
                    str(path), f"{reason} (referenced from {self.source}:{place.line})"
                ) from None
            except ConfigError as exc:
                raise ConfigError(
                    exc.file, f"{exc.reason} (referenced from {self.source}:{place.line})", exc.line
                ) from None
            for kid, k in keyset.by_kid.items():
                if kid in merged:
                    raise place.error(f"kid {kid!r} appears in more than one key file")
                merged[kid] = k
            self.digest.update(raw)
            self.files.append(path)
        return KeySet.of(merged.values())


def _address(value: str | UnsetType) -> str | None:
    """A listen address as written; unset or empty: None (the command line or the default decides)."""
    return value or None if isinstance(value, str) else None


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
