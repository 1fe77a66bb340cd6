"""Write the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

    python -m fuzz.make_corpus            # from the repository root; replaces the seeds

The tokens are minted by jwcrypto (``World.token``) with the keys of the fuzz
world (fuzz/world.py: derived from fixed seeds, so the targets, which build
the same keys at start-up, can decrypt and verify them). No key is written
here: the world lives in a temporary folder. Encryption and ECDSA are
randomized, so every run writes other token bytes; commit a run's output as a
whole (the targets read ``fuzz_token/valid-*`` as "our issuers' tokens"; the
runner, fuzz/run.py, then empties the working corpora made from older seeds).

- ``fuzz_token/``: ``valid-*`` every token of the algorithm matrix (acme) and
  tokens of the other tenants; ``wycheproof-jwe-*`` and ``cookbook-*`` the
  published JWE vectors (other keys: they exercise the parsing, and end at
  ``decryption_key_unknown`` / ``decryption_failed``).
- ``fuzz_inner/``: one mode byte (see fuzz_inner.py) and a plaintext: the
  inner JWSs of the matrix, their claims sets, and the Wycheproof JWS vectors.
- ``fuzz_check/``: serialized CheckRequests: the matrix tokens on protected
  and public paths, both header forms, context extensions, smuggled identity
  headers, several or malformed authorization headers, dry-run and other
  tenants' hosts.
- ``fuzz_http/``: a mode byte (where the first chunk ends) and HTTP/1.1 bytes
  on one connection: repeated requests (answered from the memo), the same
  cases as fuzz_check, pipelines, trace headers, malformed requests.
- ``fuzz_wire/``: serialized CheckRequests in the forms the memo's wire reading reads (both
  header forms, raw values that are not UTF-8, routes, peers, forwarded certificates, trace
  headers) and a few it leaves to protobuf; no valid token is needed (fixed bytes: the
  seeds do not change from run to run).

``python -m fuzz.make_corpus --http-only`` writes only ``fuzz_http/``, from the
``valid-*`` tokens already in ``fuzz_token/``; ``--wire-only`` writes only ``fuzz_wire/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from fuzz.world import CORPUS, temporary_world
from testkit.world import (
    CONTENT_ENCRYPTIONS,
    GLOBEX_IDP,
    INNER_ALGS,
    OUTER_ALGS,
    SHARED_IDP,
    World,
    check_request,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
MODE_NESTED_DIR, MODE_CLAIMS_DIR, MODE_HEADER = 0, 1, 4  # fuzz_inner's mode bytes (see fuzz_inner.py)
OUTER_HEADERS = (
    {"alg": "dir", "enc": "A256GCM", "kid": "enc-dir", "cty": "JWT"},
    {"alg": "dir", "enc": "A256GCM", "cty": "JWT"},
    {"alg": "dir", "enc": "A256GCM", "kid": "enc-dir", "cty": "application/jwt", "typ": "JWE"},
    {"alg": "dir", "enc": "A256GCM", "kid": "enc-dir", "cty": "JWT", "zip": "DEF"},
    {"alg": "dir", "enc": "A256GCM", "kid": "enc-dir", "cty": "JWT", "crit": ["exp"], "exp": 1},
    {
        "alg": "A128GCMKW",
        "enc": "A256GCM",
        "kid": "enc-a128gcmkw",
        "iv": "AAAAAAAAAAAAAAAA",
        "tag": "AAAAAAAAAAAAAAAAAAAAAA",
    },
    {
        "alg": "ECDH-ES",
        "enc": "A256GCM",
        "kid": "enc-ecdh-es",
        "epk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
    },
    {
        "alg": "ECDH-ES+A256KW",
        "enc": "A256GCM",
        "epk": {"kty": "OKP", "crv": "X25519", "x": "AA"},
        "apu": "AA",
    },
)


def matrix_name(outer: str, enc: str, inner: str) -> str:
    return f"acme-{outer}-{enc}-{inner}"


def valid_tokens(world: World) -> dict[str, str]:
    """Name -> token: the matrix for acme, other tenants, encrypt-only tokens for legacy."""
    tokens = {}
    for outer in OUTER_ALGS:
        for enc in CONTENT_ENCRYPTIONS:
            for inner in INNER_ALGS:
                claims = world.claims(jti=f"{outer}/{enc}/{inner}")
                tokens[matrix_name(outer, enc, inner)] = world.token(
                    claims, outer=outer, enc=enc, inner=inner
                )
    tokens["globex-ES256"] = world.token(
        world.claims(iss=GLOBEX_IDP, tenant="globex", jti="globex"), signing_kid="globex-es256"
    )
    tokens["initech-ES256"] = world.token(
        world.claims(iss=SHARED_IDP, tenant="initech", jti="initech", scope=None), signing_kid="shared-es256"
    )
    tokens["acme-admin-ES256"] = world.token(
        world.claims(jti="admin", roles=["admin"], email_verified=True), outer="ECDH-ES", inner="ES256"
    )
    for outer in ("A256KW", "dir"):
        tokens[f"legacy-encrypt-only-{outer}"] = world.token(
            world.claims(tenant="legacy", jti=f"legacy-{outer}"), outer=outer, inner=None
        )
    return tokens


def _write(folder: Path, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)


def _requests(tokens: dict[str, str]) -> Iterable[tuple[str, CheckRequest]]:
    sample = [tokens[f"acme-{outer}-A256GCM-ES256"] for outer in OUTER_ALGS]
    sample += [tokens[f"acme-dir-A128CBC-HS256-{inner}"] for inner in INNER_ALGS]
    for index, token in enumerate(sample):
        yield f"orders-{index}", check_request(token=token)
        yield f"orders-sub-{index}", check_request(token=token, path="/orders/17?x=1", method="HEAD")
        yield f"admin-{index}", check_request(token=token, path="/admin/users")
        yield f"dotdot-{index}", check_request(token=token, path="/orders/../admin/users")
    token = sample[0]
    yield "admin-ok", check_request(token=tokens["acme-admin-ES256"], path="/admin/x")
    yield "health", check_request(path="/healthz")
    yield "health-smuggled", check_request(path="/healthz", headers={"x-authz-tenant": "globex"})
    yield "no-token", check_request()
    yield (
        "smuggled",
        check_request(token=token, headers={"x-authz-subject": "root", "x-authz-tenant": "globex"}),
    )
    yield "context-tenant", check_request(token=token, tenant="acme", host="unknown.test")
    yield "context-globex", check_request(token=token, tenant="globex")
    yield "context-unknown", check_request(token=token, tenant="nobody")
    yield "no-host", check_request(token=token, host="")
    yield "wildcard-host", check_request(token=token, host="eu.acme.test:8443")
    yield "dry", check_request(host="api.dry.test")
    yield "dry-token", check_request(token=tokens["globex-ES256"], host="api.dry.test")
    yield "globex", check_request(token=tokens["globex-ES256"], host="api.globex.test")
    yield "globex-at-acme", check_request(token=tokens["globex-ES256"])
    yield "initech", check_request(token=tokens["initech-ES256"], host="api.initech.test", path="/x/y")
    yield "legacy", check_request(token=tokens["legacy-encrypt-only-dir"], host="api.legacy.test")
    yield "legacy-at-acme", check_request(token=tokens["legacy-encrypt-only-A256KW"])
    yield "two-authorizations", check_request(token=token, headers={"Authorization": "Bearer " + token})
    yield "basic", check_request(headers={"authorization": "Basic dXNlcjpwYXNz"})
    yield "bad-path", check_request(token=token, path="/orders/%2e%2e/%2fadmin")
    # Envoy's encode_raw_headers form: header_map with raw_value, no plain headers map.
    raw = check_request(token=token)
    http = raw.attributes.request.http
    for key, value in sorted(http.headers.items()):
        entry = http.header_map.headers.add()
        entry.key = key
        entry.raw_value = value.encode()
    http.ClearField("headers")
    yield "header-map", raw


def _raw_form(message: CheckRequest, extra: Iterable[tuple[str, bytes]] = ()) -> CheckRequest:
    """``message`` in Envoy's encode_raw_headers form: header_map with raw values, no headers map."""
    http = message.attributes.request.http
    for key, value in [*((k, v.encode()) for k, v in sorted(http.headers.items())), *extra]:
        entry = http.header_map.headers.add()
        entry.key, entry.raw_value = key, value
    http.ClearField("headers")
    return message


def wire_seeds() -> Iterable[tuple[str, bytes]]:
    """fuzz_wire's seeds: what the memo's wire reading reads, and some of what it leaves to protobuf."""
    token = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXY.Y2lwaGVy.dGFn"  # noqa: S105 - no key opens it
    trace = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "a=b", "b3": "x"}
    messages = {
        "plain": check_request(token=token),
        "plain-routed": check_request(token=token, tenant="acme", headers=trace),
        "plain-xfcc": check_request(token=token, headers={"x-forwarded-client-cert": "Hash=ab"}),
        "raw": _raw_form(check_request(token=token)),
        "raw-trace": _raw_form(check_request(token=token, headers=trace)),
        "raw-xfcc": _raw_form(
            check_request(token=token),
            [("x-forwarded-client-cert", b"Hash=ab"), ("x-forwarded-client-cert", b"\xff")],
        ),
        "raw-request-id": _raw_form(check_request(token=token), [("x-request-id", b"second")]),
        "raw-long": _raw_form(check_request(token=token, path="/orders?" + "q" * 1100)),
        "dpop": check_request(token=token, headers={"dpop": "x"}),
        "override": _raw_form(check_request(token=token, headers={"x-http-method-override": "DELETE"})),
        "spelling": check_request(token=token, headers={"x_authz_subject": "eve"}),
        "no-token": check_request(),
    }
    peer = _raw_form(check_request(token=token, tenant="acme"))
    peer.attributes.source.principal = "spiffe://acme/ns/a/sa/b"
    peer.attributes.source.certificate = "-----BEGIN%20CERTIFICATE-----%0A..."
    peer.attributes.context_extensions["route"] = "orders"
    peer.attributes.metadata_context.filter_metadata["envoy.filters.http.rbac"].fields["a"].number_value = 1
    messages["peer"] = peer
    for name, message in messages.items():
        yield name, message.SerializeToString(deterministic=True)


def _http(
    token: str | None = None, *, method: str = "GET", target: str = "/orders", host: str = "api.acme.test",
    extra: str = "",
) -> bytes:  # fmt: skip
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n{auth}x-request-id: fuzz-1\r\n{extra}\r\n".encode()


def http_seeds(tokens: dict[str, str]) -> Iterable[tuple[str, bytes]]:
    """Seeds of fuzz_http: a mode byte (the first chunk's share of the rest), then the bytes."""
    token = tokens["acme-RSA-OAEP-256-A256GCM-ES256"]
    traced = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    seeds = {
        "repeat": _http(token) * 3,
        "repeat-paths": _http(token)
        + _http(token, target="/admin/users")
        + _http(token, target="/orders/7?x=1")
        + _http(token),
        "repeat-traced": _http(token) + _http(token, extra=traced),
        "repeat-methods": _http(token) + _http(token, method="POST") + _http(token, method="HEAD"),
        "admin": _http(tokens["acme-admin-ES256"], target="/admin/x") * 2,
        "health": _http(target="/healthz") * 2,
        "health-token-tenant": _http(token, target="/healthz", host="unknown.test") * 2,
        "no-token": _http(),
        "dry": _http(host="api.dry.test") + _http(tokens["globex-ES256"], host="api.dry.test"),
        "globex": _http(tokens["globex-ES256"], host="api.globex.test") + _http(tokens["globex-ES256"]),
        "legacy": _http(tokens["legacy-encrypt-only-dir"], host="api.legacy.test") * 2,
        "two-authorizations": _http(token, extra=f"Authorization: Bearer {token}\r\n") * 2,
        "two-hosts": _http(token, extra="Host: api.globex.test\r\n") * 2,
        "smuggled": _http(token, extra="x-authz-subject: root\r\nx-authz-tenant: globex\r\n") * 2,
        "dotdot": _http(token, target="/orders/../admin/users") + _http(token, target="/orders/%2e%2e/admin"),
        "body": _http(token, method="POST", extra="content-length: 3\r\n") + b"abc" + _http(token),
        "malformed": _http(token) + b"GET /orders HTTP/1.1\r\nhost api.acme.test\r\n\r\n",
        "http10": _http(token).replace(b"HTTP/1.1", b"HTTP/1.0"),
        "close": _http(token, extra="connection: close\r\n") + _http(token),
        # HEAD: answers without a body, framing intact for the next request (issue 19, 3).
        "head": _http(method="HEAD")
        + _http(token, method="HEAD") * 2
        + _http(token, method="HEAD", target="/admin/x"),
        # Upgrades: refused 400 and closed, never a fault out of data_received (issue 19, 7).
        "upgrade": _http(token) + _http(token, extra="connection: Upgrade\r\nupgrade: websocket\r\n"),
        "upgrade-h2c": _http(
            extra="connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMA\r\n"
        ),
        "connect": _http(target="/healthz")
        + b"CONNECT api.acme.test:443 HTTP/1.1\r\nhost: api.acme.test:443\r\n\r\n",
        # Methods exactly as sent (llhttp is given GET for tokens it does not parse), a Host that
        # is not an authority, method overrides (attack-19 A, B, C).
        "methods-as-sent": _http(token, method="get") + _http(method="FOO", target="/healthz") + _http(token),
        "host-authority": _http(token, host="api.globex.test:1@x.acme.test")
        + _http(token, host="api.acme.test:x"),
        "override": _http(token, extra="x-http-method-override: DELETE\r\n")
        + _http(token, target="/orders?_method=DELETE"),
        # Past the soft limits (2048 bytes, 16 headers): a recorded deny, the connection kept;
        # past four times the bytes: 431 and closed (attack-19 D).
        "over-soft-limits": _http(token, extra="x-pad: " + "a" * 2100 + "\r\n")
        + _http(token, target="/" + "a" * 2100)
        + _http(token, extra="".join(f"x-h{i}: v\r\n" for i in range(20))),
        "over-hard-limit": _http(token, extra="x-pad: " + "a" * 9000 + "\r\n") + _http(token),
    }
    for name, data in seeds.items():
        yield name, bytes([128]) + data  # split in the middle, no drain
    for name in ("repeat", "repeat-paths", "malformed"):
        yield f"{name}-drain", bytes([129]) + seeds[name]  # close_when_idle between the two chunks


def main() -> None:
    import sys

    if "--http-only" in sys.argv[1:]:
        folder = CORPUS / "fuzz_http"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tokens = {
            path.name.removeprefix("valid-"): path.read_text("ascii")
            for path in (CORPUS / "fuzz_token").glob("valid-*")
        }
        for name, data in http_seeds(tokens):
            _write(folder, name, data)
        print(f"fuzz_http: {len(list(folder.iterdir()))} seeds")
        return
    if "--wire-only" in sys.argv[1:]:
        _write_wire()
        return
    world, handle = temporary_world()
    try:
        tokens = valid_tokens(world)
        config = world.config()
        from authz.jose.nested import validate_token

        for token in tokens.values():  # the seeds are what the targets will take as valid
            validate_token(token, config.snapshot.token_keys)
        for target in ("fuzz_token", "fuzz_inner", "fuzz_check", "fuzz_http"):
            shutil.rmtree(CORPUS / target, ignore_errors=True)
            (CORPUS / target).mkdir(parents=True)
        folder = CORPUS / "fuzz_token"
        for name, token in tokens.items():
            _write(folder, f"valid-{name}", token.encode("ascii"))
        encryption = json.loads((VECTORS / "wycheproof/json_web_encryption_test.json").read_text("utf-8"))
        for group in encryption["testGroups"]:
            for test in group["tests"]:
                _write(folder, f"wycheproof-jwe-{test['tcId']}", test["jwe"].encode())
        cookbook = json.loads(
            (VECTORS / "jose-cookbook/6.nesting_signatures_and_encryption.json").read_text("utf-8")
        )
        _write(folder, "cookbook-6-nested", cookbook["encrypt"]["output"]["compact"].encode())

        folder = CORPUS / "fuzz_inner"
        from jwcrypto.jwe import JWE

        for outer in OUTER_ALGS:
            for enc in CONTENT_ENCRYPTIONS:
                for alg in INNER_ALGS:
                    name = matrix_name(outer, enc, alg)
                    jwe = JWE()  # decrypted by jwcrypto, not by the code under test
                    jwe.deserialize(tokens[name], world.decryption_keys[OUTER_ALGS[outer]])
                    _write(folder, f"valid-inner-{name}", bytes([MODE_NESTED_DIR]) + bytes(jwe.payload))
        for index, claims in enumerate(
            (
                world.claims(),
                world.claims(tenant="legacy"),
                world.claims(iss=GLOBEX_IDP, aud=["a", "orders-api"]),
            )
        ):
            _write(folder, f"claims-{index}", bytes([MODE_CLAIMS_DIR]) + json.dumps(claims).encode())
        for index, header in enumerate(OUTER_HEADERS):
            _write(folder, f"outer-header-{index}", bytes([MODE_HEADER]) + json.dumps(header).encode())
        signatures = json.loads((VECTORS / "wycheproof/json_web_signature_test.json").read_text("utf-8"))
        for group in signatures["testGroups"]:
            for test in group["tests"]:
                _write(
                    folder, f"wycheproof-jws-{test['tcId']}", bytes([MODE_NESTED_DIR]) + test["jws"].encode()
                )
        _write(
            folder,
            "cookbook-6-inner",
            bytes([MODE_NESTED_DIR]) + cookbook["encrypt"]["input"]["plaintext"].encode(),
        )

        folder = CORPUS / "fuzz_check"
        for name, message in _requests(tokens):
            data = message.SerializeToString(deterministic=True)
            _write(folder, f"{name}-{hashlib.sha256(data).hexdigest()[:8]}", data)
        folder = CORPUS / "fuzz_http"
        for name, data in http_seeds(tokens):
            _write(folder, name, data)
        for target in ("fuzz_token", "fuzz_inner", "fuzz_check", "fuzz_http"):
            print(f"{target}: {len(list((CORPUS / target).iterdir()))} seeds")
    finally:
        handle.cleanup()
    _write_wire()


def _write_wire() -> None:
    folder = CORPUS / "fuzz_wire"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in wire_seeds():
        _write(folder, name, data)
    print(f"fuzz_wire: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    main()
