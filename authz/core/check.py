"""The one check sequence both doors run: decide on one snapshot, refetch once, claim, answer, record.

A door reads its wire format into an AuthzRequest and writes the plain answer back in its
own; everything between is here. A valid DPoP proof's ``jti`` is claimed in the replay store
the process shares across doors and reloads: at once from the in-process store (no
coroutine, no task), awaited and bounded in time from a shared one; a request without DPoP
never meets the store. The answer is built before it is recorded, so what is recorded is
what was answered, and a failure to build it is the internal_error deny it became.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from authz.core.answer import answer_failed
from authz.core.binding import DEFAULT_REPLAY_CACHE_SIZE, ReplayClaim
from authz.core.decision import Decision, decide, reject, settle
from authz.core.observe import NO_TRACE, Recorder, Trace
from authz.core.replay import MemoryReplayStore, ReplayStore, ReplayVerdict
from authz.core.request import AuthzRequest
from authz.core.snapshot import Snapshot
from authz.errors import Reason
from authz.jose.keys import RemoteKeys

__all__ = ["CLAIM_WAIT", "Answered", "Checker", "Clock", "Door", "refetch_source"]

Clock = Callable[[], float]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
_log = logging.getLogger("authz.decision")

# The longest a check waits for a shared replay store's answer (the in-process one answers
# at once); half the caller's remaining deadline at most. No answer: a 503 deny.
CLAIM_WAIT = 0.25


class Door(Protocol[T_co]):
    """How a door writes an answer."""

    def render(self, decision: Decision, request_id: str, carried: Iterable[str]) -> T_co:
        """The wire answer of ``decision`` (``carried``: the request's header names); may fail."""
        ...

    def fallback(self, request_id: str) -> T_co:
        """The internal_error deny, built from constants: it cannot fail as a render did."""
        ...


class Answered(NamedTuple, Generic[T]):
    answer: T
    decision: Decision  # what was answered and recorded


class Checker:
    """Runs checks against the snapshot a door read once for each.

    ``replay``: the process's replay store, shared by both doors (the holder's); without
    one, a store of the default size for this checker alone.
    """

    __slots__ = ("clock", "recorder", "replay")

    def __init__(self, clock: Clock, recorder: Recorder, replay: ReplayStore | None = None) -> None:
        self.clock = clock
        self.recorder = recorder
        self.replay: ReplayStore = (
            replay if replay is not None else MemoryReplayStore(DEFAULT_REPLAY_CACHE_SIZE)
        )

    def decide(self, snapshot: Snapshot | None, request: AuthzRequest, trace: Trace = NO_TRACE) -> Decision:
        """Decide on one snapshot (a reload mid-check cannot split it). Never raises.

        The in-process replay store is claimed here, at once; a shared store's claim is
        left in ``Decision.claim`` for ``run`` to await (``finish`` answers a claim
        nobody made with the 503 deny).
        """
        if snapshot is None:
            return reject(Reason.NOT_READY, "no configuration loaded yet")
        try:
            now = self.clock()
        except Exception as exc:  # noqa: BLE001 - fail closed: even the clock may fail
            return reject(Reason.INTERNAL_ERROR, f"clock failed ({type(exc).__name__})")
        with trace.active():
            decision = decide(snapshot, request, now, self.recorder)
        claim = decision.claim
        if claim is not None and claim.verdict is None and isinstance(self.replay, MemoryReplayStore):
            decision = _claimed(decision, claim, self.replay, now)
        return decision

    def run(
        self,
        snapshot: Snapshot | None,
        request: AuthzRequest | None,
        door: Door[T],
        *,
        early: Decision | None = None,
        trace: Trace = NO_TRACE,
        request_id: str = "",
        started: float | None = None,
        budget: float | None = None,
    ) -> Answered[T] | Coroutine[Any, Any, Answered[T]]:
        """Answer one check; a coroutine only when an unknown signing kid makes a refetch worth a wait.

        ``early``: a deny the door reached itself (unreadable request, deadline passed);
        ``budget``: seconds left before the caller's deadline, if it sent one.
        """
        started = time.perf_counter() if started is None else started
        if early is not None or request is None:
            decision = early or reject(Reason.REQUEST_MALFORMED)
        else:
            decision = self.decide(snapshot, request, trace)
            remote = refetch_source(snapshot, decision)
            if remote is not None or _unclaimed(decision):
                return self._after_wait(
                    snapshot, request, decision, remote, door, trace, request_id, started, budget
                )
        return self.finish(
            snapshot, request, decision, door, trace=trace, request_id=request_id, started=started
        )

    async def _after_wait(  # noqa: PLR0917 - run()'s arguments, passed on
        self,
        snapshot: Snapshot | None,
        request: AuthzRequest,
        decision: Decision,
        remote: RemoteKeys | None,
        door: Door[T],
        trace: Trace,
        request_id: str,
        started: float,
        budget: float | None,
    ) -> Answered[T]:
        if (
            remote is not None
            and snapshot is not None
            and await refetch(remote, snapshot.refetch_wait, budget)
        ):
            decision = self.decide(snapshot, request, trace)
            budget = None if budget is None else budget - (time.perf_counter() - started)
        claim = decision.claim
        if claim is not None and claim.verdict is None:
            with trace.active():  # a shared store's span is a child of the check's
                decision = await self._claim(decision, claim, budget)
        return self.finish(
            snapshot, request, decision, door, trace=trace, request_id=request_id, started=started
        )

    async def _claim(self, decision: Decision, claim: ReplayClaim, budget: float | None) -> Decision:
        """Claim in a shared replay store, waiting at most CLAIM_WAIT (and half the budget)."""
        wait = CLAIM_WAIT if budget is None else min(CLAIM_WAIT, budget * 0.5)
        try:
            now = self.clock()
            verdict = await asyncio.wait_for(
                self.replay.claim(claim.key, claim.expires_at, now, issued_at=claim.issued_at), wait
            )
        except TimeoutError:
            return settle(
                decision, ReplayVerdict.UNAVAILABLE, f"no answer from the replay store in {wait:.3f}s"
            )
        except Exception as exc:  # noqa: BLE001 - fail closed: the store's faults are a deny too
            return settle(decision, ReplayVerdict.UNAVAILABLE, f"replay store failed ({type(exc).__name__})")
        return settle(decision, verdict)

    def finish(
        self,
        snapshot: Snapshot | None,
        request: AuthzRequest | None,
        decision: Decision,
        door: Door[T],
        *,
        trace: Trace,
        request_id: str,
        started: float,
    ) -> Answered[T]:
        """Build the answer, then record it. Never raises."""
        if _unclaimed(decision):  # fail closed: a proof nobody claimed may be a replay
            decision = settle(decision, ReplayVerdict.UNAVAILABLE, "the replay claim was not made")
        try:
            answer = door.render(decision, request_id, request.headers if request is not None else ())
        except Exception as exc:  # noqa: BLE001 - even a fault here must be a deny
            _log.exception("building the answer failed; answered internal_error")
            answer, decision = door.fallback(request_id), answer_failed(decision, exc)
        self.recorder.finish(
            trace,
            decision,
            request,
            request_id=request_id,
            elapsed=time.perf_counter() - started,
            settings=snapshot.record if snapshot is not None else None,
        )
        return Answered(answer, decision)


def _unclaimed(decision: Decision) -> bool:
    return decision.claim is not None and decision.claim.verdict is None


def _claimed(decision: Decision, claim: ReplayClaim, store: MemoryReplayStore, now: float) -> Decision:
    try:
        verdict = store.claim_now(claim.key, claim.expires_at, now, issued_at=claim.issued_at)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return settle(decision, ReplayVerdict.UNAVAILABLE, f"replay store failed ({type(exc).__name__})")
    return settle(decision, verdict)


def refetch_source(snapshot: Snapshot | None, decision: Decision) -> RemoteKeys | None:
    """The jwks_uri source worth refetching for this deny (a signing kid its issuer lacks), or None."""
    if snapshot is None or decision.reason != Reason.SIGNING_KEY_UNKNOWN or decision.issuer is None:
        return None
    issuer = snapshot.token_keys.issuers.get(decision.issuer)
    return issuer.remote if issuer is not None else None


async def refetch(remote: RemoteKeys, wait: float, budget: float | None) -> bool:
    """Refetch (rate-limited by the source), waiting at most ``wait``; True when fresh keys arrived.

    Half of the caller's remaining deadline at most: the answer needs the rest.
    """
    if budget is not None:
        wait = min(wait, budget * 0.5)
    if wait <= 0:
        return False
    return await remote.refetch_for_unknown_kid(wait)
