"""A test world: real key files, a real config file, a token minter, a fixed clock.

Keys are generated once per test session (RSA generation is slow) into a
temporary folder; the config file references them by relative path, exactly as
an operator's would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jwcrypto.jwk import JWK

from authz.config import Config, load_config
from authz.errors import REASONS, AuthzError
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.jose.mint import generate_key, mint, public_jwks, write_jwks
from authz.jose.nested import TokenKeys, validate_token

NOW = 1_900_000_000  # the tests' clock: tokens are minted and checked against it

ACME_IDP = "https://idp.acme.test"
GLOBEX_IDP = "https://idp.globex.test"
SHARED_IDP = "https://idp.shared.test"  # serves two tenants: tokens must name theirs

# Outer (key management) algorithms of the matrix, with the kid of our key for each.
OUTER_ALGS = {
    "RSA-OAEP-256": "enc-rsa-oaep-256",
    "RSA-OAEP": "enc-rsa-oaep",
    "ECDH-ES": "enc-ecdh-es",
    "ECDH-ES+A256KW": "enc-ecdh-es-a256kw",
    "A256KW": "enc-a256kw",
    "A128GCMKW": "enc-a128gcmkw",
    "dir": "enc-dir",
}
# Inner (signature) algorithms of the matrix: acme's IdP has one key of each.
INNER_ALGS = {"RS256": "acme-rs256", "PS256": "acme-ps256", "ES256": "acme-es256", "EdDSA": "acme-eddsa"}
CONTENT_ENCRYPTIONS = ("A256GCM", "A128CBC-HS256")

CONFIG = """\
listen: 127.0.0.1:0
token:
  clock_skew: 30
  max_lifetime: 3600
  max_bytes: 8192
  tenant_claim: tenant
decryption:
  keys: [keys/decrypt.jwks.json]
  content_encryption: [A256GCM, A128GCM, A256CBC-HS512, A128CBC-HS256]
issuers:
  - issuer: https://idp.acme.test
    jwks: keys/acme-idp.jwks.json
  - issuer: https://idp.globex.test
    jwks: keys/globex-idp.jwks.json
  - issuer: https://idp.shared.test
    jwks: keys/shared-idp.jwks.json
upstream:
  strip_authorization: true
tenants:
  - name: acme
    issuers: [https://idp.acme.test, https://idp.shared.test]
    audiences: [orders-api]
    hosts: [api.acme.test, "*.acme.test"]
    mode: enforce
    rules:
      - name: health
        paths: [/healthz]
        public: true
      - name: read-orders
        methods: [GET, HEAD]
        paths: [/orders, /orders/*]
        scopes: [orders:read]
      - name: admin
        paths: [/admin/**]
        roles: [admin]
        claims: {email_verified: true}
  - name: globex
    issuers: [https://idp.globex.test]
    audiences: [orders-api]
    hosts: [api.globex.test]
    rules:
      - name: read-orders
        methods: [GET]
        paths: [/orders, /orders/*]
        scopes: [orders:read]
  - name: initech
    issuers: [https://idp.shared.test]
    audiences: [orders-api]
    hosts: [api.initech.test]
    rules:
      - name: everything
        paths: ["/**"]
  - name: dry
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.dry.test]
    mode: dry-run
    rules:
      - name: read-orders
        methods: [GET]
        paths: [/orders]
        scopes: [orders:read]
  - name: legacy
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.legacy.test]
    encrypt_only_keys: [enc-a256kw, enc-dir]
    rules:
      - name: everything
        paths: ["/**"]
"""


@dataclass
class World:
    """Key files, config file and private keys of a complete test deployment."""

    root: Path
    decryption_keys: dict[str, JWK] = field(default_factory=dict)  # kid -> private key
    signing_keys: dict[str, JWK] = field(default_factory=dict)  # kid -> private key
    signing_issuer: dict[str, str] = field(default_factory=dict)  # kid -> issuer

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def config(self) -> Config:
        return load_config(self.config_path)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for tenant acme at NOW; ``None`` values remove a claim."""
        claims: dict[str, Any] = {
            "iss": ACME_IDP,
            "sub": "user-1",
            "aud": "orders-api",
            "tenant": "acme",
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 300,
            "scope": "orders:read",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        outer: str = "RSA-OAEP-256",
        enc: str = "A256GCM",
        inner: str | None = "ES256",
        signing_kid: str | None = None,
        typ: str | None = "at+jwt",
        extra_outer: Mapping[str, Any] | None = None,
        extra_inner: Mapping[str, Any] | None = None,
    ) -> str:
        """A token minted by an independent implementation (jwcrypto's high-level API)."""
        kid = signing_kid or (INNER_ALGS[inner] if inner else None)
        return mint(
            claims if claims is not None else self.claims(),
            encryption_key=self.decryption_keys[OUTER_ALGS[outer]],
            signing_key=self.signing_keys[kid] if kid else None,
            enc=enc,
            typ=typ,
            extra_outer=extra_outer,
            extra_inner=extra_inner,
        )


def build_world(root: Path) -> World:
    world = World(root)
    keys = root / "keys"
    for alg, kid in OUTER_ALGS.items():
        world.decryption_keys[kid] = generate_key(alg, kid, size=256 if alg == "dir" else None)
    write_jwks(keys / "decrypt.jwks.json", _jwks(world.decryption_keys.values()), private=True)
    idps = {
        ACME_IDP: ("acme-idp", INNER_ALGS),
        GLOBEX_IDP: ("globex-idp", {"ES256": "globex-es256"}),
        SHARED_IDP: ("shared-idp", {"ES256": "shared-es256"}),
    }
    for issuer, (name, algs) in idps.items():
        generated = [generate_key(alg, kid) for alg, kid in algs.items()]
        for key in generated:
            world.signing_keys[key["kid"]] = key
            world.signing_issuer[key["kid"]] = issuer
        write_jwks(keys / f"{name}.jwks.json", public_jwks(generated), private=False)
    world.config_path.write_text(CONFIG, encoding="utf-8")
    return world


def _jwks(keys: Any) -> dict[str, Any]:
    return {"keys": [json.loads(k.export(private_key=True)) for k in keys]}


def check_request(
    *,
    method: str = "GET",
    path: str = "/orders",
    host: str = "api.acme.test",
    token: str | None = None,
    tenant: str | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str = "req-1",
) -> CheckRequest:
    """A CheckRequest as Envoy sends it (plain ``headers`` map form)."""
    message = CheckRequest()
    http = message.attributes.request.http
    http.id = "1234"
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    http.headers.update({":authority": host, ":path": path, ":method": method, "x-request-id": request_id})
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    http.headers.update(headers or {})
    if tenant is not None:
        message.attributes.context_extensions["tenant"] = tenant
    return message


def token_outcome(token: str, keys: TokenKeys) -> str:
    """``ok`` or the reason code of validate_token; any other exception fails the test where it is raised."""
    try:
        validate_token(token, keys)
    except AuthzError as exc:
        code, detail = exc.code, exc.detail
    else:
        return "ok"
    assert code in REASONS
    assert code != "token_invalid", f"unexpected exception inside the token layer: {detail}"
    return code


def subscriptions_config(world: World, name: str = "subscriptions-config.yaml", *, head: str = "") -> Path:
    """The world's config with acme's ``read-orders`` rule in API ``orders``, which requires an
    approved subscription of the token's client (a client of idp.acme.test, its client_issuer),
    and ``admin`` in API ``admin`` (none needed).

    ``head``: YAML put before the rest (a ``store:`` or ``subscriptions:`` section). Written
    beside the world's config (so its relative key paths hold); returns its path.
    """
    acme = "    mode: enforce\n    rules:\n"
    apis = (
        "    client_issuer: https://idp.acme.test\n"
        "    mode: enforce\n"
        "    apis:\n"
        "      - name: orders\n"
        "        subscription: required\n"
        "      - name: admin\n"
        "    rules:\n"
    )
    text = CONFIG.replace(acme, apis, 1)
    text = text.replace(
        "      - name: read-orders\n        methods: [GET, HEAD]\n",
        "      - name: read-orders\n        api: orders\n        methods: [GET, HEAD]\n",
        1,
    )
    text = text.replace(
        "      - name: admin\n        paths:", "      - name: admin\n        api: admin\n        paths:", 1
    )
    assert text.count("api: ") == 2, "the world's CONFIG changed: update subscriptions_config"
    path = world.root / name
    path.write_text(head + text, encoding="utf-8")
    return path
