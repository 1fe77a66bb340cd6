"""The loaded configuration: the core's snapshot plus what the process and its doors are set to."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.core.revocation import Entry
from authz.core.snapshot import Snapshot
from authz.core.subscription import Subscription

__all__ = [
    "Config",
    "FeedSettings",
    "HttpSettings",
    "JwksSettings",
    "RevocationSettings",
    "ServerSettings",
    "StoreSettings",
    "SubscriptionSettings",
    "TlsSettings",
]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_concurrent_checks: int
    max_message_bytes: int
    grace_seconds: float
    jwks_first_fetch_wait: float  # at load: how long to wait for a new jwks_uri's first fetch
    jwks_unknown_kid_wait: float  # on a request: how long to wait for an unknown-kid refetch
    memo_size: int  # the gRPC door's allows kept per snapshot to answer identical repeats; 0: none


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
class JwksSettings:
    uri: str
    ca_file: str | None  # PEM bundle for a private IdP; None: the system's trust store
    ca_digest: str | None  # sha256 of that bundle: new content at the same path is a new source
    refresh_interval: float  # seconds between scheduled fetches
    min_refetch_interval: float  # at most one unknown-kid refetch per this many seconds
    timeout: float  # one fetch, connect to last byte


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The shared store, as parsed from ``store.url`` and read from its files for this snapshot."""

    url: str  # as written (it holds no password)
    hosts: tuple[tuple[str, int], ...]  # the server, or the Sentinels
    sentinel_service: str | None  # the Sentinel service name; None: a single server
    db: int
    username: str | None
    tls: bool
    password: bytes | None = field(repr=False)
    ca_file: str | None  # PEM bundle for rediss:// to a private CA
    key_prefix: str
    timeout: float
    local_fallback: bool  # on_unavailable: local
    max_connections: int

    @property
    def endpoint(self) -> str:
        """Where the store is, for logs and metrics (the URL holds no secret)."""
        return self.url


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """Where a mirror's contents come from and how stale it may get (authz/app/feed.py)."""

    file: str | None = None  # a watched file; None: the store's (if there is a store)
    max_staleness: float = 30.0
    serve_stale: bool = False  # on_stale: serve
    resync_interval: float = 5.0
    full_resync_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class RevocationSettings(FeedSettings):
    """Where revocations come from and how stale the mirror may get."""

    # How long a subject or client entry must live: no token issued before it may be valid after.
    entry_lifetime: float = 86400.0 + 30.0
    entries: tuple[Entry, ...] = field(default=(), repr=False)  # the file's entries, as loaded


@dataclass(frozen=True, slots=True)
class SubscriptionSettings(FeedSettings):
    """Where API subscriptions come from and how stale the mirror may get."""

    records: tuple[Subscription, ...] = field(default=(), repr=False)  # the file's, as loaded
    required: bool = False  # some API requires subscriptions (a stale mirror then refuses checks)


@dataclass(frozen=True, slots=True)
class Config:
    """One immutable load of the configuration; a reload builds a new one and swaps it in whole."""

    source: str
    digest: str  # sha256 over the config file and every file it references
    files: tuple[str, ...]
    listen: str | None
    admin_listen: str | None  # /metrics, /healthz, /readyz; None: no admin port
    http_listen: str | None  # the HTTP door; None: gRPC only
    tls: TlsSettings | None  # None: plaintext gRPC (a sidecar on localhost, or a mesh's mTLS)
    http: HttpSettings
    server: ServerSettings
    jwks: tuple[JwksSettings, ...]  # issuer keys from URLs (fetched by the server, shared across reloads)
    snapshot: Snapshot = field(compare=False)
    store: StoreSettings | None = None  # None: no shared store (per-process state)
    revocation: RevocationSettings = RevocationSettings()
    subscriptions: SubscriptionSettings = SubscriptionSettings()
