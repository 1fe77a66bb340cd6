"""The verified-token cache: the expensive part of a check, done once per token.

Keyed by a hash of the token string, it holds what the token layer returned
for a token that decrypted and verified (never a failure). It belongs to one
configuration snapshot: a reload makes a new, empty cache, so a removed key or
a tightened rule is effective from the swap on. Within a snapshot, a hit is
used only while the issuer's ``jwks_uri`` key set is the one that verified it
(a refresh may drop a signing key between reloads; any refresh empties the
issuer's part of the cache), and only until the token's ``exp``. The claims'
time checks and the whole policy run on every request, hit or not.

Keying on the token's hash is safe here although JOSE token strings are
malleable (an ECDSA signature has several encodings): the cache holds only
results of successful verification, and any encoding of the same token yields
the same verified claims.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from authz.token import TokenKeys, VerifiedToken

__all__ = ["TokenCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    token: VerifiedToken
    expires_at: float
    remote_keys: object | None  # the issuer's fetched KeySet when the token was verified


class TokenCache:
    """A bounded LRU of verified tokens; not thread-safe (one per event loop / process)."""

    __slots__ = ("_entries", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.blake2b(token.encode("ascii", "replace"), digest_size=20).digest()

    def get(self, key: bytes, keys: TokenKeys, now: float) -> VerifiedToken | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if not _usable(entry, keys, now):
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.token

    def holds(self, key: bytes, token: VerifiedToken, keys: TokenKeys, now: float) -> bool:
        """Whether ``token`` is still the valid entry under ``key`` (then counted as a hit).

        False counts nothing: the caller goes on to a full lookup, which counts.
        """
        entry = self._entries.get(key)
        if entry is None or entry.token is not token or not _usable(entry, keys, now):
            return False
        self._entries.move_to_end(key)
        self.hits += 1
        return True

    def peek(self, key: bytes) -> VerifiedToken | None:
        """The cached token under ``key``, without counting a lookup or checking its validity."""
        entry = self._entries.get(key)
        return entry.token if entry is not None else None

    def put(self, key: bytes, token: VerifiedToken, keys: TokenKeys, expires_at: float) -> None:
        """Cache a token whose claims validated; it is served until ``expires_at`` (its exp)."""
        if self.max_entries <= 0:
            return
        self._entries[key] = _Entry(token, expires_at, _remote_keys(token, keys))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _usable(entry: _Entry, keys: TokenKeys, now: float) -> bool:
    """Before the token's exp, and verified under the issuer's current fetched key set."""
    return now < entry.expires_at and _remote_keys(entry.token, keys) is entry.remote_keys


def _remote_keys(token: VerifiedToken, keys: TokenKeys) -> object | None:
    """The issuer's current fetched key set (None for issuers with key files only)."""
    issuer = keys.issuers.get(token.issuer) if token.issuer is not None else None
    remote = getattr(issuer, "remote", None)
    return getattr(remote, "keyset", None)
