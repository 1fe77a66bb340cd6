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
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from authz._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from fuzz.world import CORPUS, temporary_world
from tests.helpers import (
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


def main() -> None:
    world, handle = temporary_world()
    try:
        tokens = valid_tokens(world)
        config = world.config()
        from authz.token import validate_token

        for token in tokens.values():  # the seeds are what the targets will take as valid
            validate_token(token, config.token_keys)
        for target in ("fuzz_token", "fuzz_inner", "fuzz_check"):
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
        for target in ("fuzz_token", "fuzz_inner", "fuzz_check"):
            print(f"{target}: {len(list((CORPUS / target).iterdir()))} seeds")
    finally:
        handle.cleanup()


if __name__ == "__main__":
    main()
