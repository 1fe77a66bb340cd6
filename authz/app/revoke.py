"""``authz revoke`` and ``authz revocations list|unrevoke``: revocation entries in the shared store.

Every change is one script in the store (authz/app/revocation.py): the entry added or removed,
the version raised and the change published, so every process's mirror has it within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from authz.app.revocation import ADD_SCRIPT, REMOVE_SCRIPT, load_entries
from authz.app.store import BACKGROUND_TIMEOUT, StoreClient
from authz.config.settings import StoreSettings
from authz.config.store import parse_store_url
from authz.core.revocation import Entry

__all__ = ["StoreTarget", "list_entries", "remove_entries", "store_settings", "write_entries"]

_TIMEOUT = BACKGROUND_TIMEOUT * 2
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """Which store a command talks to, and how long entries of subjects and clients must live."""

    settings: StoreSettings
    entry_lifetime: float


def store_settings(url: str, password_file: Path | None, key_prefix: str) -> StoreSettings:
    """Settings for ``--store URL`` (ValueError with the reason for a bad URL or password file)."""
    parsed = parse_store_url(url)
    password = None
    if password_file is not None:
        try:
            password = password_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read {password_file}: {exc.strerror or exc}") from None
    return StoreSettings(
        url=url,
        hosts=parsed.hosts,
        sentinel_service=parsed.sentinel_service,
        db=parsed.db,
        username=parsed.username,
        tls=parsed.tls,
        password=password,
        ca_file=None,
        key_prefix=key_prefix,
        timeout=_TIMEOUT,
        local_fallback=False,
        max_connections=2,
    )


def write_entries(target: StoreTarget, entries: list[Entry]) -> int:
    """Add entries (or extend their expiry); returns the store's revocation version after them."""

    async def run(client: StoreClient) -> int:
        args: list[str | float] = [client.channel]
        for entry in entries:
            args += [_score(entry.expires_at), entry.member()]
        await client.background.zremrangebyscore(client.revocations_key, "-inf", time.time())
        version = await client.background.eval(
            ADD_SCRIPT, 2, client.revocations_key, client.version_key, *args
        )
        return int(version)

    return _run(target.settings, run)


def list_entries(target: StoreTarget) -> list[Entry]:
    async def run(client: StoreClient) -> list[Entry]:
        entries, _, _ = await load_entries(client, time.time())
        return entries

    return _run(target.settings, run)


def remove_entries(target: StoreTarget, match: Callable[[Entry], bool]) -> list[Entry]:
    """Remove every entry ``match`` selects; returns those removed."""

    async def run(client: StoreClient) -> list[Entry]:
        entries, _, _ = await load_entries(client, time.time())
        chosen = [entry for entry in entries if match(entry)]
        if chosen:
            members = [entry.member() for entry in chosen]
            await client.background.eval(
                REMOVE_SCRIPT, 2, client.revocations_key, client.version_key, client.channel, *members
            )
        return chosen

    return _run(target.settings, run)


def _score(expires_at: float) -> str:
    return "+inf" if expires_at == float("inf") else repr(float(expires_at))


def _run(settings: StoreSettings, work: Callable[[StoreClient], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        client = StoreClient(settings)
        try:
            async with asyncio.timeout(_TIMEOUT * 5):
                return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())
