"""A restarted ``authz serve`` does not accept again a DPoP proof its predecessor accepted.

Security review of issue 14, finding C: the per-process replay store starts empty, so a captured
request (token + proof) allowed before a restart (a crash, an OOM kill, a rolling deploy, a
replaced worker) was allowed once more after it, within the proof's window. The new process's
replay memory begins at its start: a proof made before is refused (dpop_proof_invalid, make a
new proof); one made after is checked as usual.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testkit import dpop
from testkit.sender import jkt, proof, write_config
from testkit.world import World
from tests.integration.test_shared_store import Authz

pytestmark = pytest.mark.slow


def test_a_proof_accepted_before_a_restart_is_refused_after_it(world: World, tmp_path: Path) -> None:
    path = write_config(world, tmp_path)
    key = dpop.new_key("ES256")
    now = int(time.time())
    token = world.token(world.claims(iat=now - 5, nbf=now - 5, exp=now + 600, cnf={"jkt": jkt(key)}))

    def send(authz: Authz, value: str) -> str:
        return authz.dpop(token, value)

    authz = Authz(path)
    try:
        _next_second()  # a process refuses proofs of the second it started in
        captured = proof(key, token, iat=int(time.time()))
        assert send(authz, captured) == "ok"
        assert send(authz, captured) == "dpop_proof_replayed"
    finally:
        authz.stop()  # SIGKILL: a crash, nothing written anywhere on the way out
    again = Authz(path)
    try:
        assert send(again, captured) == "dpop_proof_invalid"  # within its 60 s window: no second use
        _next_second()
        fresh = proof(key, token, iat=int(time.time()))
        assert send(again, fresh) == "ok"  # a client's next proof is made after the start
        assert send(again, fresh) == "dpop_proof_replayed"
    finally:
        again.stop()


def _next_second() -> None:
    """Wait into the next whole second (iat is whole seconds; a memory begins at one)."""
    time.sleep(1.05 - (time.time() % 1))
