"""Token revocation: the entries, their one encoding, and the per-process mirror a check reads.

Three kinds of entry (issue 15): a token by its ``jti`` (kept until the token's ``exp``); every
token of a subject of an issuer issued before a time; every token of a client (``azp`` or
``client_id``) of an issuer issued before a time (both kept until ``max_lifetime`` after that
time, when no token issued before it can still be valid). A token's issue time is its
``iat``, else its ``nbf``; a token with neither cannot show it was issued after the entry and
is revoked by it.

The check runs on every token check, cached or not, and never waits for I/O: it reads the
mirror, which the app keeps current (authz/app/revocation.py) from the shared store or a
file. Lookups are dict lookups by exact key, O(1) at any number of entries. ``generation``
changes with every change of the entries, so that an answer kept from before (the HTTP
door's memo) is decided again rather than repeated.

A ``jti`` is never kept in clear: entries and logs name it by a keyed hash (``jti_hash``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from authz.core.claims import Claims
from authz.core.mirror import Mirror
from authz.errors import AuthzError, Reason

__all__ = [
    "NO_REVOCATIONS",
    "Entry",
    "EntryKind",
    "Revocation",
    "RevocationSet",
    "Revocations",
    "jti_hash",
]

_PERSON = b"revoked-jti-v1"
SHORT = 12  # hex digits of a jti hash in decision logs and spans


class EntryKind(enum.StrEnum):
    JTI = "jti"
    SUBJECT = "subject"
    CLIENT = "client"


def jti_hash(jti: str) -> str:
    """The name of a ``jti`` in entries and logs: BLAKE2b-128, hex (the ``jti`` itself is never kept)."""
    return hashlib.blake2b(jti.encode("utf-8"), digest_size=16, person=_PERSON).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One revocation. ``value``: the jti hash (JTI), the subject (SUBJECT) or the client (CLIENT)."""

    kind: EntryKind
    value: str
    issuer: str = ""  # "" for a jti entry: jti values are unique across issuers (RFC 7519 4.1.7)
    before: float = math.inf  # SUBJECT/CLIENT: tokens issued before this time (epoch seconds)
    expires_at: float = math.inf  # when the entry may be forgotten (epoch seconds)

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind.value, self.issuer, self.value)

    def member(self) -> str:
        """The entry as one canonical string (a store's set member; equal entries, equal strings)."""
        fields: list[Any] = [self.kind.value, self.issuer, self.value]
        if self.kind is not EntryKind.JTI:
            fields.append(_time(self.before))
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_member(cls, member: str | bytes, expires_at: float) -> Entry:
        """Parse ``member()``; ValueError for anything else."""
        fields = json.loads(member)
        if not isinstance(fields, list) or len(fields) not in (3, 4):
            raise ValueError("not a revocation entry")
        kind = EntryKind(fields[0])
        issuer, value = fields[1], fields[2]
        if not isinstance(issuer, str) or not isinstance(value, str) or not value:
            raise ValueError("not a revocation entry")
        if kind is EntryKind.JTI:
            if len(fields) != 3 or issuer or not _is_hash(value):
                raise ValueError("a jti entry is [jti, '', hash]")
            return cls(kind, value, expires_at=expires_at)
        if len(fields) != 4 or not issuer:
            raise ValueError(f"a {kind} entry is [{kind}, issuer, value, before]")
        before = fields[3]
        if isinstance(before, bool) or not isinstance(before, int | float) or not math.isfinite(before):
            raise ValueError("before is not a time")
        return cls(kind, value, issuer, float(before), expires_at)


def _time(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _is_hash(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class Revocation:
    """Why a token is revoked: the kind of entry that matched, and the token's jti as a short hash."""

    kind: EntryKind
    jti: str | None  # the first SHORT hex digits of jti_hash, or None without a jti


class Revocations(Protocol):
    """What a check reads: is this token revoked (or the state too old to tell)?"""

    @property
    def generation(self) -> int:
        """Changes whenever the entries do: an answer decided at another generation is decided again."""
        ...

    def check(self, claims: Claims) -> Revocation | None:
        """The matching revocation, or None; raises ``revocation_state_stale`` (fail closed)."""
        ...

    def holds(self, generation: int) -> bool:
        """Whether an allow decided at ``generation`` may be repeated now without a check."""
        ...

    def repeated(self) -> None:
        """A kept answer was repeated: counted as a check when the mirror is served stale."""
        ...


class RevocationSet(Mirror):
    """The mirror of one process: every live entry, indexed for O(1) checks; not thread-safe.

    Writers (the app's feed, on the event loop) call ``add``, ``remove``, ``replace`` and
    ``purge``; generation and freshness are the ``Mirror``'s: past ``max_staleness`` without
    a confirmation, a check raises ``revocation_state_stale`` unless ``serve_stale``.
    """

    __slots__ = ("_clients", "_entries", "_jti", "_subjects")

    def __init__(self, entries: Iterable[Entry] = (), *, max_staleness: float | None = None) -> None:
        super().__init__(max_staleness=max_staleness)
        self._entries: dict[tuple[str, str, str], dict[str, Entry]] = {}
        self._jti: dict[str, float] = {}
        self._subjects: dict[tuple[str, str], float] = {}
        self._clients: dict[tuple[str, str], float] = {}
        for entry in entries:
            self._add(entry)

    def __len__(self) -> int:
        return sum(len(members) for members in self._entries.values())

    def entries(self) -> list[Entry]:
        return [entry for members in self._entries.values() for entry in members.values()]

    # -- the check ---------------------------------------------------------------

    def check(self, claims: Claims) -> Revocation | None:
        if not self.current():
            raise AuthzError(Reason.REVOCATION_STATE_STALE, "revocation mirror not confirmed recently")
        if not self._entries:
            return None
        raw = claims.raw
        jti = raw.get("jti")
        digest = jti_hash(jti) if isinstance(jti, str) and self._jti else None
        if digest is not None and digest in self._jti:
            return Revocation(EntryKind.JTI, digest[:SHORT])
        kind = None
        if self._subjects and claims.subject is not None:
            before = self._subjects.get((claims.issuer, claims.subject))
            if before is not None and _issued_before(raw, before):
                kind = EntryKind.SUBJECT
        if kind is None and self._clients:
            for name in ("client_id", "azp"):
                client = raw.get(name)
                if isinstance(client, str):
                    before = self._clients.get((claims.issuer, client))
                    if before is not None and _issued_before(raw, before):
                        kind = EntryKind.CLIENT
                        break
        if kind is None:
            return None
        if digest is None and isinstance(jti, str):
            digest = jti_hash(jti)
        return Revocation(kind, digest[:SHORT] if digest else None)

    # -- writers -----------------------------------------------------------------

    def add(self, entry: Entry) -> bool:
        """Add (or update the expiry of) one entry; True when the entries changed."""
        if not self._add(entry):
            return False
        self.changed()
        return True

    def remove(self, member: str) -> bool:
        """Remove the entry with this ``member()``; True when there was one."""
        try:
            entry = Entry.from_member(member, math.inf)
        except (ValueError, TypeError):
            return False
        members = self._entries.get(entry.identity)
        if members is None or members.pop(member, None) is None:
            return False
        self._reindex(entry.identity)
        self.changed()
        return True

    def replace(self, entries: Iterable[Entry]) -> None:
        """Make the entries exactly these (a full resync), as one change."""
        self.adopt(RevocationSet(entries))

    def adopt(self, fresh: RevocationSet) -> None:
        """Take ``fresh``'s entries as one change: built elsewhere (a worker thread, for a full
        load), swapped in here without a loop over them, so checks never wait on a load."""
        self._entries, self._jti = fresh._entries, fresh._jti
        self._subjects, self._clients = fresh._subjects, fresh._clients
        self.changed()

    def purge(self, now: float) -> int:
        """Forget entries expired at ``now`` (epoch seconds); how many went."""
        gone = [
            (identity, member)
            for identity, members in self._entries.items()
            for member, entry in members.items()
            if entry.expires_at <= now
        ]
        for identity, member in gone:
            del self._entries[identity][member]
        for identity in {identity for identity, _ in gone}:
            self._reindex(identity)
        if gone:
            self.changed()
        return len(gone)

    def _add(self, entry: Entry) -> bool:
        members = self._entries.setdefault(entry.identity, {})
        member = entry.member()
        if members.get(member) == entry:
            return False
        members[member] = entry
        self._reindex(entry.identity)
        return True

    def _reindex(self, identity: tuple[str, str, str]) -> None:
        kind, issuer, value = identity
        members = self._entries.get(identity)
        if not members:
            self._entries.pop(identity, None)
            if kind == EntryKind.JTI:
                self._jti.pop(value, None)
            else:
                self._index(kind).pop((issuer, value), None)
            return
        if kind == EntryKind.JTI:
            self._jti[value] = max(e.expires_at for e in members.values())
        else:
            self._index(kind)[(issuer, value)] = max(e.before for e in members.values())

    def _index(self, kind: str) -> dict[tuple[str, str], float]:
        return self._subjects if kind == EntryKind.SUBJECT else self._clients


def _issued_before(raw: Mapping[str, Any], before: float) -> bool:
    """Whether the token was issued before ``before``: by iat, else nbf; with neither, it cannot
    show otherwise (revoked). Claims already checked both are numbers, if present."""
    issued = raw.get("iat")
    if issued is None:
        issued = raw.get("nbf")
    return issued is None or issued < before


NO_REVOCATIONS: Revocations = RevocationSet()
