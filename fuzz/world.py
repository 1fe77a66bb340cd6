"""The fuzz world: the test world of testkit/world.py, with keys derived from fixed seeds.

The seed corpus (fuzz/make_corpus.py) holds tokens encrypted to, and signed by,
these keys, so the targets, which build the same world at start-up, can decrypt
and verify them: libFuzzer's mutations start from tokens that reach every layer.
No key file is committed; the keys are a function of the seeds below. They are
test keys, public by construction: never use them anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto.jwk import JWK

from authz.jose.mint import public_jwks, write_jwks
from testkit.world import ACME_IDP, CONFIG, GLOBEX_IDP, INNER_ALGS, OUTER_ALGS, SHARED_IDP, World

__all__ = ["CORPUS", "FUZZ", "build_fixed_world", "known_tokens", "temporary_world"]

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
_SEED = b"envoy-jwe-authz fuzz world v1:"
_SMALL_PRIMES = tuple(p for p in range(3, 2000) if all(p % q for q in range(2, int(p**0.5) + 1)))


def _stream(label: str) -> Iterator[bytes]:
    """A deterministic byte stream (SHA-256 in counter mode) for one key."""
    counter = 0
    while True:
        yield hashlib.sha256(_SEED + label.encode() + counter.to_bytes(8, "big")).digest()
        counter += 1


def _integer(stream: Iterator[bytes], bits: int) -> int:
    data = b""
    while len(data) * 8 < bits:
        data += next(stream)
    return int.from_bytes(data, "big") >> (len(data) * 8 - bits)


def _probable_prime(n: int, stream: Iterator[bytes]) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(8):  # Miller-Rabin with deterministic bases from the stream
        x = pow(2 + _integer(stream, n.bit_length() - 2) % (n - 3), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _cache_entry(label: str, bits: int) -> Path:
    """Where the primes of one key are kept: a per-user temporary folder (derived data, not a secret)."""
    folder = Path(tempfile.gettempdir()) / f"envoy-jwe-authz-fuzz-{os.getuid()}"
    return folder / (hashlib.sha256(_SEED + label.encode() + str(bits).encode()).hexdigest() + ".json")


def _primes(label: str, bits: int) -> tuple[int, int]:
    """Two primes of ``bits // 2`` bits from the label's stream (seconds of pure Python: cached)."""
    entry = _cache_entry(label, bits)
    try:
        cached = json.loads(entry.read_text(encoding="ascii"))
        return int(cached["p"]), int(cached["q"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    stream = _stream(label)

    def prime() -> int:
        while True:
            # The top two bits set: the product has exactly ``bits`` bits.
            candidate = _integer(stream, bits // 2) | (3 << (bits // 2 - 2)) | 1
            if candidate % _E != 1 and _probable_prime(candidate, stream):
                return candidate

    p, q = prime(), prime()
    while q == p:
        q = prime()
    entry.parent.mkdir(mode=0o700, exist_ok=True)
    partial = entry.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"p": str(p), "q": str(q)}), encoding="ascii")
    partial.replace(entry)
    return p, q


_E = 65537


def _rsa(label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    p, q = _primes(label, bits)
    try:
        return _rsa_key(p, q)
    except ValueError:  # pyca's key check (OpenSSL's) refused a corrupt cache entry: make it again
        _cache_entry(label, bits).unlink(missing_ok=True)
        return _rsa_key(*_primes(label, bits))


def _rsa_key(p: int, q: int) -> rsa.RSAPrivateKey:
    n, d = p * q, pow(_E, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(_E, n)
    )
    return numbers.private_key()


def _ec(label: str, curve: ec.EllipticCurve, order: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(1 + _integer(_stream(label), 512) % (order - 1), curve)


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def fixed_key(alg: str, kid: str) -> JWK:
    """The key ``kid`` of the fuzz world, pinned to ``alg`` (the algorithms of testkit/world.py)."""
    use = "sig" if alg in INNER_ALGS else "enc"
    if alg.startswith(("RSA-OAEP", "RS", "PS")):
        key = JWK.from_pyca(_rsa(kid))
    elif alg.startswith("ECDH-ES") or alg == "ES256":
        key = JWK.from_pyca(_ec(kid, ec.SECP256R1(), _P256_ORDER))
    elif alg == "EdDSA":
        key = JWK.from_pyca(ed25519.Ed25519PrivateKey.from_private_bytes(next(_stream(kid))))
    elif alg in ("dir", "A256KW"):
        key = JWK(kty="oct", k=_b64(next(_stream(kid))))
    elif alg == "A128GCMKW":
        key = JWK(kty="oct", k=_b64(next(_stream(kid))[:16]))
    else:
        raise ValueError(f"no fixed key for {alg}")
    return JWK(**{**json.loads(key.export()), "kid": kid, "alg": alg, "use": use})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def build_fixed_world(root: Path) -> World:
    """testkit.world.build_world, with every key derived from its kid and the fixed seed."""
    world = World(root)
    for alg, kid in OUTER_ALGS.items():
        world.decryption_keys[kid] = fixed_key(alg, kid)
    write_jwks(
        root / "keys" / "decrypt.jwks.json",
        {"keys": [json.loads(k.export(private_key=True)) for k in world.decryption_keys.values()]},
        private=True,
    )
    idps: dict[str, tuple[str, dict[str, str]]] = {
        ACME_IDP: ("acme-idp", INNER_ALGS),
        GLOBEX_IDP: ("globex-idp", {"ES256": "globex-es256"}),
        SHARED_IDP: ("shared-idp", {"ES256": "shared-es256"}),
    }
    for issuer, (name, algs) in idps.items():
        keys = [fixed_key(alg, kid) for alg, kid in algs.items()]
        for key in keys:
            world.signing_keys[key["kid"]] = key
            world.signing_issuer[key["kid"]] = issuer
        write_jwks(root / "keys" / f"{name}.jwks.json", public_jwks(keys), private=False)
    world.config_path.write_text(CONFIG, encoding="utf-8")
    return world


def temporary_world() -> tuple[World, Any]:
    """The fixed world in a new temporary folder; keep the returned handle alive while in use."""
    handle = tempfile.TemporaryDirectory(prefix="authz-fuzz-")
    return build_fixed_world(Path(handle.name)), handle


def known_tokens() -> list[str]:
    """The valid tokens of the seed corpus (``fuzz/corpus/fuzz_token/valid-*``): our issuers' tokens."""
    folder = CORPUS / "fuzz_token"
    return sorted(p.read_text(encoding="ascii").strip() for p in folder.glob("valid-*"))
