"""The fixed request of the fuzz_dpop target, and its seed corpus.

    python -m fuzz.dpop_seeds            # from the repository root; replaces fuzz/corpus/fuzz_dpop/

A proof carries its own key, so the seeds need no key file: ``valid-*`` seeds are
proofs minted here (fresh keys each run, signed by pyca through testkit/dpop.py)
for the target's fixed request; the target reads them as "the proofs that may pass".
The other seeds are the RFC 9449 examples, malformed proofs (one defect each) and
inputs of the other parsers the target drives (htu, XFCC, certificate, nonce, JWK).
Each seed is one mode byte (see fuzz_dpop.py) and the input.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from authz.jose.nonce import NonceIssuer, NonceKey
from testkit.world import NOW

__all__ = [
    "ACCESS_TOKEN",
    "HTU",
    "METHOD",
    "MODE_CERTIFICATE",
    "MODE_HTU",
    "MODE_JWK",
    "MODE_NONCE",
    "MODE_PROOF",
    "MODE_PROOF_NONCE",
    "MODE_PROOF_NO_TOKEN",
    "MODE_XFCC",
    "NONCES",
    "NOW",
]

METHOD = "GET"
HTU = "https://api.acme.test/orders"
ACCESS_TOKEN = "eyJhbGciOiJkaXIi.fake-access-token.for-ath"  # noqa: S105 - a fixture, not a secret
NONCES = NonceIssuer((NonceKey("fuzz", b"fuzz-nonce-secret-of-32-bytes!!!"),), 120, 5.0)

MODE_PROOF, MODE_PROOF_NONCE, MODE_PROOF_NO_TOKEN = 0, 1, 2
MODE_HTU, MODE_XFCC, MODE_CERTIFICATE, MODE_NONCE, MODE_JWK = 3, 4, 5, 6, 7

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(__file__).resolve().parent / "corpus" / "fuzz_dpop"


def _proof_seeds() -> Iterable[tuple[str, bytes]]:
    from testkit import dpop as h

    if (h.NOW, h.METHOD, h.HTU, h.TOKEN) != (NOW, METHOD, HTU, ACCESS_TOKEN):
        raise SystemExit("testkit/dpop.py and fuzz/dpop_seeds.py disagree on the request")
    nonce = NONCES.issue(NOW)
    for alg in ("ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA", "Ed25519", "Ed448"):
        key = h.new_key(alg)
        yield f"valid-{alg}", bytes([MODE_PROOF]) + h.mint(alg, key).encode()
        body = h.claims(nonce=nonce)
        yield f"valid-{alg}-nonce", bytes([MODE_PROOF_NONCE]) + h.mint(alg, key, body=body).encode()
        body = h.claims(ath=None)
        yield f"valid-{alg}-no-token", bytes([MODE_PROOF_NO_TOKEN]) + h.mint(alg, key, body=body).encode()
    es = h.new_key("ES256")
    # Spelled otherwise, still good: they must pass, so they are valid-* too.
    webcrypto = h.public_jwk(es) | {"key_ops": ["verify"], "ext": True}
    yield (
        "valid-webcrypto-jwk",
        bytes([MODE_PROOF]) + h.mint("ES256", es, head=h.header("ES256", es, jwk=webcrypto)).encode(),
    )
    equal_htu = h.claims(htu="HTTPS://API.acme.test:443/x/../orders")
    yield "valid-htu-spelled-otherwise", bytes([MODE_PROOF]) + h.mint("ES256", es, body=equal_htu).encode()
    defects = {
        "private-jwk": h.mint("ES256", es, head=h.header("ES256", es, jwk=h.private_jwk(es))),
        "typ": h.mint("ES256", es, head=h.header("ES256", es, typ="JWT")),
        "crit": h.mint("ES256", es, head=h.header("ES256", es, crit=["x"])),
        "curve": h.mint("ES256", h.new_key("ES384"), sign_alg="ES384"),
        "other-signer": h.mint("ES256", es, signer=h.new_key("ES256")),
        "stale": h.mint("ES256", es, body=h.claims(iat=NOW - 3600)),
        "htu-query": h.mint("ES256", es, body=h.claims(htu=HTU + "?x=1")),
        "ath": h.mint("ES256", es, body=h.claims(ath=h.ath("other"))),
        "dup-claims": h.mint("ES256", es, claims_json=json.dumps(h.claims())[:-1] + ', "jti": "x"}'),
        "alg-none": ".".join(
            [
                h.b64json({"typ": "dpop+jwt", "alg": "none", "jwk": h.public_jwk(es)}),
                h.b64json(h.claims()),
                "",
            ]
        ),
    }
    for name, proof in defects.items():
        yield f"defect-{name}", bytes([MODE_PROOF]) + proof.encode()
    vectors = json.loads((ROOT / "tests" / "vectors" / "rfc" / "rfc9449.json").read_text("utf-8"))
    for case in vectors["proofs"]:
        mode = MODE_PROOF if case["access_token"] else MODE_PROOF_NO_TOKEN
        yield f"rfc9449-{case['name']}", bytes([mode]) + case["proof"].encode()


def _parser_seeds() -> Iterable[tuple[str, bytes]]:
    from testkit import dpop as h

    htus = [
        HTU,
        "HTTPS://Api.Acme.Test:443/a/./b/../%7e",
        "https://[::1]:8443/x",
        "https://u@h/",
        "https://h/a;b",
    ]
    for i, htu in enumerate(htus):
        yield f"htu-{i}", bytes([MODE_HTU]) + htu.encode()
    digest = "0" * 64
    for i, xfcc in enumerate(
        [
            f'By=spiffe://acme/authz;Hash={digest};Subject="CN=x,O=y";URI=spiffe://acme/c',
            f"Hash={digest},Hash={digest}",
            f'Subject="a\\"b;c";Hash={digest}',
        ]
    ):
        yield f"xfcc-{i}", bytes([MODE_XFCC]) + xfcc.encode()
    certificate = _certificate_pem()
    yield "certificate-full", bytes([MODE_CERTIFICATE]) + urllib.parse.quote(certificate, safe="").encode()
    partial = "".join({"\n": "%0A", "+": "%2B", "/": "%2F", "=": "%3D"}.get(c, c) for c in certificate)
    yield "certificate-partial", bytes([MODE_CERTIFICATE]) + partial.encode()
    for i, nonce in enumerate([NONCES.issue(NOW), NONCES.issue(NOW - 120), "eyJ7S_zG.eyJH0-Z.HX4w-7v"]):
        yield f"nonce-{i}", bytes([MODE_NONCE]) + nonce.encode()
    for alg in ("ES256", "PS256", "Ed448"):
        yield f"jwk-{alg}", bytes([MODE_JWK]) + json.dumps(h.public_jwk(h.new_key(alg))).encode()


def _certificate_pem() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.acme.test")])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def seeds() -> Iterable[tuple[str, bytes]]:
    yield from _proof_seeds()
    yield from _parser_seeds()


def main() -> None:
    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir(parents=True)
    for name, data in seeds():
        # valid-* keep their names (the target reads them); the others get a content hash.
        suffix = "" if name.startswith("valid-") else f"-{hashlib.sha256(data).hexdigest()[:8]}"
        (FOLDER / f"{name}{suffix}").write_bytes(data)
    print(f"wrote {len(list(FOLDER.iterdir()))} seeds to {FOLDER.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
