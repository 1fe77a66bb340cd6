"""Issuer keys from a URL (``jwks_uri``): fetched over HTTPS, refreshed, shared across reloads.

The last good key set of each URL is kept; a failed fetch changes nothing, and before the
first success the issuer's tokens are ``issuer_keys_unavailable``. Fetching never runs on
the request path. Unchanged keys keep their objects, so the token cache keeps what they
verified (docs/architecture.md, "JWKS fetchers").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from typing import Any

from authz.config import JwksSettings
from authz.errors import ConfigError
from authz.jose.keys import KeySet, Purpose, keyset_from_jwks

__all__ = ["JwksRegistry", "JwksSettings", "RemoteJwks"]

_log = logging.getLogger("authz.jwks")
_MAX_BYTES = 1 << 20
_MAX_ERROR_CHARS = 120  # last_error and the log's "error": short, whatever the document held


class RemoteJwks:
    """The key set behind one ``jwks_uri``; ``keyset`` is None until the first good fetch."""

    def __init__(self, settings: JwksSettings) -> None:
        self.settings = settings
        self.keyset: KeySet | None = None
        self.fetched_at: float | None = None
        self.results: Counter[str] = Counter()  # fetches by result: success, failure
        self.last_error: str | None = None
        try:
            self._context = _ssl_context(settings.ca_file)
        except (ssl.SSLError, OSError) as exc:
            # Not PEM, or no certificate in it: a configuration error naming the file,
            # not an ssl.SSLError escaping load_config.
            raise ConfigError(
                settings.ca_file or "system trust store", _clip(f"not a usable CA bundle ({_describe(exc)})")
            ) from None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_attempt = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()  # set after the first attempt, good or bad

    # -- fetching ------------------------------------------------------------

    def fetch_blocking(self) -> bool:
        """Fetch now in this thread; True when a good key set was stored."""
        self._last_attempt = time.monotonic()
        previous = self.keyset
        try:
            data = _download(self.settings.uri, self._context, self.settings.timeout)
            # Unchanged keys keep their objects, an unchanged set stays the same object:
            # cached tokens verified by keys still served stay cached (authz.cache).
            keyset = keyset_from_jwks(_parse(data), Purpose.VERIFY, self.settings.uri, previous)
        except ConfigError as exc:
            # The reason may quote values of the document (an unknown alg, a kid): clipped.
            return self._failed(f"invalid JWKS document ({exc.reason})")
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
                    "keys_changed": _changes(previous, keyset),
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
        reason = _clip(reason)
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
            remote = RemoteJwks(settings)
            # Other settings for the same URL (say, a new refresh_interval): start from the
            # keys already fetched from it, so that a reload while the issuer is unreachable
            # does not turn its tokens into issuer_keys_unavailable.
            for other in list(self._sources.values()):  # a copy: start() may run meanwhile
                same = (other.settings.uri, other.settings.ca_file) == (settings.uri, settings.ca_file)
                if same and other.keyset is not None:
                    remote.keyset, remote.fetched_at = other.keyset, other.fetched_at
                    break
            self._sources[settings] = remote
        return remote

    def sources(self, settings: Iterable[JwksSettings]) -> list[RemoteJwks]:
        """The sources of these settings (made as the config that names them was loaded)."""
        return [self.source(s) for s in settings]

    async def start(self, configured: Iterable[JwksSettings], first_fetch_wait: float) -> None:
        """Start refreshing the sources of ``configured``, stop the rest, wait (bounded) for first fetches."""
        wanted = self.sources(configured)
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
        # A copy: a reload's load_config (a worker thread) may add sources during the awaits.
        for remote in list(self._sources.values()):
            await remote.stop()


def _changes(previous: KeySet | None, current: KeySet) -> dict[str, int]:
    """Keys added, removed and replaced (same kid, new content) by a fetch; never key material."""
    before = previous.by_kid if previous is not None else {}
    after = current.by_kid
    return {
        "added": sum(1 for kid in after if kid not in before),
        "removed": sum(1 for kid in before if kid not in after),
        "replaced": sum(1 for kid, key in after.items() if kid in before and before[kid] is not key),
    }


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _RedirectRefusedError(Exception):
    """A redirect to anything but https (urllib follows https -> http by default)."""


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith("https://"):
            raise _RedirectRefusedError(f"redirect (HTTP {code}) to a non-https URL refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(uri: str, context: ssl.SSLContext, timeout: float) -> bytes:
    if not uri.startswith("https://"):
        raise ValueError("jwks_uri must be https")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 - https only
    # Redirects are followed to https URLs only, and the certificate is verified for
    # whatever host answers.
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects)
    # ``timeout`` bounds each socket operation; the deadline bounds the body as a whole
    # (a server sending a byte now and then must not hold a fetch for minutes).
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()  # its body is never read
        raise
    with response:
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_BYTES:
            if time.monotonic() > deadline:
                raise TimeoutError("JWKS download exceeded fetch_timeout")
            chunk: bytes = response.read1(min(1 << 16, _MAX_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > _MAX_BYTES:
        raise ValueError("JWKS document too large")
    return b"".join(chunks)


def _parse(data: bytes) -> Any:
    from authz.jose.encoding import parse_json_object

    return parse_json_object(data)


def _describe(exc: Exception) -> str:
    """A short, safe description of a fetch failure (no response bodies)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"  # never the body
    if isinstance(exc, _RedirectRefusedError):
        return str(exc)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, ssl.SSLCertVerificationError):  # the short part: what is wrong with it
        return f"TLS {reason.reason}: {reason.verify_message}"
    if isinstance(reason, BaseException):
        detail = f": {reason}" if isinstance(reason, ssl.SSLError | OSError) else ""
        return type(reason).__name__ + detail
    if isinstance(exc, ssl.SSLError | OSError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ValueError):
        return f"invalid JWKS document ({exc})"
    return type(exc).__name__


def _clip(text: str) -> str:
    """Printable ASCII, at most _MAX_ERROR_CHARS characters (callers never pass a body)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= _MAX_ERROR_CHARS else clean[: _MAX_ERROR_CHARS - 3] + "..."
