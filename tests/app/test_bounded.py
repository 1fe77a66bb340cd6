"""Bounded waits on code that holds a cancellation back (authz.app.bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from authz.app.bounded import cancel_all, within


async def _teardown_first(release: asyncio.Event, ended: list[str]) -> None:
    """What redis-py's PubSub.aclose does: on a cancel, finish the teardown first (here: until
    ``release``), whatever the cancels meanwhile, only then let the cancel through."""
    try:
        await release.wait()
    except asyncio.CancelledError:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(release.wait())
        ended.append("after the teardown")
        raise
    ended.append("normally")


async def test_within_lets_go_of_code_that_holds_a_cancel_back() -> None:
    """asyncio.timeout would wait for this teardown as long as it takes; within waits the bound."""
    release, ended = asyncio.Event(), []
    started = time.monotonic()
    assert await within(_teardown_first(release, ended), 0.2) is False
    assert time.monotonic() - started < 2.0  # the bound (0.2 s), with room for a busy machine
    release.set()  # the abandoned teardown ends on its own, later
    for _ in range(100):
        if ended:
            break
        await asyncio.sleep(0.01)
    assert ended == ["after the teardown"]


async def test_within_reports_code_that_finished_and_drops_its_error() -> None:
    async def fails() -> None:
        raise ConnectionError("closing a broken connection")

    assert await within(asyncio.sleep(0), 1.0) is True
    assert await within(fails(), 1.0) is True  # a closing step's error is no error of the close


async def test_a_cancelled_caller_cancels_what_it_waited_for() -> None:
    inner_cancelled = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    caller = asyncio.ensure_future(within(waits(), 30))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(inner_cancelled.wait(), 5)


async def test_cancel_all_cancels_again_a_task_that_swallowed_a_cancel() -> None:
    """A library that swallows one cancel (and goes on reading) is cancelled again: the task ends."""
    swallowed = []

    async def swallows_one() -> None:
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)

    task = asyncio.ensure_future(swallows_one())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await cancel_all([task], 5.0, "test") is True
    assert time.monotonic() - started < 4.0  # a second cancel after 0.5 s, not the whole bound
    assert task.cancelled()
    assert swallowed == [True]


async def test_cancel_all_leaves_a_task_that_never_ends_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    release, ended = asyncio.Event(), []
    task = asyncio.ensure_future(_teardown_first(release, ended))
    await asyncio.sleep(0)
    caplog.set_level(logging.WARNING, logger="authz.store")
    started = time.monotonic()
    assert await cancel_all([task], 0.3, "test feed") is False
    assert time.monotonic() - started < 3.0  # the bound (0.3 s), with room for a busy machine
    assert [r.fields["what"] for r in caplog.records] == ["test feed"]  # type: ignore[attr-defined]
    release.set()
    await asyncio.wait({task}, timeout=5)
    assert ended == ["after the teardown"]
