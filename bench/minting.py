"""Tokens for the benchmark: the test world's keys, real-time claims, many distinct tokens.

The test world (testkit/world.py) mints for a fixed future clock; a running
server uses the real one, so every token here has ``iat``/``nbf`` = now and
``exp`` = now + ``LIFETIME`` (within the world's ``max_lifetime``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from jwcrypto.jwk import JWK

from authz.jose.mint import generate_key, mint
from testkit.world import INNER_ALGS, OUTER_ALGS, World, build_world

__all__ = [
    "ABUSE_KINDS",
    "LIFETIME",
    "abuse_tokens",
    "claims",
    "distinct_tokens",
    "dpop_proofs",
    "envoy_check_message",
    "make_world",
    "write_configs",
]

LIFETIME = 3000  # s; the world's max_lifetime is 3600
ABUSE_KINDS = ("garbage", "unknown_kid", "alg_not_allowed", "oversize", "wrong_signer")


def make_world(root: Path) -> tuple[World, dict[str, Path]]:
    world = build_world(root)
    return world, write_configs(world)


def write_configs(world: World) -> dict[str, Path]:
    """``warm``: the world's config (token cache at its default bound); ``cold``: cache_size 0."""
    text = world.config_path.read_text() + "http:\n  path_prefix: /ext-authz\n"  # the HTTP door's prefix
    assert "\ntoken:\n" in text  # noqa: S101 - the world's config layout
    warm = world.root / "config-warm.yaml"
    warm.write_text(text)
    cold = world.root / "config-cold.yaml"
    cold.write_text(text.replace("\ntoken:\n", "\ntoken:\n  cache_size: 0\n"))
    return {"warm": warm, "cold": cold}


def claims(world: World, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return world.claims(iat=now, nbf=now, exp=now + LIFETIME, **extra)


# many valid tokens, minted in parallel processes --------------------------------------

_KEYS: dict[str, JWK] = {}


def _init(encryption: str, signing: str) -> None:
    _KEYS["enc"], _KEYS["sig"] = JWK.from_json(encryption), JWK.from_json(signing)


def _mint_range(job: tuple[dict[str, Any], int, int]) -> list[str]:
    base, start, stop = job
    return [
        mint(
            {**base, "jti": f"bench-{i}", "sub": f"user-{i}"},
            encryption_key=_KEYS["enc"],
            signing_key=_KEYS["sig"],
        )
        for i in range(start, stop)
    ]


def distinct_tokens(world: World, count: int, *, outer: str = "dir", inner: str = "ES256") -> list[str]:
    """``count`` distinct valid tokens (the cheap pair by default), minted on every core."""
    encryption = world.decryption_keys[OUTER_ALGS[outer]].export(private_key=True)
    signing = world.signing_keys[INNER_ALGS[inner]].export(private_key=True)
    base = claims(world)
    procs = max(1, min(os.cpu_count() or 1, count // 500))
    if procs == 1:
        _init(encryption, signing)
        return _mint_range((base, 0, count))
    step = -(-count // (procs * 4))
    with ProcessPoolExecutor(
        procs, mp_context=get_context("spawn"), initializer=_init, initargs=(encryption, signing)
    ) as pool:
        parts = pool.map(
            _mint_range, [(base, start, min(count, start + step)) for start in range(0, count, step)]
        )
        return [token for part in parts for token in part]


# tokens that must be rejected --------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _fake_jwe(header: dict[str, Any], ciphertext_bytes: int = 200) -> str:
    """A well-formed compact JWE shape with random key, IV, ciphertext and tag."""
    parts = [json.dumps(header).encode(), secrets.token_bytes(256), secrets.token_bytes(12)]
    parts += [secrets.token_bytes(ciphertext_bytes), secrets.token_bytes(16)]
    return ".".join(_b64(p) for p in parts)


def abuse_tokens(world: World, kind: str, count: int, max_bytes: int = 8192) -> list[str]:
    """``count`` distinct tokens of one abuse ``kind`` (see ABUSE_KINDS)."""
    if kind == "garbage":  # five base64url parts of random bytes: no JSON header
        return [".".join(_b64(secrets.token_bytes(n)) for n in (40, 256, 12, 200, 16)) for _ in range(count)]
    if kind == "unknown_kid":
        header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT"}
        return [_fake_jwe({**header, "kid": f"unknown-{i}"}) for i in range(count)]
    if kind == "alg_not_allowed":
        algs = ("RSA1_5", "PBES2-HS256+A128KW", "none", "HS256")
        return [_fake_jwe({"alg": algs[i % len(algs)], "enc": "A256GCM", "cty": "JWT"}) for i in range(count)]
    if kind == "oversize":
        return [
            _fake_jwe({"alg": "RSA-OAEP-256", "enc": "A256GCM"}, ciphertext_bytes=max_bytes)
            for _ in range(count)
        ]
    if kind == "wrong_signer":  # encrypted to our public key (anyone can), signed by a stranger's key
        stranger = generate_key("ES256", INNER_ALGS["ES256"])  # the kid of acme's real key
        encryption = world.decryption_keys[OUTER_ALGS["RSA-OAEP-256"]]
        base = claims(world)
        return [
            mint({**base, "jti": f"forged-{i}"}, encryption_key=encryption, signing_key=stranger)
            for i in range(count)
        ]
    raise ValueError(kind)


def check_messages(tokens: Sequence[str]) -> list[bytes]:
    """Serialized CheckRequests (GET /orders on api.acme.test) carrying each token."""
    from testkit.world import check_request

    return [
        check_request(token=token, request_id=f"bench-{i}").SerializeToString()
        for i, token in enumerate(tokens)
    ]


def dpop_proofs(key: Any, token: str, url: str, count: int, path: Path) -> Path:
    """``count`` fresh ES256 proofs by ``key`` for GET ``url`` with ``token``, iat now, one per line."""
    from testkit import dpop

    now = int(time.time())
    ath = dpop.ath(token)
    lines = [
        dpop.mint(
            "ES256",
            key,
            body={"jti": f"b{i}-{secrets.token_hex(6)}", "htm": "GET", "htu": url, "iat": now, "ath": ath},
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def envoy_check_message(token: str, request_id: str = "7fd607ca-d539-498a-b599-29384a639e5b") -> bytes:
    """The CheckRequest Envoy 1.40 sends for ``GET /orders`` on api.acme.test with ``token``, as
    deploy/envoy renders the gRPC filter (encode_raw_headers: the header_map, raw values): field
    for field what a capture of Envoy's request showed, with this token and request id."""
    from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    message = CheckRequest()
    attributes = message.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 35110
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 10000
    request = attributes.request
    request.time.seconds, request.time.nanos = int(time.time()), 200148000
    http = request.http
    http.id, http.method, http.path, http.host = "16349933935120285315", "GET", "/orders", "api.acme.test"
    http.scheme, http.protocol = "http", "HTTP/1.1"
    for name, value in (
        (":authority", "api.acme.test"),
        (":path", "/orders"),
        (":method", "GET"),
        (":scheme", "http"),
        ("authorization", f"Bearer {token}"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id),
    ):
        header = http.header_map.headers.add()
        header.key, header.raw_value = name, value.encode()
    attributes.metadata_context.SetInParent()
    attributes.route_metadata_context.SetInParent()
    data: bytes = message.SerializeToString()
    return data
