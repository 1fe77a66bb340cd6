"""The token path's cost against the raw cryptographic operations, measured in one run.

For each algorithm pair, on the same token:

- raw:      the cryptographic primitives alone, called on pyca/cryptography
            directly: key unwrap (RSA-OAEP, or ECDH + Concat KDF + AES key
            unwrap, or nothing for dir), content decryption (AES-GCM), and the
            signature check. Nothing else: no parsing, no JSON, no checks.
            For ECDH-ES the ephemeral public key object is built outside the
            timed call and reused, which no real token allows (each carries
            its own epk), so for ECDH-ES pairs a second baseline is shown:
- raw+epk:  raw, plus building the epk from its coordinates in the timed call
            (``EllipticCurvePublicNumbers(x, y, curve).public_key()``: pyca's
            point validation, the invalid-curve defence) and the exchange with
            that new key object (OpenSSL's per-key setup, which raw skips).
- ours:     authz.jose.nested.validate_token + authz.claims.validate_claims (cold:
            every call parses, decrypts and verifies from scratch)
- jwcrypto: jwcrypto's high-level API (jwt.JWT for the JWE, then for the JWS)
- joserfc:  joserfc's high-level API (jwe.decrypt_compact, then jwt.decode)
- before:   with ``--before FILE``: another authz/token.py (e.g. the previous
            commit's, ``git show HEAD~1:authz/token.py > /tmp/token_before.py``)
            timed the same way as ours, for a before/after table from one run.

Variants run interleaved in rounds; medians are reported. Prints a table of
microseconds per token and ratios to raw; writes JSON.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.core.claims import validate_claims
from authz.jose.nested import validate_token
from testkit.world import INNER_ALGS, NOW, OUTER_ALGS, World, build_world

PAIRS = (("RSA-OAEP-256", "RS256"), ("ECDH-ES+A256KW", "ES256"), ("dir", "ES256"))


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def raw_operations(
    world: World, token: str, outer: str, inner: str, *, fresh_epk: bool = False
) -> Callable[[], object]:
    """The primitives only, with every input prepared outside the timed call.

    ``fresh_epk``: for ECDH-ES, build the epk key object from its coordinates in the call.
    """
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = token.split(".")
    header = json.loads(_b64(protected))
    ek, iv, ct, tag = _b64(ek_b64), _b64(iv_b64), _b64(ct_b64), _b64(tag_b64)
    aad = protected.encode()
    dkey = world.decryption_keys[OUTER_ALGS[outer]]
    if outer == "dir":
        secret = _b64(dkey["k"])

        def unwrap() -> bytes:
            return secret
    elif outer.startswith("RSA-OAEP"):
        private = dkey.get_op_key("unwrapKey")
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

        def unwrap() -> bytes:
            return bytes(private.decrypt(ek, oaep))
    else:
        private = dkey.get_op_key("unwrapKey")
        epk = jwcrypto_jwk.JWK(**header["epk"]).get_op_key("wrapKey")
        numbers = epk.public_numbers()
        alg = header["alg"].encode()
        info = len(alg).to_bytes(4, "big") + alg + bytes(8) + (256).to_bytes(4, "big")

        def unwrap() -> bytes:
            peer = numbers.public_key() if fresh_epk else epk
            shared = private.exchange(ec.ECDH(), peer)
            kek = ConcatKDFHash(hashes.SHA256(), 32, info).derive(shared)
            return aes_key_unwrap(kek, ek)

    plaintext = AESGCM(unwrap()).decrypt(iv, ct + tag, aad)
    signing_input, _, signature_b64 = plaintext.rpartition(b".")
    signature = _b64(signature_b64.decode())
    public = world.signing_keys[INNER_ALGS[inner]].get_op_key("verify")
    if inner == "RS256":

        def verify() -> None:
            public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        der = utils.encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )

        def verify() -> None:
            public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))

    def run() -> object:
        AESGCM(unwrap()).decrypt(iv, ct + tag, aad)
        verify()
        return None

    return run


def ours(world: World, token: str, validate: Callable[..., Any] = validate_token) -> Callable[[], object]:
    config = world.config()

    def run() -> object:
        verified = validate(token, config.snapshot.token_keys)
        return validate_claims(verified.claims, config.snapshot.claim_rules, NOW)

    return run


def load_before(path: Path) -> Callable[..., Any]:
    """``validate_token`` of another version of authz/token.py, loaded as its own module."""
    spec = importlib.util.spec_from_file_location("token_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.validate_token  # type: ignore[no-any-return]


def jwcrypto_high_level(world: World, token: str, outer: str, inner: str) -> Callable[[], object]:
    dkey = world.decryption_keys[OUTER_ALGS[outer]]
    skey = jwcrypto_jwk.JWK(**json.loads(world.signing_keys[INNER_ALGS[inner]].export_public()))

    def run() -> object:
        outer_jwt = jwcrypto_jwt.JWT(jwt=token, key=dkey, expected_type="JWE", algs=[outer, "A256GCM"])
        inner_jwt = jwcrypto_jwt.JWT(
            jwt=outer_jwt.claims, key=skey, expected_type="JWS", algs=[inner], check_claims={"exp": None}
        )
        inner_jwt.validity = 10**10  # the fixed test clock is in the future; claims checks are ours
        return inner_jwt.claims

    return run


def joserfc_high_level(world: World, token: str, outer: str, inner: str) -> Callable[[], object] | None:
    try:
        from joserfc import jwe, jwt
        from joserfc.jwk import import_key
    except ImportError:
        return None
    dkey = import_key(json.loads(world.decryption_keys[OUTER_ALGS[outer]].export(private_key=True)))
    skey = import_key(json.loads(world.signing_keys[INNER_ALGS[inner]].export_public()))

    def run() -> object:
        decrypted = jwe.decrypt_compact(token, dkey, algorithms=[outer, "A256GCM"])
        assert decrypted.plaintext is not None  # noqa: S101 - a bench sanity check
        return jwt.decode(decrypted.plaintext, skey, algorithms=[inner]).claims

    return run


def _time(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(20):
            fn()
        count += 20
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / count


def _print_table(pairs: dict[str, Any]) -> None:
    names = ["raw", "raw+epk", "ours", "before", "jwcrypto", "joserfc"]
    shown = [name for name in names if any(name in pair["us"] for pair in pairs.values())]
    head = "".join(f"{name:>10}" for name in shown)
    ratio_names = [name for name in shown if name not in ("raw", "raw+epk")]
    ratio_head = "".join(f"{name + '/raw':>14}" for name in ratio_names)
    print(f"{'pair (us per token)':<22}{head}{ratio_head}{'ours/raw+epk':>14}")
    for pair, result in pairs.items():
        us, ratios = result["us"], result["ratio_to_raw"]
        cells = "".join(f"{us[name]:>10.1f}" if name in us else f"{'-':>10}" for name in shown)
        ratio_cells = "".join(
            f"{ratios[name]:>13.2f}x" if name in ratios else f"{'-':>14}" for name in ratio_names
        )
        epk = f"{ratios['ours/raw+epk']:>13.2f}x" if "ours/raw+epk" in ratios else f"{'-':>14}"
        print(f"{pair:<22}{cells}{ratio_cells}{epk}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", type=Path, help="another authz/token.py to time as 'before'")
    args = parser.parse_args(argv)
    before = load_before(args.before) if args.before else None
    world = build_world(Path(tempfile.mkdtemp(prefix="bench-")))
    results: dict[str, Any] = {"benchmark": "token", "rounds": args.rounds, "pairs": {}}
    for outer, inner in PAIRS:
        token = world.token(outer=outer, inner=inner, enc="A256GCM")
        variants = {"raw": raw_operations(world, token, outer, inner)}
        if outer.startswith("ECDH-ES"):
            variants["raw+epk"] = raw_operations(world, token, outer, inner, fresh_epk=True)
        variants["ours"] = ours(world, token)
        if before is not None:
            variants["before"] = ours(world, token, before)
        variants["jwcrypto"] = jwcrypto_high_level(world, token, outer, inner)
        joserfc = joserfc_high_level(world, token, outer, inner)
        if joserfc is not None:
            variants["joserfc"] = joserfc
        for fn in variants.values():
            fn()  # each must accept the token
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                samples[name].append(_time(fn, args.seconds))
        us = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
        ratios = {name: value / us["raw"] for name, value in us.items()}
        if "raw+epk" in us:
            ratios["ours/raw+epk"] = us["ours"] / us["raw+epk"]
        results["pairs"][f"{outer}/{inner}"] = {"us": us, "ratio_to_raw": ratios}
    _print_table(results["pairs"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
