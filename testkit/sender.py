"""Sender-constrained requests for tests and benchmarks: DPoP-bound and certificate-bound tokens,
their proofs and client certificates, and one process's two doors on one holder (one replay store).

The thumbprints here are computed independently of authz.jose.thumbprint (RFC 7638 by hand,
RFC 8705 from pyca's certificate fingerprint), so a test checks ours against them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz.config import Config, SnapshotHolder, load_config
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.grpc.servicer import check
from authz.http.door import HttpDoor
from authz.telemetry.recorder import Telemetry
from testkit import dpop
from testkit.world import CONFIG, NOW, World

__all__ = [
    "SENDER_TENANTS",
    "URL",
    "Answer",
    "Cert",
    "Doors",
    "dpop_headers",
    "jkt",
    "make_cert",
    "nonce_keys",
    "proof",
    "write_cert",
    "write_config",
]

URL = "https://api.acme.test/orders"  # what the doors see: scheme https, Host api.acme.test, /orders

# Tenants beside the world's: one that takes bound tokens only (with public origins), one in
# dry-run, one with a rule that wants a bound token.
SENDER_TENANTS = """\
  - name: bound
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.bound.test]
    sender_constraint: required
    origins: ["https://Public.Bound.Test:8443", "https://bound.example"]
    rules:
      - name: orders
        paths: [/orders]
      - name: open
        paths: [/open]
        sender_constraint: optional
  - name: dryb
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.dryb.test]
    mode: dry-run
    sender_constraint: required
    rules:
      - name: orders
        paths: [/orders]
  - name: ruled
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.ruled.test]
    rules:
      - name: admin
        paths: [/admin]
        sender_constraint: required
      - name: orders
        paths: [/orders]
"""


def nonce_keys(*kids: str) -> dict[str, Any]:
    """A nonce key file's JSON: one fresh 32-byte oct key per kid (the first signs)."""
    return {
        "keys": [
            {"kty": "oct", "kid": kid, "k": dpop.b64(secrets.token_bytes(32)), "alg": "HS256"} for kid in kids
        ]
    }


def write_config(world: World, root: Path, *, dpop_section: str = "", extra: str = "") -> Path:
    """The world's config plus SENDER_TENANTS, ``dpop_section`` (YAML under ``dpop:``) and
    ``extra`` top-level YAML, in ``root`` beside a copy of the world's keys and a nonce key file
    (keys/nonce.jwks.json, kids n1)."""
    if not (root / "keys").exists():
        shutil.copytree(world.root / "keys", root / "keys")
    nonce_file = root / "keys" / "nonce.jwks.json"
    if not nonce_file.exists():
        nonce_file.write_text(json.dumps(nonce_keys("n1")), encoding="utf-8")
    text = CONFIG + SENDER_TENANTS
    if dpop_section:
        text += "dpop:\n" + "".join(f"  {line}\n" for line in dpop_section.splitlines())
    text += extra
    path = root / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def jkt(key: Any) -> str:
    """RFC 7638 SHA-256 thumbprint of a pyca key's public JWK, computed here (not by authz)."""
    jwk = dpop.public_jwk(key)
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    text = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return dpop.b64(hashlib.sha256(text.encode()).digest())


def proof(
    key: Any,
    token: str,
    *,
    method: str = "GET",
    url: str = URL,
    iat: float = NOW,
    alg: str = "ES256",
    nonce: str | None = None,
    **over: Any,
) -> str:
    """A proof by ``key`` for ``method url`` with ``token`` (``ath``), a fresh jti; ``over``
    replaces claims (None removes one)."""
    body = dpop.claims(**{"htm": method, "htu": url, "iat": iat, "ath": dpop.ath(token), **over})
    if nonce is not None:
        body["nonce"] = nonce
    return dpop.mint(alg, key, body=body)


def dpop_headers(token: str, proof_value: str | None, scheme: str = "DPoP") -> list[tuple[str, str]]:
    headers = [("authorization", f"{scheme} {token}")]
    if proof_value is not None:
        headers.append(("dpop", proof_value))
    return headers


@dataclass(frozen=True)
class Cert:
    """A self-signed client certificate in every form the tests need."""

    der: bytes
    pem: str
    key: Any = field(repr=False)

    @property
    def x5t(self) -> str:
        """RFC 8705 cnf["x5t#S256"], from pyca's fingerprint."""
        return dpop.b64(self.fingerprint)

    @property
    def fingerprint(self) -> bytes:
        return x509.load_der_x509_certificate(self.der).fingerprint(hashes.SHA256())

    @property
    def xfcc(self) -> str:
        """The x-forwarded-client-cert Envoy sets with SANITIZE_SET (Hash= and Subject=)."""
        return f'Hash={self.fingerprint.hex()};Subject="CN=client"'

    @property
    def envoy(self) -> str:
        """CheckRequest attributes.source.certificate: the URL-encoded PEM."""
        return quote(self.pem, safe="")


def make_cert(
    name: str = "client", *, issuer: Cert | None = None, ca: bool = False, dns: str | None = None
) -> Cert:
    """A certificate for ``name``: self-signed, or signed by ``issuer``; ``ca``: a CA's;
    ``dns``: a server's (subjectAltName: that name and 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else x509.load_der_x509_certificate(issuer.der).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns is not None:
        names = [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(key if issuer is None else issuer.key, hashes.SHA256())
    return Cert(
        certificate.public_bytes(serialization.Encoding.DER),
        certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key,
    )


def write_cert(cert: Cert, folder: Path, name: str) -> tuple[Path, Path]:
    """``name``.pem and ``name``-key.pem in ``folder``: the certificate and its private key."""
    pem, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    pem.write_text(cert.pem, encoding="ascii")
    key.write_bytes(
        cert.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem, key


@dataclass(frozen=True)
class Answer:
    """One door's answer: status, reason (allows too), the headers for the client and upstream."""

    status: int
    reason: str
    decision: str  # allow, deny or dry-run-deny
    client: dict[str, str]  # deny headers, or an allow's headers for the client's response
    upstream: dict[str, str]  # an allow's identity headers
    removed: frozenset[str] = frozenset()

    @property
    def challenge(self) -> str | None:
        return self.client.get("www-authenticate")

    @property
    def nonce(self) -> str | None:
        return self.client.get("dpop-nonce")


class Doors:
    """Both doors of one process: one holder, so one replay store, and one telemetry."""

    def __init__(self, config: Config | Path, clock: Any = None) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.now = float(NOW)
        self.clock = clock or (lambda: self.now)
        self.holder = SnapshotHolder(self.config, clock=self.clock)
        self.telemetry = Telemetry()
        self.door = HttpDoor(self.holder, self.clock, self.telemetry, self.config.http)

    def grpc(
        self,
        headers: Sequence[tuple[str, str]] = (),
        *,
        method: str = "GET",
        path: str = "/orders",
        host: str = "api.acme.test",
        scheme: str = "https",
        peer_certificate: str = "",
    ) -> Answer:
        """Through the gRPC door, headers in header_map (Envoy's encode_raw_headers: one entry each)."""
        message = CheckRequest()
        http = message.attributes.request.http
        http.id = "1234"
        http.method, http.path, http.host, http.scheme = method, path, host, scheme
        http.protocol = "HTTP/1.1"
        pairs = [(":authority", host), (":path", path), (":method", method), ("x-request-id", "req-1")]
        for name, value in [*pairs, *headers]:
            entry = http.header_map.headers.add()
            entry.key = name
            entry.raw_value = value.encode("latin-1")
        message.attributes.source.certificate = peer_certificate
        response = check(self.holder, message, self.clock, self.telemetry)
        fields = response.dynamic_metadata.fields
        reason, decision = fields["reason"].string_value, fields["decision"].string_value
        if response.HasField("ok_response"):
            ok = response.ok_response
            return Answer(
                200,
                reason,
                decision,
                {h.header.key: h.header.value for h in ok.response_headers_to_add},
                {h.header.key: h.header.value for h in ok.headers},
                frozenset(ok.headers_to_remove),
            )
        denied = response.denied_response
        assert json.loads(denied.body)["reason"] == reason
        return Answer(int(denied.status.code), reason, decision, _one_each(denied.headers), {})

    def http(
        self,
        headers: Sequence[tuple[str, str]] = (),
        *,
        method: str = "GET",
        path: str = "/orders",
        host: str = "api.acme.test",
        scheme: str | None = "https",
    ) -> Answer:
        """Through the HTTP door's raw entry point (its memo included); ``scheme``: the
        x-forwarded-proto Envoy sets (None: none)."""
        pairs = [("host", host), ("x-request-id", "req-1")]
        if scheme is not None:
            pairs.append(("x-forwarded-proto", scheme))
        raw = [(k.encode(), v.encode("latin-1")) for k, v in [*pairs, *headers]]
        before = dict(self.telemetry.checks.values)
        answer = self.door.answer_raw(method.encode(), path.encode(), raw)
        assert isinstance(answer, bytes)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        found = [tuple(line.split(": ", 1)) for line in lines[1:]]
        (tenant_decision_reason,) = _counted(before, self.telemetry.checks.values)
        _, decision, reason = tenant_decision_reason
        if status == 200:
            client = {k: v for k, v in found if k in ("dpop-nonce", "cache-control")}
            upstream = {k: v for k, v in found if k.startswith("x-authz-")}
            removed = next((v for k, v in found if k == "x-envoy-auth-headers-to-remove"), "")
            return Answer(
                200, reason, decision, client, upstream, frozenset(filter(None, removed.split(",")))
            )
        client = {k: v for k, v in found if k not in ("content-length",)}
        assert json.loads(body)["reason"] == reason
        return Answer(status, reason, decision, client, {})

    def both(self, **kwargs: Any) -> tuple[Answer, Answer]:
        """The same request through the gRPC door, then the HTTP door (one replay store)."""
        return self.grpc(**kwargs), self.http(**kwargs)


def _one_each(options: Iterable[Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for option in options:
        assert option.header.key not in found, f"two {option.header.key} headers"
        found[option.header.key] = option.header.value
    return found


def _counted(before: Mapping[Any, float], after: Mapping[Any, float]) -> list[Any]:
    return [labels for labels, value in after.items() if value != before.get(labels, 0)]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
