"""Fuzz target: the inner layer (JWS, claims) behind a valid outer layer.

    python -m fuzz.fuzz_inner [libFuzzer options] [corpus folders]   # or: make fuzz

Byte-level mutations of a whole token almost never survive the outer layer's
authentication, so this target encrypts its input itself: the first byte
chooses the outer layer, the rest is the plaintext.

    mode 0: dir + A256GCM, cty JWT      (our shared key: a nested token)
    mode 1: dir + A256GCM, no cty       (our shared key: an encrypt-only token)
    mode 2: ECDH-ES + A256GCM, no cty   (a public key: anyone can make it)
    mode 3: ECDH-ES + A256GCM, cty JWT
    mode 4: the rest is the outer protected header (JSON bytes, base64url-encoded
            here) around an issued inner JWS, sealed with the dir key and that
            header as AAD: the header checks (alg, enc, kid, zip, crit, epk,
            iv/tag, duplicates, depth) on a token that decrypts when they pass

A finding is: any exception other than AuthzError, or ``token_invalid``, from
``validate_token`` or from ``validate_claims`` on what it accepted; a nested
token accepted whose signed content (``header.payload``) none of our issuers
signed (an ECDSA high-s twin of an issued signature signs issued content: not
a finding), or with other claims than the issued ones; an encrypt-only token
accepted under the public key; in mode 4, an accepted header that a strict
reference parse (duplicates, constants) refuses, or with ``zip``, ``crit``, an
``alg`` other than ``dir``, an ``enc`` other than A256GCM, a ``kid`` other
than ``enc-dir``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["authz", "jwcrypto"]):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from jwcrypto.jwa import JWA

    from authz.core.claims import validate_claims
    from authz.errors import AuthzError
    from authz.jose.nested import validate_token
    from fuzz.harness import Finding, boundary_failure, start
    from testkit.world import NOW

STATE = start()
KEYS = STATE.config.snapshot.token_keys
RULES = STATE.config.snapshot.claim_rules
SIGNED = STATE.inner_jws()
IV = bytes(12)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _outer_layers() -> list[tuple[str, AESGCM, bool]]:
    """(protected header, AEAD with the CEK, public key) per mode."""
    dir_key = STATE.world.decryption_keys["enc-dir"]
    dir_cek = base64.urlsafe_b64decode(dir_key["k"] + "==")
    ecdh_key = STATE.world.decryption_keys["enc-ecdh-es"]
    fields = {"alg": "ECDH-ES", "enc": "A256GCM", "kid": "enc-ecdh-es"}
    # One ephemeral key for the whole run: the CEK is derived once (jwcrypto's ECDH-ES, as a sender).
    wrapped = JWA.keymgmt_alg("ECDH-ES").wrap(ecdh_key, 256, None, fields)
    ecdh = {**fields, **wrapped["header"]}
    layers = []
    for header, cek, public in (
        ({"alg": "dir", "enc": "A256GCM", "kid": "enc-dir", "cty": "JWT"}, dir_cek, False),
        ({"alg": "dir", "enc": "A256GCM", "kid": "enc-dir"}, dir_cek, False),
        (ecdh, wrapped["cek"], True),
        ({**ecdh, "cty": "JWT"}, wrapped["cek"], True),
    ):
        layers.append((b64(json.dumps(header).encode()), AESGCM(cek), public))
    return layers


LAYERS = _outer_layers()
HEADER_MODE = len(LAYERS)
DIR_AEAD = LAYERS[0][1]
# The plaintext of mode 4: an issued inner JWS (the first, in a fixed order), or none without seeds.
ISSUED_JWS = min((jws for jws, _ in SIGNED.values()), default=b"")


def _reference_header(raw: bytes) -> dict[str, Any] | None:
    """The header as a strict reference parser reads it (None: not a strict JSON object)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _header_mode(header: bytes) -> None:
    protected = b64(header)
    plaintext = ISSUED_JWS  # its signature is checked against the issued content below: valid when decrypted
    sealed = DIR_AEAD.encrypt(IV, plaintext, protected.encode("ascii"))
    token = f"{protected}..{b64(IV)}.{b64(sealed[:-16])}.{b64(sealed[-16:])}"
    try:
        validate_token(token, KEYS)
    except AuthzError as exc:
        finding = boundary_failure(exc)
        if finding is not None:
            raise finding from finding.__cause__
        return
    parsed = _reference_header(header)
    if parsed is None:
        raise Finding("accepted an outer header that is not a strict JSON object")
    if "zip" in parsed or "crit" in parsed:
        raise Finding("accepted an outer header with zip or crit")
    if (
        parsed.get("alg") != "dir"
        or parsed.get("enc") != "A256GCM"
        or parsed.get("kid", "enc-dir") != "enc-dir"
    ):
        raise Finding("accepted an outer header that names other algorithms or another key")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % (HEADER_MODE + 1) == HEADER_MODE:
        _header_mode(data[1:])
        return
    protected, aead, public = LAYERS[data[0] % (HEADER_MODE + 1)]
    plaintext = data[1:]
    sealed = aead.encrypt(IV, plaintext, protected.encode("ascii"))
    token = f"{protected}..{b64(IV)}.{b64(sealed[:-16])}.{b64(sealed[-16:])}"
    try:
        verified = validate_token(token, KEYS)
    except AuthzError as exc:
        finding = boundary_failure(exc)
        if finding is not None:
            raise finding from finding.__cause__
        return
    if verified.nested:
        issued = SIGNED.get(plaintext.rsplit(b".", 1)[0])
        if issued is None:
            raise Finding("accepted an inner JWS whose content none of our issuers signed")
        if dict(verified.claims) != issued[1]:
            raise Finding("accepted an issued inner JWS with other claims than the issued ones")
    elif public or not verified.decryption_symmetric:
        raise Finding("accepted an encrypt-only token under a public key")
    with contextlib.suppress(AuthzError):
        validate_claims(verified.claims, RULES, NOW)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
