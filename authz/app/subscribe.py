"""``authz subscriptions``: the approval workflow against the shared store or the subscriptions file.

Every move is ``transition`` (authz.core.subscription): the same rules in both places, and a
refused move changes nothing. In the store, a move is one script that writes the record only
if it is still the one the move was decided on, publishes it and appends the event to the
audit stream (authz/app/subscriptions.py). In a file, a move holds a lock beside the file,
appends the event to the audit trail beside it (``<file>.audit.jsonl``, synced), then
rewrites the file whole (a new file renamed over the old: a reload never reads half of it):
no move takes effect without its audit entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from authz.app.store import BACKGROUND_TIMEOUT, StoreClient
from authz.app.subscriptions import CHANGE_SCRIPT, SubscriptionKeys, field_of, load_records, record_at
from authz.config.settings import Config, StoreSettings
from authz.config.subscriptions import (
    audit_path,
    known_apis,
    parse_subscription_file,
    render_subscription_file,
)
from authz.core.subscription import Action, Event, Subscription, WorkflowError, transition

__all__ = ["Damaged", "FileBook", "Move", "StoreBook", "SubscriptionBook", "book_for"]

_TIMEOUT = BACKGROUND_TIMEOUT * 2
_ATTEMPTS = 5  # a move raced by another is decided again on the new state, this many times
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Damaged:
    """An audit entry that could not be read, by where it is (``line 3``, ``entry 1700000000000-0``)."""

    where: str


@dataclass(frozen=True, slots=True)
class Move:
    """One step of the workflow as the administrator asks for it."""

    action: Action
    tenant: str
    client: str
    api: str
    by: str
    reason: str = ""
    expires_at: float = math.inf

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.api, self.client)


class SubscriptionBook(Protocol):
    """Where the subscriptions of a configuration are kept."""

    where: str

    def change(self, move: Move, at: float) -> tuple[Subscription, Event]: ...

    def records(self) -> list[Subscription]: ...

    def events(self) -> list[Event | Damaged]:
        """The audit trail, oldest first; an entry that cannot be read stands as ``Damaged``."""
        ...


def book_for(config: Config) -> SubscriptionBook:
    """The book the configuration reads: its subscriptions file, else its store; WorkflowError if neither."""
    apis = known_apis(config.snapshot.tenants)
    if config.subscriptions.file is not None:
        return FileBook(Path(config.subscriptions.file), apis)
    if config.store is not None:
        return StoreBook(config.store, apis)
    raise WorkflowError(
        f"{config.source} keeps no subscriptions: set subscriptions.file, or a store for them to live in"
    )


def _known(move: Move, apis: Mapping[str, frozenset[str]]) -> None:
    if move.tenant not in apis:
        known = ", ".join(sorted(apis))
        raise WorkflowError(f"tenant {move.tenant!r} is not in the configuration (tenants: {known})")
    if move.api not in apis[move.tenant]:
        known = ", ".join(sorted(apis[move.tenant])) or "none"
        raise WorkflowError(f"API {move.api!r} is not one of the apis of tenant {move.tenant!r} ({known})")
    if not move.client or move.client != move.client.strip():
        raise WorkflowError("the client must be its id, without surrounding spaces")


def _decide(move: Move, current: Subscription | None, at: float) -> tuple[Subscription, Event]:
    return transition(
        current,
        move.action,
        key=move.key,
        by=move.by,
        reason=move.reason,
        at=at,
        expires_at=move.expires_at,
    )


class FileBook:
    """The subscriptions file of a configuration without a store (or with ``subscriptions.file``)."""

    def __init__(self, path: Path, apis: Mapping[str, frozenset[str]]) -> None:
        self.path = path
        self.apis = apis
        self.audit = audit_path(path)
        self.where = str(path)

    def change(self, move: Move, at: float) -> tuple[Subscription, Event]:
        """The audit entry is made durable first, then the new file renamed in: a move never
        takes effect without its entry; one whose rename fails is marked aborted in the trail."""
        _known(move, self.apis)
        with self._locked():
            records = {record.key: record for record in self.records()}
            updated, event = _decide(move, records.get(move.key), at)
            records[move.key] = updated
            temporary = self._prepare(render_subscription_file(list(records.values())))
            try:
                try:
                    self._append(event)
                except OSError as exc:
                    raise WorkflowError(
                        f"the audit trail {self.audit} cannot be written ({_why(exc)}): nothing changed"
                    ) from None
                try:
                    os.replace(temporary, self.path)
                except OSError as exc:
                    marked = "marks the move aborted"
                    try:
                        self._append(replace(event, aborted=True))
                    except OSError:
                        marked = "could not mark the move aborted: its last entry did not happen"
                    raise WorkflowError(
                        f"{self.path} cannot be replaced ({_why(exc)}): nothing changed"
                        f" (the audit trail {marked})"
                    ) from None
            finally:
                temporary.unlink(missing_ok=True)
        return updated, event

    def _append(self, event: Event) -> None:
        with self.audit.open("a", encoding="utf-8") as trail:
            trail.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
            trail.flush()
            os.fsync(trail.fileno())

    def records(self) -> list[Subscription]:
        # A file the configuration loaded; a ConfigError here (a hand edit since) says file and line.
        return list(parse_subscription_file(self.path.read_bytes(), str(self.path), self.apis))

    def events(self) -> list[Event | Damaged]:
        try:
            lines = self.audit.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        events: list[Event | Damaged] = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    events.append(Event.from_dict(json.loads(line)))
                except (ValueError, TypeError, AttributeError):  # not JSON, not UTF-8, not an object
                    events.append(Damaged(f"line {number}"))
        return events

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One move at a time on this file, across processes (an advisory lock beside it)."""
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _prepare(self, text: str) -> Path:
        """``text`` written (and synced) beside the file, with its mode, ready to be renamed in."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        return temporary


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class StoreBook:
    """The subscriptions in a shared store (every replica's mirror has a change within a second)."""

    def __init__(self, settings: StoreSettings, apis: Mapping[str, frozenset[str]]) -> None:
        self.settings = settings
        self.apis = apis
        self.keys = SubscriptionKeys(settings.key_prefix)
        self.where = settings.endpoint

    def change(self, move: Move, at: float) -> tuple[Subscription, Event]:
        _known(move, self.apis)
        keys, field = self.keys, field_of(move.key)

        async def run(client: StoreClient) -> tuple[Subscription, Event]:
            for _ in range(_ATTEMPTS):
                raw = await client.background.hget(keys.records, field)
                text = raw.decode() if raw is not None else ""
                try:
                    current = record_at(field, text) if text else None
                except ValueError as exc:
                    raise ValueError(
                        f"the stored record {field!r} is damaged ({exc}): nothing changed"
                    ) from None
                updated, event = _decide(move, current, at)
                event_fields: list[str] = []
                for name, value in event.to_dict().items():
                    event_fields += [name, "" if value is None else str(value)]
                version = await client.background.eval(
                    CHANGE_SCRIPT,
                    3,
                    keys.records,
                    keys.version,
                    keys.log,
                    keys.channel,
                    field,
                    text,
                    updated.to_json(),
                    *event_fields,
                )
                if int(version) >= 0:
                    return updated, event
            raise WorkflowError("the subscription kept changing meanwhile; nothing changed: try again")

        return _run(self.settings, run)

    def records(self) -> list[Subscription]:
        async def run(client: StoreClient) -> list[Subscription]:
            records, _, _ = await load_records(client)
            return records

        return _run(self.settings, run)

    def events(self) -> list[Event | Damaged]:
        async def run(client: StoreClient) -> list[Event | Damaged]:
            entries = await client.background.xrange(self.keys.log, "-", "+")
            events: list[Event | Damaged] = []
            for entry, fields in entries:
                try:
                    data = {key.decode(): value.decode() for key, value in fields.items()}
                    events.append(Event.from_dict(data))
                except ValueError:  # UnicodeDecodeError too
                    events.append(Damaged(f"entry {entry.decode('ascii', 'replace')}"))
            return events

        return _run(self.settings, run)


def _run(settings: StoreSettings, work: Callable[[StoreClient], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        client = StoreClient(settings)
        try:
            async with asyncio.timeout(_TIMEOUT * 5):
                return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())
