"""Waiting on what a library may not let go of: bounded, and abandoned past the bound.

``asyncio.timeout`` and ``wait_for`` cancel the awaited code at the bound and then wait for it
to finish; code that holds a cancellation back (redis-py's ``PubSub.aclose`` finishes its
teardown first, whatever the cancels, behind an uncancellable future) keeps them waiting with
it, and a shutdown or a reload with them. These wait at most the bound, then let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

__all__ = ["cancel_all", "within"]

_log = logging.getLogger("authz.store")


async def within(awaitable: Awaitable[Any], seconds: float) -> bool:
    """Await ``awaitable`` for up to ``seconds``: True when it finished (its outcome, an exception
    included, is dropped: for closing steps), False when it was cancelled and left to end on its
    own. A cancel of the caller cancels it too, and is not held back."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieved)
        raise
    task.add_done_callback(_retrieved)
    if not done:
        task.cancel()
        return False
    return True


async def cancel_all(tasks: Iterable[asyncio.Future[Any]], seconds: float, what: str) -> bool:
    """Cancel ``tasks`` and wait up to ``seconds`` for them to end, cancelling again while they
    run (a cancel a library swallowed is sent anew); True when all ended. Those left running
    are logged and left to the event loop."""
    pending = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
    for task in pending:
        task.add_done_callback(_retrieved)
    if pending:
        _log.warning(
            "tasks did not end when cancelled; left running",
            extra={
                "fields": {
                    "what": what,
                    "tasks": sorted(task.get_name() for task in pending if isinstance(task, asyncio.Task)),
                }
            },
        )
    return not pending


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned task's outcome as seen (no "exception was never retrieved" at exit)."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()
