"""Fuzz target: the DPoP proof parser and the other sender-constraint parsers.

    python -m fuzz.fuzz_dpop [libFuzzer options] [corpus folders]   # or: make fuzz

The first byte chooses what the rest is fed to (fuzz/dpop_seeds.py has the fixed
request: method, htu, clock, access token, nonce key):

    mode 0: verify_proof, every supported algorithm, no nonce required
    mode 1: verify_proof with nonces required (the fixed nonce issuer checks them)
    mode 2: verify_proof without an access token (ath must then be absent)
    mode 3: canonical_htu
    mode 4: x5t_from_xfcc
    mode 5: x5t_from_envoy_certificate
    mode 6: NonceIssuer.verify and needs_refresh
    mode 7: jwk_thumbprint of the input parsed as JSON

A finding is: any exception other than AuthzError; an AuthzError with another code
than the parser's own, or one that hides an unexpected exception (detail
``unexpected ...``); a proof accepted whose signed content (``header.payload``) is
not one of the ``valid-*`` seeds' (a high-s ECDSA twin signs the same content: not
a finding); an accepted proof whose jkt is not its jwk's thumbprint; an htu whose
canonical form is not its own canonical form or holds a query; a nonce accepted
that this issuer did not issue for the current or the previous window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["authz"]):
    from authz.errors import AuthzError
    from authz.jose.dpop import SUPPORTED_ALGORITHMS, verify_proof
    from authz.jose.encoding import b64decode, parse_json_object
    from authz.jose.htu import canonical_htu
    from authz.jose.thumbprint import jwk_thumbprint, x5t_from_envoy_certificate, x5t_from_xfcc
    from fuzz.dpop_seeds import (
        ACCESS_TOKEN,
        FOLDER,
        HTU,
        METHOD,
        MODE_CERTIFICATE,
        MODE_HTU,
        MODE_JWK,
        MODE_NONCE,
        MODE_PROOF_NO_TOKEN,
        MODE_PROOF_NONCE,
        MODE_XFCC,
        NONCES,
        NOW,
    )
    from fuzz.harness import Finding

MODES = 8
PROOF_CODES = frozenset({"dpop_proof_invalid", "dpop_nonce_required"})
EXPECTED_HTU = frozenset({HTU})
KNOWN_NONCES = frozenset({NONCES.issue(NOW), NONCES.issue(NOW - NONCES.lifetime)})


def _signed_content(folder: Path) -> frozenset[bytes]:
    """``header.payload`` of every valid-* seed: the content our test keys signed."""
    found: set[bytes] = set()
    for path in folder.glob("valid-*"):
        found.add(path.read_bytes()[1:].rsplit(b".", 1)[0])
    if not found:
        print(f"warning: no valid-* seeds in {folder}: every acceptance is a finding", file=sys.stderr)
    return frozenset(found)


SIGNED = _signed_content(FOLDER)


def _refusal(exc: AuthzError, codes: frozenset[str]) -> None:
    if exc.code not in codes:
        raise Finding(f"unexpected reason code {exc.code}")
    if exc.detail.startswith("unexpected"):
        finding = Finding(f"unexpected exception inside the parser ({exc.detail})")
        finding.__cause__ = exc.__context__
        raise finding


def _proof(text: str, mode: int) -> None:
    try:
        result = verify_proof(
            text,
            method=METHOD,
            htu=EXPECTED_HTU,
            now=NOW,
            max_age=60,
            skew=5,
            access_token=None if mode == MODE_PROOF_NO_TOKEN else ACCESS_TOKEN,
            algorithms=SUPPORTED_ALGORITHMS,
            nonce=(lambda n: NONCES.verify(n, NOW)) if mode == MODE_PROOF_NONCE else None,
        )
    except AuthzError as exc:
        _refusal(exc, PROOF_CODES)
        return
    content = text.encode("ascii").rsplit(b".", 1)[0]
    if content not in SIGNED:
        raise Finding("accepted a proof whose signed content is not one of the valid seeds")
    header = parse_json_object(b64decode(content.split(b".")[0], "dpop_proof_invalid"))
    if result.jkt != jwk_thumbprint(header["jwk"]):
        raise Finding("jkt is not the thumbprint of the proof's jwk")


def _htu(text: str) -> None:
    try:
        canonical = canonical_htu(text)
    except AuthzError as exc:
        _refusal(exc, frozenset({"dpop_proof_invalid"}))
        return
    if canonical_htu(canonical) != canonical or "?" in canonical or "#" in canonical:
        raise Finding("canonical htu is not a fixed point")


def _certificate_parser(text: str, mode: int) -> None:
    parse = x5t_from_xfcc if mode == MODE_XFCC else x5t_from_envoy_certificate
    try:
        result = parse(text)
    except AuthzError as exc:
        _refusal(exc, frozenset({"client_certificate_missing"}))
        return
    if result is not None and len(result) != 43:
        raise Finding("a certificate thumbprint that is not 43 characters")


def _nonce(text: str) -> None:
    accepted = NONCES.verify(text, NOW)
    if accepted and text not in KNOWN_NONCES:
        raise Finding("accepted a nonce we did not issue")
    NONCES.needs_refresh(text, NOW)


def _jwk(data: bytes) -> None:
    try:
        jwk = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(jwk, dict):
        return
    try:
        value = jwk_thumbprint(jwk)
    except AuthzError as exc:
        _refusal(exc, frozenset({"dpop_proof_invalid"}))
        return
    if len(value) != 43:
        raise Finding("a JWK thumbprint that is not 43 characters")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % MODES, data[1:]
    text = rest.decode("utf-8", "surrogateescape")
    if mode <= MODE_PROOF_NO_TOKEN:
        _proof(text, mode)
    elif mode == MODE_HTU:
        _htu(text)
    elif mode in (MODE_XFCC, MODE_CERTIFICATE):
        _certificate_parser(text, mode)
    elif mode == MODE_NONCE:
        _nonce(text)
    elif mode == MODE_JWK:
        _jwk(rest)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
