"""The demo: keys, a configuration and a token issuer in a (git-ignored) folder.

Private keys are generated on the machine that runs the demo and never leave
that folder; nothing secret is committed.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from authz.jose.mint import generate_key, public_jwks, write_jwks

__all__ = ["DEMO_CONFIG", "setup_demo"]

DEMO_CONFIG = """\
# Demo configuration made by `authz demo`. Keys are in keys/ beside this file.
listen: {listen}
admin_listen: "127.0.0.1:9002"   # /metrics, /healthz, /readyz
token:
  clock_skew: 30
  max_lifetime: 3600
  typ: [at+jwt]
decryption:
  keys: [keys/decrypt.private.jwks.json]
  content_encryption: [A256GCM, A128GCM, A256CBC-HS512, A128CBC-HS256]
issuers:
  - issuer: https://idp.acme.test
    jwks: keys/acme-idp.public.jwks.json
  - issuer: https://idp.globex.test
    jwks: keys/globex-idp.public.jwks.json
upstream:
  strip_authorization: true
http:                            # the HTTP door, when served (--http-listen): see deploy/envoy/demo-http.yaml
  path_prefix: /ext-authz
tenants:
  - name: acme
    issuers: [https://idp.acme.test]
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
      - name: write-orders
        methods: [POST]
        paths: [/orders]
        scopes: [orders:write]
      - name: admin
        paths: [/admin/**]
        roles: [admin]
        claims: {{email_verified: true}}
  - name: globex
    issuers: [https://idp.globex.test]
    audiences: [orders-api]
    hosts: [api.globex.test]
    rules:
      - name: read-orders
        methods: [GET]
        paths: [/orders, /orders/*]
        scopes: [orders:read]
"""


def setup_demo(folder: Path, listen: str) -> str:
    """Create (or keep) the demo files; returns the instructions to print."""
    keys = folder / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    decrypt = keys / "decrypt.private.jwks.json"
    if not decrypt.exists():
        key = generate_key("RSA-OAEP-256", "demo-enc-1")
        write_jwks(decrypt, {"keys": [_private(key)]}, private=True)
        write_jwks(keys / "decrypt.public.jwks.json", public_jwks([key]), private=False)
    for idp in ("acme", "globex"):
        private = keys / f"{idp}-idp.private.jwks.json"
        if not private.exists():
            key = generate_key("ES256", f"{idp}-sig-1")
            write_jwks(private, {"keys": [_private(key)]}, private=True)
            write_jwks(keys / f"{idp}-idp.public.jwks.json", public_jwks([key]), private=False)
    # Quoted (a JSON string is a YAML string): "[::]:9001" must not read as a YAML list.
    config = DEMO_CONFIG.format(listen=json.dumps(listen))
    (folder / "config.yaml").write_text(config, encoding="utf-8")
    authz = shlex.quote(str(Path(sys.executable).with_name("authz")))
    script = folder / "issue-token"
    script.write_text(
        "#!/bin/sh\n"
        "# Demo token issuer: prints a nested JWE for tenant acme (or globex with TENANT=globex).\n"
        "# Extra arguments go to `authz mint`, e.g. --scope orders:read --role admin.\n"
        'here=$(dirname "$0")\n'
        "tenant=${TENANT:-acme}\n"
        f'exec {authz} mint --encryption-key "$here/keys/decrypt.public.jwks.json" '
        '--signing-key "$here/keys/$tenant-idp.private.jwks.json" '
        '--iss "https://idp.$tenant.test" --aud orders-api --sub demo-user --tenant "$tenant" '
        '--lifetime 600 "$@"\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    # A client's DPoP key (RFC 9449): issue-token --dpop-key binds a token to it, dpop-proof signs with it.
    client = keys / "client-dpop.private.jwks.json"
    if not client.exists():
        write_jwks(client, {"keys": [_private(generate_key("ES256", "demo-client-1"))]}, private=True)
    proof = folder / "dpop-proof"
    proof.write_text(
        "#!/bin/sh\n"
        "# A DPoP proof by the demo client's key, e.g.\n"
        '#   dpop-proof --method GET --url http://api.acme.test/orders --token "$TOKEN" [--nonce N]\n'
        'here=$(dirname "$0")\n'
        f'exec {authz} dpop-proof --key "$here/keys/client-dpop.private.jwks.json" "$@"\n',
        encoding="utf-8",
    )
    proof.chmod(0o755)
    host, _, port = listen.rpartition(":")
    server = f"{host if host not in ('', '0.0.0.0') else '127.0.0.1'}:{port}"  # noqa: S104 - a client address
    return (
        f"Demo keys and config are in {folder}/ (git-ignored; private keys never leave it).\n"
        f"Serving on {listen}. In another terminal:\n"
        f"  TOKEN=$({folder}/issue-token --scope orders:read)\n"
        f'  {authz} check --server {server} --host api.acme.test --path /orders --token "$TOKEN"\n'
        "      # allowed: 200 with x-authz-* headers for the upstream\n"
        f'  {authz} check --server {server} --host api.acme.test --path /admin/users --token "$TOKEN"\n'
        "      # denied: 403 role_missing\n"
        f"  {authz} check --server {server} --host api.acme.test --path /orders\n"
        "      # denied: 401 token_missing\n"
        "A DPoP-bound token (RFC 9449): only the holder of the client key can use it.\n"
        f"  TOKEN=$({folder}/issue-token --scope orders:read --dpop-key {client})\n"
        f'  {authz} check --server {server} --host api.acme.test --path /orders --token "$TOKEN" '
        f"--dpop-key {client}\n"
        f"      # allowed: a fresh proof each time ({folder}/dpop-proof makes one for curl)\n"
        f'  {authz} check --server {server} --host api.acme.test --path /orders --token "$TOKEN"\n'
        "      # denied: 401 dpop_proof_missing (a bound token is no bearer token)\n"
    )


def _private(key: object) -> dict[str, object]:
    return dict(json.loads(key.export(private_key=True)))  # type: ignore[attr-defined]
