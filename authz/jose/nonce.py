"""Stateless DPoP server nonces (RFC 9449 §8, §9): a MAC over a time window, nothing stored.

    nonce = base64url(0x01 || u32be(w) || HMAC-SHA256(K, CONTEXT || 0x01 || u32be(w))[:16])

with ``w = floor(now / lifetime)``: 28 characters. Every replica with the same key file
issues the same nonce in a window and accepts the others'. Windows ``w`` and ``w - 1`` are
accepted, ``w + 1`` within the clock skew. Keys: a JWK Set of ``oct`` keys; the first
signs, all verify. Nonces are not secrets (RFC 9449 §11.1): replay is the ``jti`` cache's job.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz.errors import AuthzError, ConfigError, Reason
from authz.jose.encoding import b64decode

__all__ = [
    "MAX_NONCE_KEYS",
    "MIN_SECRET_BYTES",
    "NONCE_CHARS",
    "NonceIssuer",
    "NonceKey",
    "load_nonce_keys",
    "parse_nonce_keys",
]

_VERSION = 1
_CONTEXT = b"envoy-jwe-authz/dpop-nonce/v1"
_TAG_BYTES = 16
_NONCE_BYTES = 1 + 4 + _TAG_BYTES
NONCE_CHARS = 28  # 21 bytes: a multiple of 3, so no padding to leave out

MIN_SECRET_BYTES = 32
MAX_NONCE_KEYS = 4


@dataclass(frozen=True, slots=True)
class NonceKey:
    """One HMAC-SHA256 secret of the nonce key file."""

    kid: str
    secret: bytes = field(repr=False)

    def tag(self, window: int) -> bytes:
        message = _CONTEXT + _window_bytes(window)
        return hmac.digest(self.secret, message, "sha256")[:_TAG_BYTES]


def _window_bytes(window: int) -> bytes:
    # The version byte is under the MAC too: a later format cannot be passed off as v1.
    return bytes([_VERSION]) + window.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class NonceIssuer:
    """Issues and checks nonces with ``keys`` (the first signs) and a window of ``lifetime`` s.

    A nonce lives one to two lifetimes after issue. ``retired``: keys dropped by a reload,
    verify-only until their time (wall clock): a reload that drops the signing key keeps it
    for two lifetimes (``successor``), so a one-step key replacement costs no client a
    retry; a dropped key that never signed goes at once. Windows are 32-bit: good until the
    year 2106 with any lifetime of one second or more.
    """

    keys: tuple[NonceKey, ...]
    lifetime: int
    skew: float = 5.0
    retired: tuple[tuple[NonceKey, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one nonce key")
        if type(self.lifetime) is not int or self.lifetime < 1:
            raise ValueError("lifetime is a whole number of seconds, at least 1")
        if not 0 <= self.skew < self.lifetime:
            raise ValueError("skew must be at least 0 and less than the lifetime")

    def window(self, now: float) -> int:
        return int(now // self.lifetime)

    def issue(self, now: float) -> str:
        """The current nonce: the same on every replica for the whole window."""
        window = self.window(now)
        raw = _window_bytes(window) + self.keys[0].tag(window)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def verify(self, nonce: str, now: float) -> bool:
        """Whether ``nonce`` is one of ours, of an accepted window, under a current key."""
        found = self._decode(nonce)
        if found is None:
            return False
        window, tag = found
        current = self.window(now)
        if not (
            window in (current, current - 1)
            or (window == current + 1 and window * self.lifetime - now <= self.skew)
        ):
            return False
        # compare_digest on every key, matched or not: the time says nothing of which.
        matched = False
        for key in self._verifying(now):
            matched |= hmac.compare_digest(tag, key.tag(window))
        return matched

    def needs_refresh(self, nonce: str, now: float) -> bool:
        """Whether to send a fresh nonce with an allow: the client's is in its last window
        (it has at most one lifetime left) or is not the signing key's.

        Meant for a nonce ``verify`` accepted; anything else needs one too.
        """
        found = self._decode(nonce)
        if found is None:
            return True
        window, tag = found
        if window < self.window(now):
            return True
        return not hmac.compare_digest(tag, self.keys[0].tag(window))

    def successor(
        self, keys: Sequence[NonceKey], *, now: float, lifetime: int | None = None, skew: float | None = None
    ) -> NonceIssuer:
        """The issuer after a reload with ``keys``.

        The signing key, when ``keys`` drops it, stays verify-only for two lifetimes
        (its nonces' longest life); earlier retirees stay until their time. A key that
        never signed here is dropped at once: no nonce of ours used it.
        """
        secrets = {key.secret for key in keys}
        retired = [(key, until) for key, until in self.retired if until > now and key.secret not in secrets]
        if self.keys[0].secret not in secrets:
            retired.append((self.keys[0], now + 2 * self.lifetime))
        return NonceIssuer(
            tuple(keys),
            self.lifetime if lifetime is None else lifetime,
            self.skew if skew is None else skew,
            tuple(retired),
        )

    def _verifying(self, now: float) -> Iterable[NonceKey]:
        yield from self.keys
        for key, until in self.retired:
            if until > now:
                yield key

    @staticmethod
    def _decode(nonce: str) -> tuple[int, bytes] | None:
        if not isinstance(nonce, str) or len(nonce) != NONCE_CHARS or not nonce.isascii():
            return None
        try:
            raw = b64decode(nonce.encode("ascii"), Reason.DPOP_NONCE_REQUIRED)
        except AuthzError:
            return None
        if len(raw) != _NONCE_BYTES or raw[0] != _VERSION:
            return None
        return int.from_bytes(raw[1:5], "big"), raw[5:]


def load_nonce_keys(path: Path) -> tuple[NonceKey, ...]:
    """Read the nonce key file (a JWK Set of ``oct`` keys); problems are ConfigErrors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read nonce key file: {exc.strerror or exc}") from None
    return parse_nonce_keys(raw, str(path))


def parse_nonce_keys(raw: bytes, source: str) -> tuple[NonceKey, ...]:
    """Validate a nonce key file's bytes: 1-4 ``oct`` keys of at least 32 bytes, distinct kids."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "not UTF-8") from None
    except ValueError as exc:
        raise ConfigError(source, "not valid JSON", getattr(exc, "lineno", None)) from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(source, 'a JWK Set must be an object with a "keys" list')
    entries: list[Any] = data["keys"]
    if not 1 <= len(entries) <= MAX_NONCE_KEYS:
        raise ConfigError(source, f"a nonce key file holds 1 to {MAX_NONCE_KEYS} keys (the first signs)")
    keys: list[NonceKey] = []
    for index, entry in enumerate(entries):
        keys.append(_nonce_key(entry, f"key #{index}", source))
    kids = [key.kid for key in keys]
    if len(set(kids)) != len(kids):
        raise ConfigError(source, "duplicate kid")
    if len({key.secret for key in keys}) != len(keys):
        raise ConfigError(source, "the same secret twice")
    return tuple(keys)


def _nonce_key(entry: Any, where: str, source: str) -> NonceKey:
    if not isinstance(entry, dict):
        raise ConfigError(source, f"{where}: a key must be a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(source, f'{where}: every key needs a non-empty string "kid"')
    where = f"{where} (kid {kid!r})"
    if entry.get("kty") != "oct":
        raise ConfigError(source, f'{where}: nonce keys are secrets, "kty": "oct"')
    if entry.get("alg", "HS256") != "HS256":
        raise ConfigError(source, f'{where}: nonces are HMAC-SHA256, "alg" is "HS256" if given')
    if entry.get("use", "sig") != "sig":
        raise ConfigError(source, f'{where}: "use" is "sig" if given')
    k = entry.get("k")
    try:
        if not isinstance(k, str) or not k.isascii():
            raise AuthzError(Reason.DPOP_NONCE_REQUIRED)
        secret = b64decode(k.encode("ascii"), Reason.DPOP_NONCE_REQUIRED)
    except AuthzError:
        raise ConfigError(source, f'{where}: "k" is not canonical base64url') from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(source, f"{where}: a secret of at least {MIN_SECRET_BYTES} bytes")
    return NonceKey(kid, secret)
