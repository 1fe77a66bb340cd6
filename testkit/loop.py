"""How long the event loop makes a check wait while something else runs on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["worst_wait"]

T = TypeVar("T")


async def worst_wait(
    work: Awaitable[T], check: Callable[[], object], every: float = 0.005
) -> tuple[T, float]:
    """``work``'s result, and the longest a ``check`` made every ``every`` seconds meanwhile
    waited past its time (the loop held by something else)."""
    worst = 0.0
    done = asyncio.Event()

    async def checks() -> None:
        nonlocal worst
        while not done.is_set():
            due = time.perf_counter() + every
            await asyncio.sleep(every)
            check()
            worst = max(worst, time.perf_counter() - due)

    ticker = asyncio.create_task(checks())
    try:
        result = await work
    finally:
        done.set()
        await ticker
    return result, worst
