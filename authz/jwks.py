"""Issuer keys from a URL (``jwks_uri``): fetched over HTTPS, cached, refreshed.

A :class:`RemoteJwks` holds the last good key set of one URL. It is refreshed
on an interval by a background task and, rate-limited, when a token names a
``kid`` it does not know (the issuer rotated its keys). A failed fetch keeps
the last good set and is logged and counted. Until the first successful fetch
the issuer's tokens are denied with ``issuer_keys_unavailable``: never open.

Fetching never runs on the request path: requests read ``keyset``, one
reference, swapped when a fetch succeeds. Sources are shared across config
reloads through a :class:`JwksRegistry`, so a reload does not refetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from authz.errors import ConfigError
from authz.keys import KeySet, Purpose, keyset_from_jwks

__all__ = ["JwksRegistry", "JwksSettings", "RemoteJwks"]

_log = logging.getLogger("authz.jwks")
_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class JwksSettings:
    uri: str
    ca_file: str | None  # PEM bundle for a private IdP; None: the system's trust store
    refresh_interval: float  # seconds between scheduled fetches
    min_refetch_interval: float  # at most one unknown-kid refetch per this many seconds
    timeout: float  # one fetch, connect to last byte


class RemoteJwks:
    """The key set behind one ``jwks_uri``; ``keyset`` is None until the first good fetch."""

    def __init__(self, settings: JwksSettings) -> None:
        self.settings = settings
        self.keyset: KeySet | None = None
        self.fetched_at: float | None = None
        self.results: Counter[str] = Counter()  # fetches by result: success, failure
        self.last_error: str | None = None
        self._context = _ssl_context(settings.ca_file)
        self._inflight: asyncio.Task[bool] | None = None
        self._last_attempt = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()  # set after the first attempt, good or bad

    # -- fetching ------------------------------------------------------------

    def fetch_blocking(self) -> bool:
        """Fetch now in this thread; True when a good key set was stored."""
        self._last_attempt = time.monotonic()
        try:
            data = _download(self.settings.uri, self._context, self.settings.timeout)
            keyset = keyset_from_jwks(_parse(data), Purpose.VERIFY, self.settings.uri)
        except ConfigError as exc:
            return self._failed(exc.reason)
        except Exception as exc:  # noqa: BLE001 - a bad fetch must never hurt serving
            return self._failed(_describe(exc))
        self.keyset = keyset
        self.fetched_at = time.time()
        self.results["success"] += 1
        self.last_error = None
        _log.info(
            "jwks fetched",
            extra={
                "fields": {
                    "jwks_uri": self.settings.uri,
                    "keys": len(keyset),
                    "jwks_fetch": dict(self.results),
                }
            },
        )
        return True

    async def fetch(self) -> bool:
        """Fetch in a worker thread; concurrent callers share the fetch in flight."""
        return await asyncio.shield(self._start_fetch())

    async def refetch_for_unknown_kid(self, wait: float) -> bool:
        """A token named a kid we lack: refetch unless one ran recently; wait at most ``wait``.

        Rate-limited, so that a stream of tokens with made-up kids costs the
        issuer at most one request per ``min_refetch_interval``. Returns True when
        a fetch (started now or already running) succeeded within the wait.
        """
        running = self._inflight is not None and not self._inflight.done()
        if not running and time.monotonic() - self._last_attempt < self.settings.min_refetch_interval:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self._start_fetch()), wait)
        except TimeoutError:
            return False

    def _start_fetch(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._last_attempt = time.monotonic()
            self._inflight = asyncio.ensure_future(self._fetch_once())
        return self._inflight

    async def _fetch_once(self) -> bool:
        try:
            return await asyncio.to_thread(self.fetch_blocking)
        finally:
            self._first.set()

    def _failed(self, reason: str) -> bool:
        self.results["failure"] += 1
        self.last_error = reason
        _log.error(
            "jwks fetch failed; keeping the last good key set",
            extra={
                "fields": {
                    "jwks_uri": self.settings.uri,
                    "error": reason,
                    "have_keys": self.keyset is not None,
                    "jwks_fetch": dict(self.results),
                }
            },
        )
        return False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"jwks {self.settings.uri}")

    async def wait_first(self, timeout: float) -> bool:
        """Wait (bounded) for the first fetch attempt; True when keys are there."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self.keyset is not None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        interval = self.settings.refresh_interval
        while True:
            ok = await self.fetch()
            # After a failure, retry sooner (but not in a tight loop).
            await asyncio.sleep(interval if ok else min(interval, max(1.0, interval / 10)))


class JwksRegistry:
    """Remote key sets by settings, shared by every snapshot that names them."""

    def __init__(self) -> None:
        self._sources: dict[JwksSettings, RemoteJwks] = {}

    def source(self, settings: JwksSettings) -> RemoteJwks:
        remote = self._sources.get(settings)
        if remote is None:
            remote = self._sources[settings] = RemoteJwks(settings)
        return remote

    async def start(self, wanted: Iterable[RemoteJwks], first_fetch_wait: float) -> None:
        """Start refreshing ``wanted``, stop the others, wait (bounded) for first fetches."""
        wanted = list(wanted)
        keep = {id(r) for r in wanted}
        for settings, remote in list(self._sources.items()):
            if id(remote) not in keep:
                await remote.stop()
                del self._sources[settings]
        for remote in wanted:
            remote.start()
        if wanted:
            await asyncio.gather(*(r.wait_first(first_fetch_wait) for r in wanted))

    async def stop(self) -> None:
        for remote in self._sources.values():
            await remote.stop()


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _download(uri: str, context: ssl.SSLContext, timeout: float) -> bytes:
    if not uri.startswith("https://"):
        raise ValueError("jwks_uri must be https")
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 - https only
    # No redirects to other schemes: urllib follows http(s) redirects only, and the
    # certificate is verified for whatever host answers.
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
        data: bytes = response.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise ValueError("JWKS document too large")
    return data


def _parse(data: bytes) -> Any:
    from authz.token import parse_json_object

    return parse_json_object(data)


def _describe(exc: Exception) -> str:
    """A short, safe description of a fetch failure (no response bodies)."""
    reason = getattr(exc, "reason", None)
    code = getattr(exc, "code", None)
    if code is not None:
        return f"HTTP {code}"
    if isinstance(reason, BaseException):
        return type(reason).__name__ + (f": {reason}" if isinstance(reason, ssl.SSLError | OSError) else "")
    if isinstance(exc, ValueError):
        return f"invalid JWKS document ({exc})"
    return type(exc).__name__
