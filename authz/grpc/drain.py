"""Draining the gRPC server: answer every check accepted, refuse the rest at once.

grpc core can accept a stream on a connection that was being set up while the
server began to shut down and then never hand it to the application: left
alone it waits for the grace period, or for the client's deadline (Envoy's
ext_authz timeout), and the client sees a timeout instead of a refusal. So the
drain waits for the checks our servicer accepted, then gives grpc a short
settle time to finish on its own, and aborts whatever is still open.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

__all__ = ["SETTLE_SECONDS", "InFlight", "drain"]

# After the last accepted check is answered: how long grpc may take to close what is left
# on its own. A call grpc dispatched before the shutdown reaches our servicer within a few
# event-loop iterations; this bound only matters for calls grpc holds and never dispatches.
SETTLE_SECONDS = 0.25


class InFlight:
    """Checks accepted by the servicer whose answer grpc has not finished sending."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def begin(self, context: Any) -> None:
        """A check entered the servicer; it ends when grpc reports the RPC done."""
        self.count += 1
        context.add_done_callback(self._end)

    def _end(self, _context: object) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no check is in flight; True when none is."""
        if self.count == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True


class _Stoppable(Protocol):
    async def stop(self, grace: float | None) -> None: ...


async def drain(server: _Stoppable, in_flight: InFlight, grace: float) -> None:
    """Stop ``server``: accepted checks get up to ``grace`` to finish; nothing waits beyond them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # No new calls from here on; the calls in flight go on.
    stopping = asyncio.ensure_future(server.stop(grace))
    while (remaining := deadline - loop.time()) > 0:
        if in_flight.count:
            await in_flight.wait_idle(remaining)
            continue
        done, _ = await asyncio.wait({stopping}, timeout=min(SETTLE_SECONDS, remaining))
        if done:
            return  # every call finished and every connection closed on its own
        if not in_flight.count:
            break  # what is left was never ours to answer
    await server.stop(None)  # aborts the remaining calls: their clients see a refusal now
    await stopping
