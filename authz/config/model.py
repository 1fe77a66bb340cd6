"""The configuration file's shape: every section and setting with its type, limits, default and meaning.

The one source of truth: the loader converts the YAML with it (msgspec), ``authz schema`` prints
the JSON Schema made from it, the docs' settings table is generated from that schema. A
``reason`` in a ``Meta``'s ``extra`` is the error text for a value that breaks the constraint.
Checks that relate several values or read files are in build.py and tenants.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from authz.core.binding import DEFAULT_REPLAY_CACHE_SIZE
from authz.jose.dpop import DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS
from authz.jose.keys import CONTENT_ENCRYPTION_ALGS

__all__ = [
    "DEFAULT_CONTENT_ENCRYPTION",
    "DEFAULT_REPLAY_CACHE_SIZE",
    "METHODS",
    "Api",
    "ConfigFile",
    "Dpop",
    "DpopNonce",
    "EncryptOnlyKey",
    "Issuer",
    "Revocation",
    "Rule",
    "Store",
    "Subscriptions",
    "Tenant",
    "about",
]

DEFAULT_CONTENT_ENCRYPTION = ("A256GCM", "A128GCM", "A256CBC-HS512", "A128CBC-HS256")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")


def _whole(regex: str) -> str:
    """A pattern for the whole string, read alike by Python's ``re.search`` (msgspec, jsonschema)
    and ECMA-262 (editors): in Python a bare ``$`` also matches before a final newline."""
    return f"^(?:{regex})$(?!\\n)"


def about(text: str) -> Meta:
    """A setting's one-line description (the schema's, the editor's and the docs table's)."""
    return Meta(description=text)


def _any_case(word: str) -> str:
    # JSON Schema patterns have no case-insensitive flag.
    return "".join(f"[{c}{c.lower()}]" for c in word.upper())


# -- value types: each says what it accepts and why a value is refused -------------------------

Text = Annotated[str, Meta(min_length=1)]
Texts = tuple[Text, ...]
RequiredTexts = Annotated[tuple[Text, ...], Meta(min_length=1)]
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0, extra={"reason": "must be a positive number of seconds"})]
Fraction = Annotated[float, Meta(ge=0, le=1, extra={"reason": "must be a number from 0 to 1"})]
FilePath = Annotated[str, Meta(min_length=1)]
KeyFiles = Annotated[
    FilePath | Annotated[tuple[FilePath, ...], Meta(min_length=1)],
    Meta(extra={"reason": "must be a file path or a non-empty list of file paths"}),
]
HttpsUrl = Annotated[str, Meta(pattern="^https://", extra={"reason": "must be an https:// URL"})]
PathPrefix = Annotated[
    str, Meta(pattern=_whole(r"(/[\s\S]*[^/])?"), extra={"reason": "must start with / and not end with /"})
]
Name = Annotated[
    str,
    Meta(
        pattern=_whole("[A-Za-z0-9][A-Za-z0-9._-]{0,62}"),
        extra={"reason": "must be 1-63 letters, digits, '.', '_' or '-'"},
    ),
]
Host = Annotated[
    str,
    Meta(
        pattern=_whole(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"),
        extra={"reason": "{value} is not a host name or *.suffix"},
    ),
]
Method = Annotated[
    str,
    Meta(pattern=_whole("|".join(map(_any_case, METHODS))), extra={"reason": "unknown method {value}"}),
]
ClaimValue = Annotated[
    str | int | float | bool, Meta(extra={"reason": "claim values must be strings, numbers or booleans"})
]
if TYPE_CHECKING:
    ContentEncryption = str
    DpopAlgorithm = str
else:
    ContentEncryption = Annotated[
        Literal[tuple(sorted(CONTENT_ENCRYPTION_ALGS))],
        Meta(extra={"reason": "unknown content encryption {value}"}),
    ]
    DpopAlgorithm = Annotated[
        Literal[tuple(sorted(SUPPORTED_ALGORITHMS))],
        Meta(
            extra={
                "reason": "{value} is not an asymmetric DPoP algorithm we verify "
                f"(one of {', '.join(sorted(SUPPORTED_ALGORITHMS))})"
            }
        ),
    ]
SenderConstraint = Annotated[
    Literal["optional", "required"], Meta(extra={"reason": "must be optional or required"})
]


class _Section(Struct, frozen=True, forbid_unknown_fields=True):
    """Every mapping of the file: unknown keys are errors (a typo must not silently drop a rule)."""


# -- sections, in the order of the docs' reference ----------------------------------------------


class Token(_Section, kw_only=True, frozen=True):
    """Token limits and claim checks."""

    clock_skew: Annotated[NonNegative, about("Seconds of leeway for exp, nbf and iat")] = 30
    max_lifetime: Annotated[
        Positive, about("Longest lifetime in seconds, from iat (or nbf, or now) to exp")
    ] = 86400
    max_bytes: Annotated[Positive, about("Longest token in bytes, checked before any crypto")] = 8192
    tenant_claim: Annotated[str, about("The claim naming the token's tenant")] = "tenant"
    typ: Annotated[
        Texts, about("Inner JWS typ allow-list, e.g. [at+jwt] (any case, application/ optional); empty: any")
    ] = ()
    cache_size: Annotated[
        NonNegative, about("Verified tokens kept per worker until they expire; 0: verify each time")
    ] = 10000


class Decryption(_Section, kw_only=True, frozen=True):
    """Our decryption keys and the content encryptions accepted."""

    keys: Annotated[KeyFiles, about("JWK Set file(s) with our private keys; every key has kid and alg")]
    content_encryption: Annotated[
        tuple[ContentEncryption, ...], about("Accepted content encryptions (enc); empty: the default")
    ] = DEFAULT_CONTENT_ENCRYPTION


class Issuer(_Section, kw_only=True, frozen=True):
    """A token issuer and its signing keys: key files (jwks), a URL (jwks_uri), or both."""

    issuer: Annotated[str, about("The exact iss value")]
    jwks: Annotated[
        KeyFiles | UnsetType, about("Public signing key file(s) (JWK Sets); every key has kid and alg")
    ] = UNSET
    jwks_uri: Annotated[
        HttpsUrl | UnsetType, about("https:// URL of the issuer's JWK Set, fetched and refreshed")
    ] = UNSET
    ca_file: Annotated[
        FilePath | UnsetType,
        about("CA bundle (PEM) for the jwks_uri of a private IdP; not set: system trust"),
    ] = UNSET
    refresh_interval: Annotated[Seconds, about("Seconds between scheduled fetches (with jwks_uri only)")] = (
        300.0
    )
    min_refetch_interval: Annotated[
        Seconds, about("At most one unknown-kid refetch per this many seconds (jwks_uri only)")
    ] = 30.0
    fetch_timeout: Annotated[
        Seconds, about("Seconds for one fetch, connect to last byte (with jwks_uri only)")
    ] = 5.0


class Upstream(_Section, kw_only=True, frozen=True):
    """What an allowed request carries to the upstream."""

    strip_authorization: Annotated[bool, about("Remove the authorization header before the upstream")] = False


class Request(_Section, kw_only=True, frozen=True):
    """How both doors read a request."""

    path_parameters: Annotated[
        Literal["reject", "strip"],
        about("';' in a path segment: reject (400 path_invalid) or strip (removed before matching)"),
        Meta(extra={"reason": "must be reject or strip"}),
    ] = "reject"
    client_certificate: Annotated[
        Literal["peer", "xfcc"],
        about(
            "gRPC door's client certificate for certificate-bound tokens: peer (Envoy's "
            "include_peer_certificate) or xfcc (a sanitized x-forwarded-client-cert, e.g. behind "
            "Istio); the HTTP door reads xfcc"
        ),
        Meta(extra={"reason": "must be peer or xfcc"}),
    ] = "peer"


class DpopNonce(_Section, kw_only=True, frozen=True):
    """DPoP server nonces (RFC 9449 8): stateless, an HMAC over a time window; same on every replica."""

    required: Annotated[
        bool, about("Every proof needs a current nonce; else 401 use_dpop_nonce with a fresh one")
    ] = False
    secret: Annotated[
        FilePath | UnsetType,
        about("JWK Set of oct keys (32+ bytes): the first signs, all verify; a reload rotates it"),
    ] = UNSET
    lifetime: Annotated[
        Positive, about("Seconds of a nonce window; a nonce is accepted for one to two windows")
    ] = 120


class Dpop(_Section, kw_only=True, frozen=True):
    """DPoP proofs (RFC 9449) for tokens bound to a key (cnf.jkt)."""

    algorithms: Annotated[
        tuple[DpopAlgorithm, ...],
        Meta(min_length=1),
        about("Proof algorithms accepted (asymmetric only), named in that order in the challenge"),
    ] = DEFAULT_ALGORITHMS
    max_age: Annotated[Positive, about("Seconds a proof's iat may lie in the past")] = 60
    clock_skew: Annotated[NonNegative, about("Seconds a proof's iat may lie in the future")] = 5
    nonce: Annotated[DpopNonce, about("Server nonces")] = DpopNonce()
    replay_cache_size: Annotated[
        Positive,
        about("Proofs remembered per process (~100 B each) until max_age + 2 x clock_skew; full: 503"),
    ] = DEFAULT_REPLAY_CACHE_SIZE


class Server(_Section, kw_only=True, frozen=True):
    """The gRPC server's limits and drain, and how long loads and checks wait for JWKS fetches."""

    max_concurrent_checks: Annotated[
        Positive, about("Concurrent checks; more get RESOURCE_EXHAUSTED (Envoy denies)")
    ] = 256
    max_message_bytes: Annotated[Positive, about("Largest CheckRequest in bytes")] = 1048576
    grace_seconds: Annotated[Positive, about("Drain time on SIGTERM/SIGINT, in seconds")] = 10
    jwks_first_fetch_wait: Annotated[
        Seconds, about("Start-up and reload wait this long for a new jwks_uri's first fetch")
    ] = 5.0
    jwks_unknown_kid_wait: Annotated[
        Seconds, about("A request with an unknown signing kid waits this long for a refetch")
    ] = 0.5
    memo_size: Annotated[
        NonNegative, about("Allows kept per load to answer identical repeats (gRPC door); 0: decide each one")
    ] = 4096


class Http(_Section, kw_only=True, frozen=True):
    """The HTTP door (Envoy's http_service): its limits apply from start-up, the prefix per load."""

    path_prefix: Annotated[
        PathPrefix, about("Envoy's http_service path_prefix (/..., no trailing /), stripped first")
    ] = ""
    # At or above what the rendered Envoys forward (render.py: max_request_headers_kb 60,
    # max_headers_count 100, plus the few headers Envoy adds to a check): a request Envoy
    # lets through is decided, never refused for its size.
    max_header_bytes: Annotated[
        Positive,
        about(
            "Request line and headers, in bytes; more: read, not stored, 400 (target: path_invalid, "
            "headers: request_malformed); over 4x: 431, closed"
        ),
    ] = 65536
    max_headers: Annotated[Positive, about("Headers per request; more: 400 request_malformed")] = 128
    max_body_bytes: Annotated[
        NonNegative, about("Body bytes (Envoy sends none unless with_request_body); more: 413")
    ] = 65536
    header_timeout: Annotated[
        Seconds, about("Seconds for a request's line and headers; then 408, closed")
    ] = 10.0
    idle_timeout: Annotated[
        Seconds, about("Seconds a keep-alive connection may wait for its next request")
    ] = 60.0
    max_requests_per_connection: Annotated[
        Positive, about("Requests per connection; the last answer says connection: close")
    ] = 10000
    max_connections: Annotated[Positive, about("Open connections; more are answered 503 and closed")] = 4096
    memo_size: Annotated[
        NonNegative, about("Allows kept per load to answer identical repeats; 0: decide each one")
    ] = 4096


class Telemetry(_Section, kw_only=True, frozen=True):
    """What decisions record in spans and the decision log."""

    subject: Annotated[bool, about("The subject id in spans and decision log lines")] = False
    allow_log_sample_rate: Annotated[
        Fraction, about("Fraction of allow decisions logged; denies always are")
    ] = 1.0


class Tls(_Section, kw_only=True, frozen=True):
    """TLS on the gRPC listener: a reload rotates the files; turning TLS on or off needs a restart."""

    cert: Annotated[FilePath, about("Certificate chain (PEM)")]
    key: Annotated[FilePath, about("Its private key (PEM, unencrypted)")]
    client_ca: Annotated[
        FilePath | UnsetType, about("CA bundle (PEM): client certificates from it are required (mTLS)")
    ] = UNSET


# redis:// and rediss:// (TLS): one server; redis+sentinel:// and rediss+sentinel://: a
# Sentinel-managed primary, with the Sentinels' addresses and the service name. No password
# in the URL: it would sit in the YAML (password_file holds it).
StoreUrl = Annotated[
    str,
    Meta(
        pattern=_whole(r"rediss?(\+sentinel)?://[^\s:@/]*@?[^\s@/]+(/[^\s]*)?"),
        extra={
            "reason": "must be a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL "
            "(no password: use password_file)"
        },
    ),
]
KeyPrefix = Annotated[
    str,
    Meta(
        pattern=_whole(r"[A-Za-z0-9:._-]{0,64}"),
        extra={"reason": "must be at most 64 letters, digits, ':', '.', '_' or '-'"},
    ),
]
StoreTimeout = Annotated[
    float, Meta(gt=0, le=5, extra={"reason": "must be a number of seconds above 0, at most 5"})
]


class Store(_Section, kw_only=True, frozen=True):
    """The shared store (Redis or Valkey): DPoP replay state and revocations, one for every replica."""

    url: Annotated[
        StoreUrl,
        about(
            "redis://[user@]host:port/db, rediss:// (TLS), or redis+sentinel://[user@]h1:p1,h2:p2/service/db "
            "(rediss+sentinel: TLS); no password here"
        ),
    ]
    password_file: Annotated[
        FilePath | UnsetType, about("File holding the store's password (ACL or requirepass); not set: none")
    ] = UNSET
    ca_file: Annotated[
        FilePath | UnsetType, about("CA bundle (PEM) for rediss:// to a private CA; not set: system trust")
    ] = UNSET
    key_prefix: Annotated[KeyPrefix, about("Prefix of every key authz writes (share a store safely)")] = (
        "authz:"
    )
    timeout: Annotated[
        StoreTimeout, about("Seconds one store operation may take (never beyond a check's deadline)")
    ] = 0.05
    on_unavailable: Annotated[
        Literal["deny", "local"],
        about(
            "Store not answering: deny DPoP checks (503 dpop_replay_store_unavailable) or local (per process)"
        ),
        Meta(extra={"reason": "must be deny or local"}),
    ] = "deny"
    max_connections: Annotated[Positive, about("Connections per process for store operations")] = 8


OnStale = Annotated[Literal["deny", "serve"], Meta(extra={"reason": "must be deny or serve"})]


class Revocation(_Section, kw_only=True, frozen=True):
    """Token revocation: entries from the shared store (authz revoke) or from a watched file."""

    file: Annotated[
        FilePath | UnsetType,
        about("A revocation file (watched, reloaded); not set: the store's revocations, if there is a store"),
    ] = UNSET
    max_staleness: Annotated[
        Seconds, about("Seconds the store's revocation mirror may go unconfirmed before on_stale applies")
    ] = 30.0
    on_stale: Annotated[
        OnStale,
        about("Mirror stale: deny token checks (503 revocation_state_stale) or serve on the stale mirror"),
    ] = "deny"
    resync_interval: Annotated[
        Seconds,
        about(
            "Seconds between checks that the mirror matches the store (and resyncs if not),"
            " and readings of the store's eviction policy"
        ),
    ] = 5.0
    full_resync_interval: Annotated[
        Seconds, about("Seconds between full reloads of the mirror from the store (a safety net)")
    ] = 300.0


class Subscriptions(_Section, kw_only=True, frozen=True):
    """API subscriptions of client applications: from the shared store (authz subscriptions) or a file."""

    file: Annotated[
        FilePath | UnsetType,
        about(
            "A subscriptions file (watched, reloaded; authz subscriptions edits it); "
            "not set: the store's subscriptions, if there is a store"
        ),
    ] = UNSET
    max_staleness: Annotated[
        Seconds, about("Seconds the store's subscription mirror may go unconfirmed before on_stale applies")
    ] = 30.0
    on_stale: Annotated[
        OnStale,
        about(
            "Mirror stale: deny checks of APIs that require a subscription (503 "
            "subscription_state_stale) or serve on the stale mirror"
        ),
    ] = "deny"
    resync_interval: Annotated[
        Seconds, about("Seconds between checks that the mirror matches the store (and resyncs if not)")
    ] = 5.0
    full_resync_interval: Annotated[
        Seconds, about("Seconds between full reloads of the mirror from the store (a safety net)")
    ] = 300.0


class EncryptOnlyKey(_Section, kw_only=True, frozen=True):
    """A symmetric decryption key accepted without an inner JWS, and the issuers it speaks for."""

    kid: Annotated[Text, about("The kid of a symmetric decryption key")]
    issuers: Annotated[RequiredTexts, about("The tenant's issuers whose tokens it may carry")]


EncryptOnly = Annotated[
    Text | EncryptOnlyKey,
    about("A kid (in a tenant with one issuer), or {kid, issuers}"),
    Meta(extra={"reason": "must be a kid or a mapping {kid, issuers}"}),
]


class Rule(_Section, kw_only=True, frozen=True):
    """One rule: the first whose methods and paths match a request decides."""

    name: Annotated[str, about("Its name in decisions, logs and metrics; unique in the tenant")]
    methods: Annotated[tuple[Method, ...], about(f"{', '.join(METHODS)} (any case); empty: any")] = ()
    paths: Annotated[RequiredTexts, about("Path patterns: * is one segment, a last ** any rest (or none)")]
    public: Annotated[bool, about("No token needed (and then no scopes, roles or claims)")] = False
    scopes: Annotated[Texts, about("Scopes the token must all have")] = ()
    roles: Annotated[Texts, about("Roles the token needs one of; empty: none needed")] = ()
    claims: Annotated[
        dict[str, ClaimValue], about("Claims equal to the value (or, for a list claim, containing it)")
    ] = {}
    sender_constraint: Annotated[
        SenderConstraint | UnsetType,
        about("optional or required (bound tokens only: DPoP or certificate); not set: the tenant's"),
    ] = UNSET
    api: Annotated[
        Name | UnsetType,
        about("The API (one of the tenant's apis) the rule belongs to; its subscription setting applies"),
    ] = UNSET


class Api(_Section, kw_only=True, frozen=True):
    """A named API of a tenant: rules name it, and it may require an approved subscription."""

    name: Annotated[Name, about("1-63 letters, digits, '.', '_' or '-'; unique in the tenant")]
    subscription: Annotated[
        Literal["required", "none"],
        about("required: a token's client needs an approved subscription to this API; none: not checked"),
        Meta(extra={"reason": "must be required or none"}),
    ] = "none"


class Tenant(_Section, kw_only=True, frozen=True):
    """A tenant: its issuers, audiences and hosts, and the rules for its requests."""

    name: Annotated[Name, about("1-63 letters, digits, '.', '_' or '-'; the tenant claim names it")]
    issuers: Annotated[RequiredTexts, about("The issuers (configured under issuers) whose tokens it accepts")]
    audiences: Annotated[RequiredTexts, about("Accepted aud values; a token needs one of them")]
    hosts: Annotated[
        tuple[Host, ...], about("Its hosts: exact names, or *.suffix for any subdomain (any case)")
    ] = ()
    mode: Annotated[
        Literal["enforce", "dry-run"],
        about("enforce, or dry-run: decide and record, but allow"),
        Meta(extra={"reason": "must be enforce or dry-run"}),
    ] = "enforce"
    encrypt_only_keys: Annotated[
        tuple[EncryptOnly, ...], about("Symmetric decryption kids accepted without an inner JWS")
    ] = ()
    sender_constraint: Annotated[
        SenderConstraint,
        about("optional: bearer tokens too; required: only DPoP- or certificate-bound tokens"),
    ] = "optional"
    origins: Annotated[
        tuple[Text, ...],
        about("Public origins (https://host[:port]) a DPoP proof's htu may name; empty: what Envoy saw"),
    ] = ()
    client_claim: Annotated[
        Text | UnsetType,
        about("The claim naming a token's client application (subscriptions); not set: azp, then client_id"),
    ] = UNSET
    client_issuer: Annotated[
        Text | UnsetType,
        about(
            "The issuer (one of its issuers) whose client ids its subscriptions name; not set: its "
            "one issuer (required with several issuers and an API requiring subscriptions)"
        ),
    ] = UNSET
    apis: Annotated[
        tuple[Api, ...], about("Named APIs its rules belong to, and whether they require subscriptions")
    ] = ()
    rules: Annotated[tuple[Rule, ...], about("In order: the first that matches a method and path decides")]


class ConfigFile(_Section, kw_only=True, frozen=True):
    """The configuration of envoy-jwe-authz; relative paths resolve against the file's folder."""

    listen: Annotated[
        str | UnsetType, about("gRPC address (host:port); --listen overrides; not set: 127.0.0.1:9001")
    ] = UNSET
    admin_listen: Annotated[
        str | UnsetType, about("/metrics, /healthz, /readyz address; --admin-listen overrides; not set: none")
    ] = UNSET
    http_listen: Annotated[
        str | UnsetType, about("The HTTP door's address; --http-listen overrides; not set: gRPC only")
    ] = UNSET
    token: Annotated[Token, about("Token limits and claim checks")] = Token()
    decryption: Annotated[Decryption, about("Our decryption keys")]
    issuers: Annotated[tuple[Issuer, ...], about("Token issuers and their signing keys")]
    upstream: Annotated[Upstream, about("What an allowed request carries upstream")] = Upstream()
    request: Annotated[Request, about("How both doors read a request")] = Request()
    server: Annotated[Server, about("The gRPC server's limits, drain and JWKS waits")] = Server()
    http: Annotated[Http, about("The HTTP door's limits and path prefix (its address: http_listen)")] = Http()
    telemetry: Annotated[Telemetry, about("What decisions record")] = Telemetry()
    tls: Annotated[Tls | UnsetType, about("TLS on the gRPC listener; not set: plaintext")] = UNSET
    dpop: Annotated[Dpop, about("DPoP proofs of key-bound tokens")] = Dpop()
    store: Annotated[
        Store | UnsetType,
        about("The shared store (Redis/Valkey); not set: every replica keeps its own state"),
    ] = UNSET
    revocation: Annotated[Revocation, about("Token revocation: its source and staleness bound")] = (
        Revocation()
    )
    subscriptions: Annotated[
        Subscriptions, about("API subscriptions of client applications: their source and staleness bound")
    ] = Subscriptions()
    tenants: Annotated[tuple[Tenant, ...], Meta(min_length=1), about("The tenants; at least one")]
