"""The drain: accepted checks are answered; what grpc holds undispatched is refused, not held.

grpc core sometimes keeps a call it never dispatches (a connection set up while the
shutdown began) until the grace period ends; that state cannot be produced on demand
against a real server, so a stub server stands in for it here. The end-to-end drain
runs against a real server in tests/integration/test_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from authz.grpc.drain import SETTLE_SECONDS, InFlight, drain


class _Context:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[object], None]] = []

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        self.callbacks.append(callback)

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


class _Server:
    """``stop(grace)`` ends only when told or when a later ``stop(None)`` aborts the rest."""

    def __init__(self) -> None:
        self.stops: list[float | None] = []
        self.closed = asyncio.Event()

    async def stop(self, grace: float | None) -> None:
        self.stops.append(grace)
        if grace is None:
            self.closed.set()
            return
        try:
            await asyncio.wait_for(self.closed.wait(), grace)
        except TimeoutError:
            self.closed.set()


async def test_a_held_call_is_refused_right_after_the_last_check() -> None:
    """A check in flight is waited for; then what grpc still holds is aborted within the settle time."""
    server, in_flight, context = _Server(), InFlight(), _Context()
    in_flight.begin(context)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(drain(server, in_flight, grace=30.0))
    await asyncio.sleep(SETTLE_SECONDS * 2)
    assert server.stops == [30.0]  # the check is still in flight: nothing aborted yet
    context.finish()
    await asyncio.wait_for(task, 10.0)
    assert server.stops == [30.0, None]
    assert loop.time() - started < 10.0  # far from the 30 s grace (generous for a busy machine)


async def test_a_graceful_end_aborts_nothing() -> None:
    """When grpc finishes on its own (every connection closed), nothing is aborted."""
    server, in_flight, context = _Server(), InFlight(), _Context()
    in_flight.begin(context)
    task = asyncio.ensure_future(drain(server, in_flight, grace=30.0))
    await asyncio.sleep(0.05)
    context.finish()
    server.closed.set()
    await asyncio.wait_for(task, 10.0)
    assert server.stops == [30.0]


async def test_a_check_that_never_ends_is_bounded_by_the_grace() -> None:
    """A check that never finishes holds the drain for the grace period, not longer."""
    server, in_flight = _Server(), InFlight()
    in_flight.begin(_Context())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(drain(server, in_flight, grace=0.5), 10.0)
    assert loop.time() - started >= 0.5
    assert server.stops[0] == 0.5
    assert server.closed.is_set()


@pytest.mark.parametrize("checks", [0, 3])
async def test_in_flight_counts_until_grpc_reports_the_rpc_done(checks: int) -> None:
    """The count follows grpc's done callbacks, not the handler's return."""
    in_flight = InFlight()
    contexts = [_Context() for _ in range(checks)]
    for context in contexts:
        in_flight.begin(context)
    assert in_flight.count == checks
    assert await in_flight.wait_idle(0.01) is (checks == 0)
    for context in contexts:
        context.finish()
    assert in_flight.count == 0
    assert await in_flight.wait_idle(0.01)
