"""Published vectors through our token layer: Wycheproof JWE, JWS and JWK, and RFC 7520 section 6.

Each Wycheproof vector's key is imported as configuration would import it
(``keyset_from_jwks``: alg pinned from the key's own ``alg``, kid from the key),
then the token goes through ``decrypt_compact`` / ``verify_compact``.

- ``invalid`` vectors: the token is refused with an AuthzError, never another
  exception. Where we refuse the key itself at load (ConfigError), the token is
  still run, against an empty key set, and must still be refused that way.
- ``valid`` vectors: accepted (with the right plaintext) unless listed in
  ``VALID_WE_REJECT`` with the reason; the list is exact in both directions.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.errors import AuthzError, ConfigError
from authz.jose.jwe import decrypt_compact
from authz.jose.jws import verify_compact
from authz.jose.keys import CONTENT_ENCRYPTION_ALGS, KeySet, Purpose, keyset_from_jwks
from authz.jose.nested import TokenKeys, validate_token

VECTORS = Path(__file__).parents[1] / "vectors"
EMPTY = KeySet.of([])


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


JWE_FILE = _load("wycheproof/json_web_encryption_test.json")
JWS_FILE = _load("wycheproof/json_web_signature_test.json")
JWK_FILE = _load("wycheproof/json_web_key_test.json")
COOKBOOK = _load("jose-cookbook/6.nesting_signatures_and_encryption.json")

# Valid vectors our stricter rules reject: tcId -> (where, what). "key": the vector's
# key is refused at load (ConfigError naming the reason); "token": the token is refused
# with this reason code. Keep it exact: a vector that starts or stops being rejected fails.
_RSA1_5 = ("key", "RSA1_5 is not accepted")  # Bleichenbacher / CVE-2016-6298: never RSA1_5
VALID_WE_REJECT: dict[str, dict[int, tuple[str, str]]] = {
    "jwe": {
        100: _RSA1_5,
        101: _RSA1_5,
        102: _RSA1_5,
        103: _RSA1_5,
        104: _RSA1_5,
        105: _RSA1_5,
        112: _RSA1_5,
        128: _RSA1_5,  # RFC 7520 figure 81
        # RFC 7520 figure 136 (dir): the key's alg is the content encryption "A128GCM";
        # we pin keys to their key-management alg, which for a direct key is "dir".
        132: ("key", "A128GCM cannot be used to decrypt"),
        # RFC 7520 figure 170: compressed plaintext (zip: DEF), refused outright (CVE-2024-28102).
        135: ("token", "zip_not_allowed"),
    },
    "jws": {
        # RFC 7520 figure 20: the key says alg PS256, the token PS384. Keys are pinned to
        # their one alg (Wycheproof documents rejecting such keys as reasonable).
        346: ("token", "signing_key_unknown"),
        350: ("token", "signing_key_unknown"),
        # RFC 7520 figure 27: the key's alg is "ES521" (a typo for ES512 in the vector):
        # a key with an alg that is no JOSE signature algorithm is refused.
        347: ("key", "ES521 cannot be used to verify"),
        351: ("key", "ES521 cannot be used to verify"),
        # Marked valid but contain '?' (a known vector bug): not base64url.
        372: ("token", "inner_token_malformed"),
        373: ("token", "inner_token_malformed"),
    },
}

# Invalid vectors we accept: only Wycheproof's own bugs, each byte-identical to a valid vector.
INVALID_WE_ACCEPT: dict[str, dict[int, int]] = {"jwe": {}, "jws": {367: 357, 370: 357}}

# Wycheproof gives the keys of JWS tcId 353-356 (rejectWrongUse, rejectWrongKeyOps) no
# "alg"; every key we configure needs one, so we derive it from kty and curve (RSA ->
# RS256, P-256 -> ES256: what the tokens say). The vectors then test "use" and "key_ops".
_DERIVED_ALG = {"RSA": "RS256", "P-256": "ES256"}


@dataclass(frozen=True)
class Vector:
    kind: str  # "jwe" or "jws"
    tc_id: int
    comment: str
    result: str
    token: str
    key: dict[str, Any]
    plaintext: bytes | None  # JWE only

    @property
    def id(self) -> str:
        return f"{self.tc_id}-{self.comment}"


def _pinned(key: dict[str, Any]) -> dict[str, Any]:
    """The vector's key, with alg (and kid) derived when the vector gives none."""
    key = dict(key)
    if "alg" not in key:
        key["alg"] = _DERIVED_ALG[key.get("crv", key["kty"])]
    key.setdefault("kid", "vector-key")
    return key


def _vectors(kind: str, data: dict[str, Any]) -> list[Vector]:
    out = []
    for group in data["testGroups"]:
        # A JWE is decrypted with the private key; a JWS is verified with the public one.
        key = group["private"] if kind == "jwe" else group.get("public", group["private"])
        for test in group["tests"]:
            plaintext = bytes.fromhex(test["pt"]) if "pt" in test else None
            token = test["jwe" if kind == "jwe" else "jws"]
            out.append(
                Vector(kind, test["tcId"], test["comment"], test["result"], token, _pinned(key), plaintext)
            )
    return out


JWE_VECTORS = _vectors("jwe", JWE_FILE)
JWS_VECTORS = _vectors("jws", JWS_FILE)


@dataclass(frozen=True)
class Outcome:
    key_refused: str | None  # the ConfigError reason when the vector's key cannot be configured
    code: str | None  # the AuthzError code when the token is refused
    output: bytes | None  # plaintext (JWE) or payload (JWS) when accepted

    @property
    def accepted(self) -> bool:
        return self.key_refused is None and self.code is None


@functools.cache
def _keyset(key_json: str, purpose: Purpose) -> KeySet | str:
    """The key imported once per distinct key (RSA private keys are slow), or the refusal."""
    try:
        return keyset_from_jwks({"keys": [json.loads(key_json)]}, purpose, "vector")
    except ConfigError as exc:
        return exc.reason


def run(vector: Vector) -> Outcome:
    """Our token layer on one vector. Exceptions other than AuthzError propagate: a failure."""
    purpose = Purpose.DECRYPT if vector.kind == "jwe" else Purpose.VERIFY
    imported = _keyset(json.dumps(vector.key, sort_keys=True), purpose)
    keyset, refused = (EMPTY, imported) if isinstance(imported, str) else (imported, None)
    try:
        if vector.kind == "jwe":
            # Every JOSE content encryption: the vectors test the crypto, not our configured list.
            output = decrypt_compact(vector.token, keyset, CONTENT_ENCRYPTION_ALGS).plaintext
        else:
            _, output, _ = verify_compact(vector.token, keyset)
    except AuthzError as exc:
        return Outcome(refused, exc.code, None)
    return Outcome(refused, None, output)


def check_vector(vector: Vector) -> None:
    outcome = run(vector)
    if vector.result == "invalid":
        twin = INVALID_WE_ACCEPT[vector.kind].get(vector.tc_id)
        if twin is not None:
            original = next(
                v for v in (JWE_VECTORS + JWS_VECTORS) if (v.kind, v.tc_id) == (vector.kind, twin)
            )
            assert (vector.token, original.result) == (original.token, "valid"), (
                "no longer a copy of a valid vector"
            )
            assert outcome.accepted
            return
        assert outcome.code is not None, f"invalid vector accepted: {outcome}"
        return
    expected = VALID_WE_REJECT[vector.kind].get(vector.tc_id)
    if expected is None:
        assert outcome.accepted, f"valid vector rejected: {outcome}"
        if vector.plaintext is not None:
            assert outcome.output == vector.plaintext
        return
    where, what = expected
    assert outcome.code is not None, "listed as rejected but accepted"
    if where == "key":
        assert outcome.key_refused is not None
        assert what in outcome.key_refused
    else:
        assert (outcome.key_refused, outcome.code) == (None, what)


@pytest.mark.parametrize("vector", JWE_VECTORS, ids=lambda v: v.id)
def test_wycheproof_jwe(vector):
    """A Wycheproof JWE vector: invalid ones refused with an AuthzError, valid ones decrypted (or listed)."""
    check_vector(vector)


@pytest.mark.parametrize("vector", JWS_VECTORS, ids=lambda v: v.id)
def test_wycheproof_jws(vector):
    """A Wycheproof JWS vector: invalid ones refused with an AuthzError, valid ones verified (or listed)."""
    check_vector(vector)


def test_vector_files_are_complete():
    """All vectors of the copied files are run (139 JWE, 401 JWS), each tcId once."""
    assert (len(JWE_VECTORS), len(JWS_VECTORS)) == (JWE_FILE["numberOfTests"], JWS_FILE["numberOfTests"])
    assert (len(JWE_VECTORS), len(JWS_VECTORS)) == (139, 401)
    for vectors in (JWE_VECTORS, JWS_VECTORS):
        assert len({v.tc_id for v in vectors}) == len(vectors)


def test_exception_lists_name_real_vectors():
    """Every listed exception names a vector of the right result (no stale entries)."""
    by_id = {(v.kind, v.tc_id): v for v in JWE_VECTORS + JWS_VECTORS}
    for kind, listed in VALID_WE_REJECT.items():
        assert all(by_id[kind, tc_id].result == "valid" for tc_id in listed)
    for kind, accepted in INVALID_WE_ACCEPT.items():
        assert all(by_id[kind, tc_id].result == "invalid" for tc_id in accepted)


def test_invalid_vectors_refused_only_because_of_their_key():
    """Invalid vectors whose key we refuse at load are also refused as tokens; they are exactly these."""
    refused = {
        (v.kind, v.tc_id): outcome.code
        for v in JWE_VECTORS + JWS_VECTORS
        if v.result == "invalid" and (outcome := run(v)).key_refused is not None
    }
    # JWE 113-120: RSA1_5 key (Bleichenbacher padding variants); JWS 353-356: a key for
    # encryption ("use": "enc", or "key_ops" without "verify") refused for verification.
    assert refused == {
        **{("jwe", tc_id): "alg_not_allowed" for tc_id in range(113, 121)},
        **{("jws", tc_id): "signing_key_unknown" for tc_id in range(353, 357)},
    }


# -- Wycheproof JWK: key sets ---------------------------------------------------

# Invalid JWK vectors whose key set we accept, refusing the token instead.
JWK_INVALID_REFUSED_AS_TOKEN = {3: "signature_invalid"}  # rejectsModifiedSignature


def _jwk_vectors() -> list[Any]:
    return [
        pytest.param(
            t["tcId"],
            t["comment"],
            t["result"],
            g.get("public", g["private"]),
            t["jws"],
            id=f"{t['tcId']}-{t['comment']}",
        )
        for g in JWK_FILE["testGroups"]
        for t in g["tests"]
    ]


@pytest.mark.parametrize(("tc_id", "comment", "result", "jwks", "token"), _jwk_vectors())
def test_wycheproof_jwk(tc_id, comment, result, jwks, token):
    """A Wycheproof key set: a valid one verifies its token; an invalid one, or its token, is refused."""
    try:
        keyset = keyset_from_jwks(jwks, Purpose.VERIFY, f"tcId {tc_id}")
    except ConfigError:
        assert result == "invalid", f"{comment}: valid key set refused"
        assert tc_id not in JWK_INVALID_REFUSED_AS_TOKEN
        return
    if result == "valid":
        verify_compact(token, keyset)
        return
    with pytest.raises(AuthzError) as caught:
        verify_compact(token, keyset)
    assert caught.value.code == JWK_INVALID_REFUSED_AS_TOKEN.get(tc_id), f"{comment}: key set accepted"


# -- RFC 7520 section 6: a JWS nested in a JWE ----------------------------------

ENCRYPTION = COOKBOOK["encrypt"]
SIGNING = COOKBOOK["sign"]
HOBBITON = "hobbiton.example"


@pytest.fixture(scope="module")
def cookbook_keys() -> TokenKeys:
    """The cookbook's keys as configuration: its RSA-OAEP key, and hobbiton.example's PS256 key."""
    decryption = keyset_from_jwks({"keys": [ENCRYPTION["input"]["key"]]}, Purpose.DECRYPT, "cookbook")
    # The signing key has a kid but no alg: the cookbook gives it as the input's "alg" (PS256).
    private = SIGNING["input"]["key"]
    public = {name: private[name] for name in ("kty", "kid", "use", "n", "e")} | {
        "alg": SIGNING["input"]["alg"]
    }
    issuer = keyset_from_jwks({"keys": [public]}, Purpose.VERIFY, "cookbook")
    return TokenKeys(
        decryption=decryption,
        content_encryption=frozenset({"A128GCM"}),
        issuers={HOBBITON: issuer},
        max_bytes=8192,
        allowed_typ=frozenset({"jwt"}),
    )


def test_rfc7520_nested_token_is_accepted(cookbook_keys):
    """RFC 7520 section 6 (RSA-OAEP + A128GCM around PS256 without kid) validates to the cookbook's claims."""
    verified = validate_token(ENCRYPTION["output"]["compact"], cookbook_keys)
    assert verified.claims == json.loads(SIGNING["input"]["payload"])
    assert (verified.nested, verified.issuer, verified.signing_kid) == (True, HOBBITON, HOBBITON)
    assert verified.decryption_kid == ENCRYPTION["input"]["key"]["kid"]


def test_rfc7520_layers_match_the_cookbook(cookbook_keys):
    """Each layer yields the cookbook's values: JWE header and plaintext, then JWS header and payload."""
    outer = decrypt_compact(ENCRYPTION["output"]["compact"], cookbook_keys.decryption, frozenset({"A128GCM"}))
    assert outer.header == ENCRYPTION["encrypting_content"]["protected"]
    assert outer.plaintext.decode("ascii") == ENCRYPTION["input"]["plaintext"] == SIGNING["output"]["compact"]
    header, payload, key = verify_compact(outer.plaintext.decode("ascii"), cookbook_keys.issuers[HOBBITON])
    assert header == SIGNING["signing"]["protected"]
    assert payload.decode("utf-8") == SIGNING["input"]["payload"]
    assert key.kid == HOBBITON


@pytest.mark.parametrize("form", ["json", "json_flat"])
def test_rfc7520_json_serializations_are_refused(cookbook_keys, form):
    """The same token in (flattened) JSON serialization is refused: compact only."""
    token = json.dumps(ENCRYPTION["output"][form])
    with pytest.raises(AuthzError) as caught:
        validate_token(token, cookbook_keys)
    assert caught.value.code == "token_malformed"


def test_rfc7520_tampered_signature_is_refused(cookbook_keys):
    """Control: the cookbook's inner signature with one byte changed is refused."""
    inner = SIGNING["output"]["compact"]
    header_payload, signature = inner.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 1
    forged = header_payload + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode("ascii")
    with pytest.raises(AuthzError) as caught:
        verify_compact(forged, cookbook_keys.issuers[HOBBITON])
    assert caught.value.code == "signature_invalid"
