"""The administrators' commands on shared state: ``revoke``, ``revocations``, ``subscriptions``.

Each works against the store of ``--config`` (or ``--store``) or, in file mode, edits the
watched file; a refused change prints why and changes nothing. authz/cli.py parses the
arguments and dispatches here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = [
    "revocations_list",
    "revoke",
    "subscription_move",
    "subscriptions_list",
    "subscriptions_log",
    "unrevoke",
]


def _store_target(args: argparse.Namespace) -> Any:
    """The store of ``--config`` or ``--store``, or None after printing why not."""
    from authz.app.revoke import StoreTarget, store_settings
    from authz.config import load_config
    from authz.errors import ConfigError

    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        if config.store is None:
            print(f"error: {args.config} has no store section", file=sys.stderr)
            return None
        return StoreTarget(config.store, config.revocation.entry_lifetime)
    try:
        return StoreTarget(store_settings(args.store, args.password_file, args.key_prefix), args.max_lifetime)
    except ValueError as exc:
        print(f"error: --store: {exc}", file=sys.stderr)
        return None


def _when(value: str | None, name: str, default: float) -> float:
    from authz.config.revocations import parse_time

    if value is None:
        return default
    try:
        return parse_time(value)
    except ValueError as exc:
        raise SystemExit(f"error: {name}: {exc}") from None


def _store_call(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None after printing why the store could not be used."""
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - the store's own words stay out; the kind is enough
        print(f"error: the store did not answer ({type(exc).__name__})", file=sys.stderr)
        return None


def revoke(args: argparse.Namespace) -> int:
    from authz.app.revoke import write_entries
    from authz.core.revocation import Entry, EntryKind, jti_hash

    if (args.subject or args.client) and not args.issuer:
        print("error: --subject and --client need --issuer", file=sys.stderr)
        return 2
    if args.jti and (args.issuer or args.before):
        print("error: --jti takes neither --issuer nor --before (a jti names one token)", file=sys.stderr)
        return 2
    target = _store_target(args)
    if target is None:
        return 2
    now = time.time()
    if args.jti:
        entry = Entry(
            EntryKind.JTI,
            jti_hash(args.jti),
            expires_at=_when(args.expires, "--expires", now + target.entry_lifetime),
        )
    else:
        kind = EntryKind.SUBJECT if args.subject else EntryKind.CLIENT
        before = _when(args.before, "--before", now)
        expires = _when(args.expires, "--expires", before + target.entry_lifetime)
        entry = Entry(kind, args.subject or args.client, args.issuer, before, expires)
    if entry.expires_at <= now:
        print("error: --expires is in the past: the entry would be dropped at once", file=sys.stderr)
        return 2
    version = _store_call(write_entries, target, [entry])
    if version is None:
        return 1
    print(json.dumps({"revoked": _entry_json(entry), "version": version}))
    return 0


def _entry_json(entry: Any) -> dict[str, Any]:
    from authz.core.revocation import EntryKind

    found: dict[str, Any] = {"kind": entry.kind.value}
    if entry.kind is EntryKind.JTI:
        found["jti_hash"] = entry.value
    else:
        found[entry.kind.value] = entry.value
        found["issuer"] = entry.issuer
        found["before"] = _rfc3339(entry.before)
    found["expires"] = _rfc3339(entry.expires_at)
    return found


def _rfc3339(value: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def revocations_list(args: argparse.Namespace) -> int:
    from authz.app.revoke import list_entries

    target = _store_target(args)
    if target is None:
        return 2
    entries = _store_call(list_entries, target)
    if entries is None:
        return 1
    for entry in sorted(entries, key=lambda e: (e.kind.value, e.issuer, e.value, e.before)):
        print(json.dumps(_entry_json(entry)))
    return 0


def unrevoke(args: argparse.Namespace) -> int:
    from authz.app.revoke import remove_entries
    from authz.core.revocation import EntryKind, jti_hash

    target = _store_target(args)
    if target is None:
        return 2
    if args.jti or args.jti_hash:
        digest = jti_hash(args.jti) if args.jti else args.jti_hash.lower()

        def match(entry: Any) -> bool:
            return bool(entry.kind is EntryKind.JTI and entry.value == digest)
    else:
        if not args.issuer:
            print("error: --subject and --client need --issuer", file=sys.stderr)
            return 2
        kind = EntryKind.SUBJECT if args.subject else EntryKind.CLIENT
        value = args.subject or args.client

        def match(entry: Any) -> bool:
            return bool(entry.kind is kind and entry.value == value and entry.issuer == args.issuer)

    removed = _store_call(remove_entries, target, match)
    if removed is None:
        return 1
    print(json.dumps({"removed": [_entry_json(entry) for entry in removed]}))
    return 0 if removed else 1


def _subscription_book(args: argparse.Namespace) -> Any:
    """The subscriptions of ``--config`` (its file or its store), or None after printing why not."""
    from authz.app.subscribe import book_for
    from authz.config import load_config
    from authz.core.subscription import WorkflowError
    from authz.errors import ConfigError

    try:
        return book_for(load_config(args.config))
    except (ConfigError, WorkflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def subscription_move(args: argparse.Namespace) -> int:
    from authz.app.subscribe import Move
    from authz.config.revocations import format_time
    from authz.core.subscription import Action, WorkflowError
    from authz.errors import ConfigError

    book = _subscription_book(args)
    if book is None:
        return 2
    expires = getattr(args, "expires", None)
    move = Move(
        Action(args.action),
        args.tenant,
        args.client,
        args.api,
        # Only a request, and only without --by, is made by the client itself: an empty --by
        # (an unset "$ADMIN") must not read as a self-approval; transition refuses it.
        by=args.client if args.by is None else args.by,
        reason=args.reason,
        expires_at=_when(expires, "--expires", float("inf")),
    )
    try:
        changed = _subscription_call(book.change, move, time.time())
    except (WorkflowError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if changed is None:
        return 1
    record, _ = changed
    print(json.dumps({"subscription": _subscription_json(record, format_time), "where": book.where}))
    return 0


def _subscription_call(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None after printing why the file or the store could not be used (the
    store's own words stay out); the workflow's refusals and a bad file are raised."""
    from authz.core.subscription import WorkflowError
    from authz.errors import ConfigError

    try:
        return call(*args)
    except (WorkflowError, ConfigError, ValueError):
        raise
    except OSError as exc:
        print(f"error: {exc.strerror or type(exc).__name__}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the store's own words stay out; the kind is enough
        print(f"error: the store did not answer ({type(exc).__name__})", file=sys.stderr)
    return None


def _subscription_json(record: Any, format_time: Any) -> dict[str, Any]:
    found = record.to_dict()
    for key in ("requested_at", "decided_at", "expires"):
        if found[key] is not None:
            found[key] = format_time(found[key])
    return {key: value for key, value in found.items() if value not in (None, "")}


def subscriptions_list(args: argparse.Namespace) -> int:
    from authz.config.revocations import format_time
    from authz.errors import ConfigError

    book = _subscription_book(args)
    if book is None:
        return 2
    try:
        records = _subscription_call(book.records)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if records is None:
        return 1
    for record in sorted(records, key=lambda r: r.key):
        wanted = (args.tenant, args.api, args.client, args.status)
        actual = (*record.key, record.status.value)
        if all(want is None or want == have for want, have in zip(wanted, actual, strict=True)):
            print(json.dumps(_subscription_json(record, format_time)))
    return 0


def subscriptions_log(args: argparse.Namespace) -> int:
    from authz.app.subscribe import Damaged
    from authz.config.revocations import format_time

    book = _subscription_book(args)
    if book is None:
        return 2
    try:
        events = _subscription_call(book.events)
    except ValueError as exc:
        print(f"error: the audit log is not readable: {exc}", file=sys.stderr)
        return 1
    if events is None:
        return 1
    damaged = 0
    for event in events:
        if isinstance(event, Damaged):  # shown in its place; the rest of the trail still printed
            damaged += 1
            print(json.dumps({"unreadable": event.where}))
            print(f"error: audit entry at {event.where} is not readable", file=sys.stderr)
            continue
        wanted = (args.tenant, args.api, args.client)
        if all(
            want is None or want == have
            for want, have in zip(wanted, (event.tenant, event.api, event.client), strict=True)
        ):
            found = event.to_dict()
            found["at"] = format_time(found["at"])
            if found["expires"] is not None:
                found["expires"] = format_time(found["expires"])
            print(json.dumps({key: value for key, value in found.items() if value is not None}))
    return 1 if damaged else 0
