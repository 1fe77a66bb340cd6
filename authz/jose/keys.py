"""Key sets: loading JWK Set files, per-key algorithm pinning, ``kid`` lookup.

Keys are imported once, when a configuration snapshot is built (importing an
RSA private JWK costs tens of milliseconds), and shared read-only by requests.
Every key names its one algorithm (``alg``); a token may only use a key with
the algorithm that key is pinned to. Algorithms with known attacks (RSA1_5,
PBES2-*, ``none``) cannot be configured at all.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto.common import JWException, base64url_decode
from jwcrypto.jwk import JWK

from authz.errors import AuthzError, ConfigError, Reason

__all__ = [
    "CONTENT_ENCRYPTION_ALGS",
    "KEY_MANAGEMENT_ALGS",
    "MAX_KIDLESS_CANDIDATES",
    "SIGNATURE_ALGS",
    "IssuerKeys",
    "Key",
    "KeyLookup",
    "KeySet",
    "Purpose",
    "RemoteKeys",
    "keyset_from_jwks",
    "load_keyset",
    "parse_keyset",
]


class Purpose(enum.Enum):
    """What a key set is for: our decryption keys or an issuer's signing keys."""

    DECRYPT = "decrypt"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class _AlgSpec:
    kty: str
    curves: frozenset[str] = frozenset()
    # Exact symmetric key sizes in bytes (AES key wrap), or a minimum (HMAC).
    oct_sizes: frozenset[int] = frozenset()
    oct_min: int = 0


_RSA = _AlgSpec("RSA")
_ECDH = _AlgSpec("EC", frozenset({"P-256", "P-384", "P-521"}))
_ECDH_OKP = frozenset({"X25519", "X448"})

KEY_MANAGEMENT_ALGS: Mapping[str, _AlgSpec] = MappingProxyType(
    {
        "RSA-OAEP": _RSA,
        "RSA-OAEP-256": _RSA,
        "ECDH-ES": _ECDH,
        "ECDH-ES+A128KW": _ECDH,
        "ECDH-ES+A192KW": _ECDH,
        "ECDH-ES+A256KW": _ECDH,
        "A128KW": _AlgSpec("oct", oct_sizes=frozenset({16})),
        "A192KW": _AlgSpec("oct", oct_sizes=frozenset({24})),
        "A256KW": _AlgSpec("oct", oct_sizes=frozenset({32})),
        "A128GCMKW": _AlgSpec("oct", oct_sizes=frozenset({16})),
        "A192GCMKW": _AlgSpec("oct", oct_sizes=frozenset({24})),
        "A256GCMKW": _AlgSpec("oct", oct_sizes=frozenset({32})),
        # dir: the key is the CEK; its size must fit the token's enc (checked on use).
        "dir": _AlgSpec("oct", oct_sizes=frozenset({16, 24, 32, 48, 64})),
    }
)

CONTENT_ENCRYPTION_ALGS: frozenset[str] = frozenset(
    {"A128GCM", "A192GCM", "A256GCM", "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512"}
)

SIGNATURE_ALGS: Mapping[str, _AlgSpec] = MappingProxyType(
    {
        "RS256": _RSA,
        "RS384": _RSA,
        "RS512": _RSA,
        "PS256": _RSA,
        "PS384": _RSA,
        "PS512": _RSA,
        "ES256": _AlgSpec("EC", frozenset({"P-256"})),
        "ES384": _AlgSpec("EC", frozenset({"P-384"})),
        "ES512": _AlgSpec("EC", frozenset({"P-521"})),
        "EdDSA": _AlgSpec("OKP", frozenset({"Ed25519", "Ed448"})),
        "HS256": _AlgSpec("oct", oct_min=32),
        "HS384": _AlgSpec("oct", oct_min=48),
        "HS512": _AlgSpec("oct", oct_min=64),
    }
)

_FORBIDDEN_ALGS = ("RSA1_5", "PBES2-", "none")
_AES_KEY_BYTES = frozenset({16, 24, 32})
_MIN_RSA_BITS = 2048

# A token without ``kid`` may try at most this many keys of its algorithm.
MAX_KIDLESS_CANDIDATES = 3


@dataclass(frozen=True, slots=True)
class Key:
    """One imported key, pinned to one algorithm."""

    kid: str
    alg: str
    kty: str
    crv: str | None
    jwk: JWK = field(repr=False, compare=False)
    # The key material, derived once at load from ``jwk`` exactly as jwcrypto derives
    # it per operation (``get_op_key``, which also checks ``use`` and ``key_ops``): the
    # pyca key object (private for a decryption key, public for a signing key) or the
    # raw bytes of an ``oct`` key. The token layer's direct pyca calls use it, so no
    # token pays for a base64 decode or a key-object lookup.
    material: Any = field(default=None, repr=False, compare=False)
    # A ``dir`` key of an AES-GCM size is the CEK itself: its AESGCM object, built
    # once (pyca's AEAD objects are immutable and copy a base context per call).
    aead: AESGCM | None = field(default=None, repr=False, compare=False)
    # sha256 of the JWK as given (canonical JSON): a refetched JWKS reuses this object
    # when the same kid comes with the same content (see ``keyset_from_jwks``).
    fingerprint: bytes = field(default=b"", repr=False, compare=False)

    @property
    def symmetric(self) -> bool:
        return self.kty == "oct"


@dataclass(frozen=True, slots=True)
class KeySet:
    """Keys by ``kid``, plus an index by algorithm for tokens without ``kid``."""

    by_kid: Mapping[str, Key]
    by_alg: Mapping[str, tuple[Key, ...]]

    @classmethod
    def of(cls, keys: Iterable[Key]) -> KeySet:
        by_kid: dict[str, Key] = {}
        by_alg: dict[str, list[Key]] = {}
        for key in keys:
            by_kid[key.kid] = key
            by_alg.setdefault(key.alg, []).append(key)
        return cls(
            MappingProxyType(by_kid),
            MappingProxyType({alg: tuple(ks) for alg, ks in by_alg.items()}),
        )

    def __len__(self) -> int:
        return len(self.by_kid)

    def size(self) -> int:
        return len(self.by_kid)

    def select(self, kid: str | None, alg: str) -> tuple[Key, ...]:
        """Keys a token may be tried with: the one named by ``kid``, else a bounded few.

        Returns an empty tuple when the ``kid`` is unknown, when the named key is
        pinned to another algorithm, or when too many keys would have to be tried.
        """
        if kid is not None:
            key = self.by_kid.get(kid)
            return (key,) if key is not None and key.alg == alg else ()
        candidates = self.by_alg.get(alg, ())
        return candidates if len(candidates) <= MAX_KIDLESS_CANDIDATES else ()


class KeyLookup(Protocol):
    """What the token layer needs of a key source: the keys a token may be tried with."""

    def select(self, kid: str | None, alg: str) -> tuple[Key, ...]: ...

    def size(self) -> int: ...


class RemoteKeys(Protocol):
    """The current key set of a ``jwks_uri`` (authz.jwks.RemoteJwks); None before the first fetch."""

    @property
    def keyset(self) -> KeySet | None: ...

    async def refetch_for_unknown_kid(self, wait: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """An issuer's keys: from files, from a ``jwks_uri``, or both (files first)."""

    static: KeySet
    remote: RemoteKeys | None = None

    def size(self) -> int:
        """Keys known now: from files, plus the last good fetch."""
        keyset = self.remote.keyset if self.remote is not None else None
        return len(self.static) + (len(keyset) if keyset is not None else 0)

    def select(self, kid: str | None, alg: str) -> tuple[Key, ...]:
        found = self.static.select(kid, alg)
        if found or self.remote is None:
            return found
        keyset = self.remote.keyset  # one read: a concurrent refresh swaps the reference
        if keyset is None:
            if len(self.static):
                return ()
            # Never fetched: we cannot know whether the token is good. Deny, distinctly.
            raise AuthzError(Reason.ISSUER_KEYS_UNAVAILABLE)
        return keyset.select(kid, alg)


def load_keyset(path: Path, purpose: Purpose) -> KeySet:
    """Read and import a JWK Set file; any problem is a ConfigError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read key file: {exc.strerror or exc}") from None
    return parse_keyset(raw, purpose, str(path))


def parse_keyset(raw: bytes, purpose: Purpose, source: str) -> KeySet:
    """Import the bytes of a JWK Set file; any problem is a ConfigError naming ``source``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "not UTF-8") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(source, "not valid JSON", line) from None
    return keyset_from_jwks(data, purpose, source)


def keyset_from_jwks(data: Any, purpose: Purpose, source: str, previous: KeySet | None = None) -> KeySet:
    """Validate and import a parsed JWK Set (``{"keys": [...]}``).

    ``previous``: the set this document replaces (a JWKS refetch). A key whose kid
    and content are unchanged is that set's very ``Key`` object, and when every key
    is unchanged the result is ``previous`` itself: what was verified with a key
    stays verified while that key is served (authz.cache compares identities).
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(source, 'a JWK Set must be an object with a "keys" list')
    keys: list[Key] = []
    seen: set[str] = set()
    for index, entry in enumerate(data["keys"]):
        key = _unchanged(previous, entry) or _import_key(entry, purpose, f"{source}: key #{index}")
        if key.kid in seen:
            raise ConfigError(source, f"key #{index}: duplicate kid {key.kid!r}")
        seen.add(key.kid)
        keys.append(key)
    # An issuer's key set is public material; a shared HMAC secret in the same set
    # is a secret handled as if it were public (Wycheproof "mixed symmetry" key set).
    if purpose is Purpose.VERIFY and len({key.symmetric for key in keys}) > 1:
        raise ConfigError(source, "an issuer key set must not mix shared secrets (oct) with public keys")
    if (
        previous is not None
        and len(keys) == len(previous)
        and all(previous.by_kid.get(k.kid) is k for k in keys)
    ):
        return previous  # the same keys (in any order): nothing changed
    return KeySet.of(keys)


def _fingerprint(entry: Mapping[str, Any]) -> bytes:
    """sha256 of a JWK's canonical JSON: equal for the same members and values, in any order."""
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).digest()


def _unchanged(previous: KeySet | None, entry: Any) -> Key | None:
    """The key of ``previous`` that ``entry`` describes exactly (same kid, same content), or None.

    Reusing it skips the import: the same content passed the same checks before.
    """
    if previous is None or not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    old = previous.by_kid.get(kid) if isinstance(kid, str) else None
    return old if old is not None and old.fingerprint == _fingerprint(entry) else None


def _import_key(entry: Any, purpose: Purpose, where: str) -> Key:
    if not isinstance(entry, dict):
        raise ConfigError(where, "a key must be a JSON object")
    kid, alg, kty = entry.get("kid"), entry.get("alg"), entry.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(where, 'every key needs a non-empty string "kid"')
    where = f"{where} (kid {kid!r})"
    if not isinstance(alg, str) or not alg:
        raise ConfigError(where, 'every key needs its "alg": keys are pinned to one algorithm')
    if alg.startswith(_FORBIDDEN_ALGS):
        raise ConfigError(where, f"algorithm {alg} is not accepted (known attacks)")
    table = KEY_MANAGEMENT_ALGS if purpose is Purpose.DECRYPT else SIGNATURE_ALGS
    spec = table.get(alg)
    if spec is None:
        raise ConfigError(where, f"algorithm {alg} cannot be used to {purpose.value}")
    expected_use = "enc" if purpose is Purpose.DECRYPT else "sig"
    if "use" in entry and entry["use"] != expected_use:
        raise ConfigError(where, f'"use" must be "{expected_use}" for a key to {purpose.value}')
    crv = entry.get("crv")
    kty_ok = kty == spec.kty or (alg.startswith("ECDH-ES") and kty == "OKP")
    if not kty_ok:
        raise ConfigError(where, f"algorithm {alg} needs a key of type {spec.kty}, not {kty}")
    allowed_curves = _ECDH_OKP if kty == "OKP" and alg.startswith("ECDH-ES") else spec.curves
    if allowed_curves and crv not in allowed_curves:
        raise ConfigError(where, f"algorithm {alg} cannot use curve {crv}")
    try:
        jwk = JWK(**entry)
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(where, f"not a valid {kty} key ({type(exc).__name__})") from None
    material = _check_material(jwk, entry, spec, alg, purpose, where)
    aead = AESGCM(material) if alg == "dir" and len(material) in _AES_KEY_BYTES else None
    return Key(
        kid=kid,
        alg=alg,
        kty=str(kty),
        crv=crv if isinstance(crv, str) else None,
        jwk=jwk,
        material=material,
        aead=aead,
        fingerprint=_fingerprint(entry),
    )


def _check_material(  # noqa: PLR0917 - private helper of _import_key
    jwk: JWK, entry: Mapping[str, Any], spec: _AlgSpec, alg: str, purpose: Purpose, where: str
) -> Any:
    """Check the key material; returns it as the token layer uses it (see ``Key.material``)."""
    kty = entry["kty"]
    if kty != "oct":
        if purpose is Purpose.DECRYPT and not jwk.has_private:
            raise ConfigError(where, "a decryption key must include its private part")
        if purpose is Purpose.VERIFY and jwk.has_private:
            raise ConfigError(where, "an issuer key file must hold public keys only; remove the private part")
    # Ask for the key exactly as jwcrypto will when a token comes: that checks "use"
    # and "key_ops" and builds the pyca key object, which validates the material (RSA
    # exponent, EC point on its curve). A bad key then fails here, at load, as a
    # ConfigError, not later as an exception from jwcrypto or pyca (or a deny of
    # every token).
    operation = "verify" if purpose is Purpose.VERIFY else "decrypt" if kty == "oct" else "unwrapKey"
    try:
        op_key = jwk.get_op_key(operation)
        secret = base64url_decode(op_key) if kty == "oct" else b""
        size = len(secret)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable key
        raise ConfigError(where, f"key cannot be used to {purpose.value} ({type(exc).__name__})") from None
    if kty == "oct":
        if spec.oct_sizes and size not in spec.oct_sizes:
            raise ConfigError(where, f"{alg} needs a key of {sorted(spec.oct_sizes)} bytes")
        if size < spec.oct_min:
            raise ConfigError(where, f"{alg} needs a key of at least {spec.oct_min} bytes")
    elif kty == "RSA":
        if op_key.key_size < _MIN_RSA_BITS:
            raise ConfigError(where, f"RSA keys must have at least {_MIN_RSA_BITS} bits")
        public = op_key if purpose is Purpose.VERIFY else op_key.public_key()
        if _roca_fingerprint(public.public_numbers().n):
            raise ConfigError(where, "RSA modulus has the ROCA fingerprint (CVE-2017-15361); replace the key")
    return secret if kty == "oct" else op_key


# ROCA (CVE-2017-15361): a modulus from the vulnerable Infineon RSALib is 65537^a
# modulo a primorial M, so n mod p lies in the subgroup generated by 65537 for every
# prime p of M. For keys of 992 bits and more, M has at least the first 71 primes;
# testing the 70 odd ones gives a false-positive rate below 2^-85.
_ROCA_PRIMES = tuple(p for p in range(3, 354) if all(p % q for q in range(2, int(p**0.5) + 1)))
_ROCA_SUBGROUPS = tuple((p, frozenset(pow(65537, k, p) for k in range(p))) for p in _ROCA_PRIMES)


def _roca_fingerprint(modulus: int) -> bool:
    return all(modulus % p in subgroup for p, subgroup in _ROCA_SUBGROUPS)
