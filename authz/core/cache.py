"""The verified-token cache: the expensive part of a check, done once per token.

It holds only tokens that decrypted and verified, belongs to one snapshot (a reload starts
it empty), and a hit holds while the issuer still serves the very key that verified the
token and until its ``exp``; claims' time checks and policy run on every request
(docs/architecture.md, "The verified-token cache").
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace

from authz.errors import AuthzError
from authz.jose.keys import KeySet
from authz.jose.nested import TokenKeys, VerifiedToken

__all__ = ["TokenCache"]


@dataclass(frozen=True, slots=True)
class _Entry:
    token: VerifiedToken
    expires_at: float
    # The issuer's fetched key set when the entry was last known good (None: none
    # fetched, or files only). While it is the current set, the entry holds.
    remote_keys: KeySet | None


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
        if not _usable(entry, keys, now) and not self._renew(key, entry, keys, now):
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
        if entry is None or entry.token is not token:
            return False
        if not _usable(entry, keys, now) and not self._renew(key, entry, keys, now):
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
        # Read the set first, then check the key against the keys served now: a refresh
        # that lands between the verification and here (a fetch thread swaps the set)
        # either is seen by the check, or leaves an older set recorded, which the next
        # hit checks again. A token whose key was replaced meanwhile is not cached.
        remote_keys = _remote_keys(token, keys)
        if not _still_served(token, keys):
            return
        self._entries[key] = _Entry(token, expires_at, remote_keys)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _renew(self, key: bytes, entry: _Entry, keys: TokenKeys, now: float) -> bool:
        """Off the fast path: keep an entry across a changed key set if its key is still served.

        An expired entry, or one whose key was removed or replaced, is dropped (False).
        """
        remote_keys = _remote_keys(entry.token, keys)  # first, as in put
        if now < entry.expires_at and _still_served(entry.token, keys):
            self._entries[key] = replace(entry, remote_keys=remote_keys)  # later hits: the fast path
            return True
        del self._entries[key]
        return False


def _usable(entry: _Entry, keys: TokenKeys, now: float) -> bool:
    """The fast path: before the token's exp, and the issuer's fetched key set is the one last seen."""
    return now < entry.expires_at and _remote_keys(entry.token, keys) is entry.remote_keys


def _remote_keys(token: VerifiedToken, keys: TokenKeys) -> KeySet | None:
    """The issuer's current fetched key set (None for issuers with key files only)."""
    issuer = keys.issuers.get(token.issuer) if token.issuer is not None else None
    remote = getattr(issuer, "remote", None)
    return getattr(remote, "keyset", None)


def _still_served(token: VerifiedToken, keys: TokenKeys) -> bool:
    """Whether the issuer's keys would now verify ``token`` with the very key that did.

    The same lookup as a verification (files first, then the fetched set; by kid and
    the key's pinned alg). An encrypt-only token rests on no issuer key.
    """
    signing_key = token.signing_key
    if signing_key is None:
        return not token.nested
    lookup = keys.issuers.get(token.issuer) if token.issuer is not None else None
    if lookup is None:
        return False
    try:
        found = lookup.select(signing_key.kid, signing_key.alg)
    except AuthzError:  # issuer_keys_unavailable: nothing fetched (cannot follow a fetch)
        return False
    return any(candidate is signing_key for candidate in found)
