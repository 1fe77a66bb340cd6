"""The replay claim inside the one check sequence, and the memo's rules for sender-constrained tokens.

The in-process store answers at once (no coroutine for any request); a shared store is
awaited, bounded in time, and any failure is a 503 deny. The memo's rules are the core's, so
both doors' memos get them: a DPoP request is never kept, an entry is tied to the client
certificate its request carried.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from authz.config import Config, load_config
from authz.core.check import CLAIM_WAIT, Checker
from authz.core.decision import Decision, decide
from authz.core.memo import AnswerMemo, dpop_scheme, repeatable
from authz.core.observe import NO_STEPS
from authz.core.replay import ReplayVerdict
from authz.http.wire import from_http
from testkit import dpop
from testkit.sender import jkt, make_cert, proof, write_config
from testkit.world import NOW, World


@pytest.fixture(scope="module")
def sender_config(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(write_config(world, tmp_path_factory.mktemp("sequence")))


@pytest.fixture(scope="module")
def key() -> Any:
    return dpop.new_key("ES256")


@pytest.fixture(scope="module")
def token(world: World, key: Any) -> str:
    return world.token(world.claims(cnf={"jkt": jkt(key)}))


def request(headers: dict[str, str]) -> Any:
    plain = {
        "host": ("api.acme.test",),
        "x-forwarded-proto": ("https",),
        **{k: (v,) for k, v in headers.items()},
    }
    return from_http("GET", "/orders", plain)


def dpop_request(key: Any, token: str) -> Any:
    return request({"authorization": f"DPoP {token}", "dpop": proof(key, token)})


class _Recorder:
    def __init__(self) -> None:
        self.finished: list[Decision] = []

    def step(self, name: str) -> Any:
        return NO_STEPS.step(name)

    def finish(self, trace: Any, decision: Decision, *args: Any, **kwargs: Any) -> None:
        self.finished.append(decision)


class _Door:
    def render(self, decision: Decision, request_id: str, carried: Any) -> Decision:
        return decision

    def fallback(self, request_id: str) -> Decision:
        raise AssertionError("not expected")


class _SharedStore:
    """A store that answers like a remote one: after ``delay``, or by raising ``error``."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error = delay, error
        self.seen: set[bytes] = set()

    async def claim(
        self, key: bytes, expires_at: float, now: float, *, issued_at: float | None = None
    ) -> ReplayVerdict:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if key in self.seen:
            return ReplayVerdict.REPLAYED
        self.seen.add(key)
        return ReplayVerdict.FRESH

    def size(self) -> int:
        return -1


def test_the_in_process_store_is_claimed_without_a_coroutine(sender_config, key, token):
    checker = Checker(lambda: float(NOW), _Recorder())
    headers = {"authorization": f"DPoP {token}", "dpop": proof(key, token)}
    first = checker.run(sender_config.snapshot, request(headers), _Door())
    assert isinstance(first, tuple)  # answered at once: no coroutine, no task
    assert first.answer.reason == "ok"
    again = checker.run(sender_config.snapshot, request(headers), _Door())
    assert isinstance(again, tuple)
    assert again.answer.reason == "dpop_proof_replayed"


async def test_a_shared_store_is_awaited_and_replays_are_denied(sender_config, key, token):
    store = _SharedStore(delay=0.01)
    recorder = _Recorder()
    checker = Checker(lambda: float(NOW), recorder, store)
    value = proof(key, token)
    headers = {"authorization": f"DPoP {token}", "dpop": value}
    pending = checker.run(sender_config.snapshot, request(headers), _Door())
    assert not isinstance(pending, tuple)
    assert (await pending).answer.reason == "ok"
    again = checker.run(sender_config.snapshot, request(headers), _Door())
    assert not isinstance(again, tuple)
    answered = await again
    assert answered.answer.reason == "dpop_proof_replayed"
    assert [d.reason for d in recorder.finished] == ["ok", "dpop_proof_replayed"]
    # A request without DPoP never meets the store: answered at once.
    plain = checker.run(sender_config.snapshot, request({}), _Door())
    assert isinstance(plain, tuple)


@pytest.mark.parametrize(
    ("store", "detail"),
    [
        (_SharedStore(delay=10.0), "no answer from the replay store"),
        (_SharedStore(error=OSError()), "OSError"),
    ],
    ids=["hangs", "fails"],
)
async def test_a_shared_store_that_hangs_or_fails_is_a_bounded_503(sender_config, key, token, store, detail):
    checker = Checker(lambda: float(NOW), _Recorder(), store)
    started = time.monotonic()
    pending = checker.run(sender_config.snapshot, dpop_request(key, token), _Door(), budget=5.0)
    assert not isinstance(pending, tuple)
    decision = (await pending).answer
    assert time.monotonic() - started < CLAIM_WAIT + 2.0  # the bound, with room for a busy machine
    assert decision.reason == "dpop_replay_store_unavailable"
    assert decision.outcome.http_status == 503
    assert detail in decision.detail


async def test_the_wait_is_half_the_callers_remaining_deadline(sender_config, key, token):
    checker = Checker(lambda: float(NOW), _Recorder(), _SharedStore(delay=10.0))
    pending = checker.run(sender_config.snapshot, dpop_request(key, token), _Door(), budget=0.02)
    assert not isinstance(pending, tuple)
    decision = (await pending).answer
    assert decision.reason == "dpop_replay_store_unavailable"
    assert "0.010s" in decision.detail


def test_a_claim_nobody_made_is_a_deny(sender_config, key, token):
    """finish() never answers an unclaimed proof as the allow it would be."""
    decision = decide(sender_config.snapshot, dpop_request(key, token), NOW)
    assert decision.claim is not None
    recorder = _Recorder()
    answered = Checker(lambda: float(NOW), recorder).finish(
        sender_config.snapshot,
        None,
        decision,
        _Door(),
        trace=None,
        request_id="",
        started=0.0,  # type: ignore[arg-type]
    )
    assert answered.decision.reason == "dpop_replay_store_unavailable"
    assert recorder.finished[0].reason == "dpop_replay_store_unavailable"


# -- the memo's rules ------------------------------------------------------------------------------


def _allow_of(config: Config, req: Any) -> Decision:
    decision = Checker(lambda: float(NOW), _Recorder()).decide(config.snapshot, req)
    assert decision.reason == "ok", decision
    return decision


def test_the_memo_never_keeps_a_dpop_request(sender_config, world, key, token):
    """Whatever key a door computes: a DPoP allow, or a bearer allow with a DPoP header, is not kept."""
    memo: AnswerMemo[str] = AnswerMemo()
    snapshot = sender_config.snapshot
    assert memo.usable(snapshot, 16)
    unbound = world.token()
    for req in (
        dpop_request(key, token),
        request({"authorization": f"Bearer {unbound}", "dpop": "x"}),
    ):
        decision = _allow_of(sender_config, req)
        memo.remember(snapshot, b"k", request=req, decision=decision, answer="a", record=object)
        assert len(memo) == 0
    plain = request({"authorization": f"Bearer {unbound}"})
    memo.remember(
        snapshot, b"k", request=plain, decision=_allow_of(sender_config, plain), answer="a", record=object
    )
    assert len(memo) == 1
    assert memo.lookup(snapshot, b"k", NOW, certificate="") is not None


def test_a_memo_entry_is_tied_to_its_client_certificate(sender_config, world):
    cert = make_cert()
    token = world.token(world.claims(cnf={"x5t#S256": cert.x5t}))
    req = request({"authorization": f"Bearer {token}", "x-forwarded-client-cert": cert.xfcc})
    memo: AnswerMemo[str] = AnswerMemo()
    snapshot = sender_config.snapshot
    memo.usable(snapshot, 16)
    memo.remember(
        snapshot, b"k", request=req, decision=_allow_of(sender_config, req), answer="a", record=object
    )
    assert memo.lookup(snapshot, b"k", NOW, certificate=cert.xfcc) is not None
    assert memo.lookup(snapshot, b"k", NOW, certificate=make_cert().xfcc) is None
    assert memo.lookup(snapshot, b"k", NOW, certificate="") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DPoP x", True),
        ("dpop x", True),
        (" DPOP  x", True),
        ("Bearer x", False),
        ("DPoPx", False),
        ("", False),
    ],
)
def test_dpop_scheme_at_the_byte_level(value, expected):
    assert dpop_scheme(value.encode()) is expected
    assert dpop_scheme(value) is expected


def test_repeatable(key, token):
    assert not repeatable(dpop_request(key, token))
    assert not repeatable(request({"authorization": "Bearer x", "dpop": "y"}))
    assert repeatable(request({"authorization": "Bearer x"}))
