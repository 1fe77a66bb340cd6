"""Command line: serve, check-config, schema, keygen, mint, dpop-proof, explain, check, demo, revoke,
revocations, subscriptions."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz import __version__
from authz.cli_admin import (
    revocations_list,
    revoke,
    subscription_move,
    subscriptions_list,
    subscriptions_log,
    unrevoke,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    code: int = args.func(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz", description="Envoy ext_authz for encrypted (JWE) tokens")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gRPC authorization server")
    p.add_argument("--config", required=True, help="configuration file (YAML)")
    p.add_argument("--listen", help="address to listen on, e.g. 0.0.0.0:9001 (overrides the config)")
    p.add_argument(
        "--admin-listen", help="admin HTTP address for /metrics, /healthz, /readyz (overrides the config)"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT); default 1"
    )
    p.add_argument(
        "--http-listen", help="also serve Envoy's HTTP ext_authz protocol here (overrides the config)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("check-config", help="validate a configuration file and its keys")
    p.add_argument("config", help="configuration file (YAML)")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("schema", help="print the configuration's JSON Schema (draft 2020-12)")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the table of every setting instead (docs/configuration.md)",
    )
    p.set_defaults(func=_schema)

    p = sub.add_parser("keygen", help="make a key pair (or secret) as JWK Set files")
    p.add_argument(
        "--alg", required=True, help="e.g. RSA-OAEP-256, ECDH-ES+A256KW, A256KW, dir, RS256, ES256, EdDSA"
    )
    p.add_argument("--kid", required=True, help="the key's id (kid); tokens name their key by it")
    p.add_argument("--size", type=int, help="RSA modulus or symmetric key size in bits")
    p.add_argument("--crv", help="curve: P-256, P-384, P-521, Ed25519, Ed448, X25519")
    p.add_argument(
        "--private", type=Path, required=True, help="private JWK Set file (created 0600; key appended)"
    )
    p.add_argument("--public", type=Path, help="public JWK Set file (key appended); not for symmetric keys")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("mint", help="mint a nested token (JWS inside JWE), for testing a deployment")
    p.add_argument("--encryption-key", type=Path, required=True, help="JWK Set with the recipient's key")
    p.add_argument("--encryption-kid", help="key to use (default: the first)")
    p.add_argument("--signing-key", type=Path, help="issuer's private JWK Set (omit with --encrypt-only)")
    p.add_argument("--signing-kid", help="key to use (default: the first)")
    p.add_argument("--encrypt-only", action="store_true", help="no inner JWS (symmetric keys only)")
    p.add_argument("--enc", default="A256GCM", help="content encryption (enc)")
    p.add_argument("--iss", required=True, help="issuer (iss), as configured under issuers")
    p.add_argument("--aud", action="append", default=[], help="audience (repeatable)")
    p.add_argument("--sub", help="subject (sub)")
    p.add_argument("--tenant", help="tenant claim")
    p.add_argument("--tenant-claim", default="tenant", help="the claim --tenant is written to")
    p.add_argument("--scope", help="space-separated scopes")
    p.add_argument("--role", action="append", default=[], help="role (repeatable)")
    p.add_argument("--claim", action="append", default=[], help="extra claim NAME=JSON (repeatable)")
    p.add_argument("--lifetime", type=int, default=300, help="seconds until exp")
    p.add_argument("--typ", default="at+jwt", help='inner "typ" ("" for none)')
    bind = p.add_mutually_exclusive_group()
    bind.add_argument(
        "--dpop-key", type=Path, help="bind the token to this client key (JWK Set, first key): cnf.jkt"
    )
    bind.add_argument(
        "--client-cert", type=Path, help='bind the token to this client certificate (PEM): cnf["x5t#S256"]'
    )
    p.set_defaults(func=_mint)

    p = sub.add_parser("dpop-proof", help="make a DPoP proof (RFC 9449) for one request, as a client does")
    p.add_argument("--key", type=Path, required=True, help="the client's private key (JWK Set, first key)")
    p.add_argument("--method", required=True, help="the request's method (htm)")
    p.add_argument("--url", required=True, help="the request URL (query and fragment are left out)")
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the access token the proof goes with (ath)")
    token.add_argument("--token-file", type=Path, help="a file holding the access token")
    p.add_argument("--nonce", help="the server's DPoP-Nonce, when it asks for one")
    p.set_defaults(func=_dpop_proof)

    p = sub.add_parser("explain", help="show the decision for a request, through the Check code path")
    _request_args(p)
    p.add_argument("--config", required=True, help="configuration file (YAML)")
    p.set_defaults(func=_explain)

    p = sub.add_parser("check", help="send one Check to a running server and print the answer")
    _request_args(p)
    p.add_argument("--server", default="127.0.0.1:9001", help="the gRPC door's address (host:port)")
    p.set_defaults(func=_check)

    p = sub.add_parser("demo", help="create demo keys, config and token issuer in a folder")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="folder for the keys, config and scripts")
    p.add_argument("--listen", default="127.0.0.1:9001", help="the demo config's gRPC address")
    p.set_defaults(func=_demo)

    p = sub.add_parser("revoke", help="revoke tokens in the shared store (every replica within a second)")
    _store_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", help="one token, by its jti")
    what.add_argument(
        "--subject", help="every token of this subject (sub) of --issuer issued before --before"
    )
    what.add_argument("--client", help="every token of this client (azp or client_id) of --issuer, likewise")
    p.add_argument("--issuer", help="the issuer (iss) of --subject or --client")
    p.add_argument(
        "--before", help="tokens issued (iat) before this time: RFC 3339 or epoch seconds; default now"
    )
    p.add_argument(
        "--expires",
        help="when the entry may go (RFC 3339 or epoch seconds): for --jti the token's exp; "
        "default: long enough for any token of max_lifetime",
    )
    p.set_defaults(func=revoke)

    p = sub.add_parser("revocations", help="list or remove revocation entries in the shared store")
    rsub = p.add_subparsers(metavar="ACTION")
    q = rsub.add_parser("list", help="print the live entries (jti as its hash), one JSON object a line")
    _store_args(q)
    q.set_defaults(func=revocations_list)
    q = rsub.add_parser("unrevoke", help="remove entries: by jti, jti hash, or subject or client and issuer")
    _store_args(q)
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", help="the entry of one token, by its jti")
    what.add_argument("--jti-hash", help="the same, by the jti's hash, as revocations list prints it")
    what.add_argument("--subject", help="the entry of a subject (sub) of --issuer")
    what.add_argument("--client", help="the entry of a client (azp or client_id) of --issuer")
    q.add_argument("--issuer", help="the issuer (iss) of --subject or --client")
    q.set_defaults(func=unrevoke)

    p = sub.add_parser(
        "subscriptions",
        help="the API subscription workflow: request, approve, reject, revoke, list, log",
        description="Client applications' subscriptions to APIs, in the store or the subscriptions "
        "file of --config (every replica enforces a change within a second from the store, or at its "
        "next reload of the file). A move the workflow does not allow changes nothing.",
    )
    ssub = p.add_subparsers(metavar="ACTION")
    for action, text in (
        ("request", "ask for a subscription (pending until decided)"),
        ("approve", "approve a pending subscription (its client's calls start to pass)"),
        ("reject", "reject a pending subscription"),
        ("revoke", "revoke an approved subscription (its client's calls stop passing)"),
    ):
        q = ssub.add_parser(action, help=text)
        q.add_argument("--config", required=True, help="the configuration file (its tenants, APIs, store)")
        q.add_argument("--tenant", required=True, help="the tenant")
        q.add_argument(
            "--client", required=True, help="the client application (its tokens' azp or client_id)"
        )
        q.add_argument("--api", required=True, help="one of the tenant's apis")
        q.add_argument(
            "--by",
            required=action != "request",
            help="who makes the change (kept in the audit log)"
            + ("; default: the client" if action == "request" else ""),
        )
        q.add_argument("--reason", default="", help="why (kept in the audit log)")
        if action == "approve":
            q.add_argument(
                "--expires", help="the approval ends then: RFC 3339 or epoch seconds; default: never"
            )
        q.set_defaults(func=subscription_move, action=action)
    q = ssub.add_parser("list", help="print the subscriptions, one JSON object a line")
    q.add_argument("--config", required=True, help="the configuration file")
    q.add_argument("--tenant", help="only this tenant's")
    q.add_argument("--client", help="only this client's")
    q.add_argument("--api", help="only this API's")
    q.add_argument("--status", choices=["pending", "approved", "rejected", "revoked"], help="only these")
    q.set_defaults(func=subscriptions_list)
    q = ssub.add_parser("log", help="print the audit log, oldest first, one JSON object a line")
    q.add_argument("--config", required=True, help="the configuration file")
    q.add_argument("--tenant", help="only this tenant's")
    q.add_argument("--client", help="only this client's")
    q.add_argument("--api", help="only this API's")
    q.set_defaults(func=subscriptions_log)
    return parser


def _store_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the store (and token.max_lifetime) of this configuration file")
    where.add_argument("--store", help="the store's URL: redis://host:port/db, rediss://, redis+sentinel://")
    p.add_argument("--password-file", type=Path, help="with --store: file holding the store's password")
    p.add_argument("--key-prefix", default="authz:", help="with --store: the key prefix (default authz:)")
    p.add_argument(
        "--max-lifetime",
        type=float,
        default=86400 + 30,
        help="with --store: seconds a subject or client entry lives (token.max_lifetime + clock_skew)",
    )


def _request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="GET", help="the request's method, exactly as sent")
    p.add_argument("--path", default="/", help="the request's path (and query)")
    p.add_argument("--host", required=True, help="the request's Host")
    p.add_argument("--tenant", help="the route's context_extensions tenant")
    p.add_argument("--token", help="bearer token (or use --token-file)")
    p.add_argument("--token-file", type=Path, help="a file holding the token")
    p.add_argument("--header", action="append", default=[], help="extra header NAME:VALUE (repeatable)")
    proof = p.add_mutually_exclusive_group()
    proof.add_argument(
        "--dpop-key", type=Path, help="send the token with the DPoP scheme and a fresh proof by this key"
    )
    proof.add_argument("--dpop", help="send the token with the DPoP scheme and this proof")
    p.add_argument("--nonce", help="with --dpop-key: the server's DPoP-Nonce")
    p.add_argument(
        "--client-cert", type=Path, help="the client certificate (PEM) of the connection, as Envoy sends it"
    )


def _serve(args: argparse.Namespace) -> int:
    from authz.app.serve import serve
    from authz.telemetry.logs import setup_logging

    setup_logging()
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        from authz.app.workers import supervise

        return asyncio.run(
            supervise(args.config, args.listen, args.admin_listen, args.workers, args.http_listen)
        )
    from authz.app.workers import WorkerLink

    link = WorkerLink.from_env()
    return asyncio.run(
        serve(args.config, args.listen, args.admin_listen, http_listen=args.http_listen, worker=link)
    )


def _check_config(args: argparse.Namespace) -> int:
    from authz.config import load_config
    from authz.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tenants, keys = config.snapshot.tenants.by_name, config.snapshot.token_keys
    rules = sum(len(t.rules) for t in tenants.values())
    print(
        f"ok: {config.source}: {len(tenants)} tenant(s), {rules} rule(s), "
        f"{len(keys.decryption)} decryption key(s), {len(keys.issuers)} issuer(s); "
        f"sha256 {config.digest}"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from authz.config.schema import reference_table, schema_text

    sys.stdout.write(reference_table() if args.markdown else schema_text())
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from authz.jose.mint import generate_key, public_jwks, write_jwks

    try:
        key = generate_key(args.alg, args.kid, size=args.size, crv=args.crv)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Read and check both files before writing either: a refused kid changes nothing.
    public_path = args.public if key.get("kty") != "oct" else None
    entries = [(args.private, json.loads(key.export(private_key=True)), True)]
    if public_path is not None:
        entries.append((public_path, public_jwks([key])["keys"][0], False))
    updated = []
    for path, entry, private in entries:
        jwks = _read_set(path, entry["kid"])
        if jwks is None:
            return 1
        jwks["keys"].append(entry)
        updated.append((path, jwks, private))
    for path, jwks, private in updated:
        write_jwks(path, jwks, private=private)
    if key.get("kty") == "oct":
        print(f"wrote {args.alg} secret {args.kid} to {args.private} (share it with the issuer only)")
    elif public_path is None:
        print(f"wrote private key {args.kid} to {args.private} (no --public given)")
    else:
        print(f"wrote {args.alg} key {args.kid}: private {args.private}, public {public_path}")
    return 0


def _read_set(path: Path, kid: str) -> dict[str, Any] | None:
    """The JWK Set in ``path`` (empty if there is no file), or None after printing why not."""
    if not path.exists():
        return {"keys": []}
    try:
        jwks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        print(f'error: {path} is not a JWK Set (an object with a "keys" list)', file=sys.stderr)
        return None
    if any(isinstance(k, dict) and k.get("kid") == kid for k in jwks["keys"]):
        print(f"error: {path} already has a key {kid!r}", file=sys.stderr)
        return None
    return jwks


def _mint(args: argparse.Namespace) -> int:
    from jwcrypto.common import JWException

    from authz.jose.mint import mint, read_jwks

    if not args.encrypt_only and args.signing_key is None:
        print("error: --signing-key is required unless --encrypt-only", file=sys.stderr)
        return 2
    try:
        encryption_key = _pick(read_jwks(args.encryption_key), args.encryption_kid)
        signing_key = None if args.encrypt_only else _pick(read_jwks(args.signing_key), args.signing_kid)
    except (OSError, ValueError, KeyError, TypeError, IndexError, JWException) as exc:
        print(f"error: cannot read a key file: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    now = int(time.time())
    claims: dict[str, Any] = {"iss": args.iss, "iat": now, "nbf": now, "exp": now + args.lifetime}
    if args.aud:
        claims["aud"] = args.aud[0] if len(args.aud) == 1 else args.aud
    for name, value in (("sub", args.sub), (args.tenant_claim, args.tenant), ("scope", args.scope)):
        if value:
            claims[name] = value
    if args.role:
        claims["roles"] = args.role
    try:
        cnf = _cnf(args)
    except (OSError, ValueError, KeyError, IndexError, JWException) as exc:
        print(f"error: cannot read the key or certificate to bind to: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    if cnf:
        claims["cnf"] = cnf
    for item in args.claim:
        name, _, value = item.partition("=")
        try:
            claims[name] = json.loads(value)
        except ValueError:
            print(f"error: --claim {name}: the value must be JSON (e.g. {name}=true or {name}='\"text\"')",
                  file=sys.stderr)  # fmt: skip
            return 2
    print(
        mint(
            claims, encryption_key=encryption_key, signing_key=signing_key, enc=args.enc, typ=args.typ or None
        )
    )
    return 0


def _cnf(args: argparse.Namespace) -> dict[str, str] | None:
    """The confirmation claim (RFC 7800) for --dpop-key or --client-cert, or None."""
    from authz.jose.mint import certificate_x5t, dpop_jkt, read_jwks

    if args.dpop_key is not None:
        return {"jkt": dpop_jkt(read_jwks(args.dpop_key)[0])}
    if args.client_cert is not None:
        return {"x5t#S256": certificate_x5t(args.client_cert.read_bytes())}
    return None


def _dpop_proof(args: argparse.Namespace) -> int:
    from jwcrypto.common import JWException

    from authz.jose.mint import dpop_proof, read_jwks

    try:
        key = read_jwks(args.key)[0]
        token = args.token or args.token_file.read_text().strip()
        print(dpop_proof(key, method=args.method, url=args.url, token=token, nonce=args.nonce))
    except (OSError, ValueError, KeyError, IndexError, TypeError, JWException) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def _pick(keys: list[Any], kid: str | None) -> Any:
    if kid is None:
        return keys[0]
    for key in keys:
        if key.get("kid") == kid:
            return key
    raise SystemExit(f"error: no key {kid!r}")


def _check_request(args: argparse.Namespace) -> Any:
    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    message = CheckRequest()
    http = message.attributes.request.http
    http.method = args.method
    http.path = args.path
    http.host = args.host
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    http.headers[":authority"] = args.host
    http.headers[":path"] = args.path
    http.headers[":method"] = args.method
    token = args.token or (args.token_file.read_text().strip() if args.token_file else None)
    if token:
        proof = args.dpop
        if args.dpop_key is not None:
            from authz.jose.mint import dpop_proof, read_jwks

            url = f"{http.scheme}://{args.host}{args.path}"
            proof = dpop_proof(
                read_jwks(args.dpop_key)[0], method=args.method, url=url, token=token, nonce=args.nonce
            )
        http.headers["authorization"] = f"{'DPoP' if proof else 'Bearer'} {token}"
        if proof:
            http.headers["dpop"] = proof
    if args.client_cert is not None:
        from urllib.parse import quote

        # As Envoy sends it (include_peer_certificate): the URL-encoded PEM.
        message.attributes.source.certificate = quote(args.client_cert.read_text(), safe="")
    for item in args.header:
        name, _, value = item.partition(":")
        http.headers[name.strip().lower()] = value.strip()
    if args.tenant:
        message.attributes.context_extensions["tenant"] = args.tenant
    return message


def _explain(args: argparse.Namespace) -> int:
    from authz.config import SnapshotHolder, load_config
    from authz.errors import ConfigError
    from authz.grpc.messages import to_check_response
    from authz.grpc.servicer import evaluate

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.revocation.entries:
        from authz.app.revocation import attach
        from authz.core.revocation import RevocationSet

        config = attach(config, RevocationSet(config.revocation.entries))  # the revocation file's entries
    if config.subscriptions.records:
        from authz.app.subscriptions import attach as attach_subscriptions
        from authz.core.subscription import SubscriptionSet

        config = attach_subscriptions(config, SubscriptionSet(config.subscriptions.records))
    decision, request, request_id = evaluate(SnapshotHolder(config), _check_request(args), time.time)
    response = to_check_response(decision, request_id, request.headers if request else ())
    result = {
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "tenant": decision.tenant,
        "rule": decision.rule,
        "binding": decision.binding.value,
        "detail": decision.detail or None,
        "grpc_status": response.status.code,
        "http_status": 200 if decision.allowed else response.denied_response.status.code,
    }
    print(json.dumps(result, indent=2))
    return 0 if decision.allowed else 1


def _check(args: argparse.Namespace) -> int:
    import grpc

    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub

    with grpc.insecure_channel(args.server) as channel:
        try:
            stub = AuthorizationStub(channel)  # type: ignore[no-untyped-call]
            response = stub.Check(_check_request(args), timeout=5)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}", file=sys.stderr)
            return 2
    if response.HasField("ok_response"):
        ok = response.ok_response
        headers = {h.header.key: h.header.value for h in ok.headers}
        answer: dict[str, Any] = {
            "status": "allowed",
            "upstream_headers": headers,
            "removed": list(ok.headers_to_remove),
        }
        if ok.response_headers_to_add:
            answer["client_headers"] = {h.header.key: h.header.value for h in ok.response_headers_to_add}
        print(json.dumps(answer, indent=2))
        return 0
    denied = response.denied_response
    print(
        json.dumps(
            {
                "status": "denied",
                "http_status": denied.status.code,
                "headers": {h.header.key: h.header.value for h in denied.headers},
                "body": json.loads(denied.body or "null"),
            },
            indent=2,
        )
    )
    return 1


def _demo(args: argparse.Namespace) -> int:
    from authz.app.demo import setup_demo

    print(setup_demo(args.dir, args.listen))
    return 0
