"""The DPoP replay store (authz.core.replay): once per (key, jti) while the proof lives;
full means refuse, never forget an unexpired entry; bounded memory."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc

import pytest

from authz.core.replay import MemoryReplayStore, ReplayStore, ReplayVerdict, replay_key

FRESH, REPLAYED, FULL = ReplayVerdict.FRESH, ReplayVerdict.REPLAYED, ReplayVerdict.FULL
JKT_A = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
JKT_B = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
T = 1_760_000_000.0


def test_key_is_per_thumbprint_and_jti():
    assert replay_key(JKT_A, "j1") == replay_key(JKT_A, "j1")
    assert replay_key(JKT_A, "j1") != replay_key(JKT_B, "j1")  # another client's jti is its own
    assert replay_key(JKT_A, "j1") != replay_key(JKT_A, "j2")
    assert len(replay_key(JKT_A, "j" * 128)) == 16


def test_memory_store_implements_the_protocol():
    store: ReplayStore = MemoryReplayStore(10)
    assert asyncio.run(store.claim(b"k" * 16, T + 60, T)) is FRESH
    assert store.size() == 1


def test_second_claim_is_a_replay_until_expiry():
    store = MemoryReplayStore(10)
    key = replay_key(JKT_A, "j1")
    assert store.claim_now(key, T + 70, T) is FRESH
    assert store.claim_now(key, T + 70, T + 1) is REPLAYED
    assert store.claim_now(key, T + 70, T + 69.999) is REPLAYED
    assert store.claim_now(key, T + 70, T + 70) is FRESH  # expired at its time: the proof is refused anyway
    assert store.size() == 1


def test_fractional_expiry_is_kept_until_the_next_whole_second():
    store = MemoryReplayStore(10)
    assert store.claim_now(b"a", T + 10.2, T) is FRESH
    assert store.claim_now(b"a", T + 10.2, T + 10.5) is REPLAYED  # never forgotten early
    assert store.claim_now(b"a", T + 10.2, T + 11) is FRESH


def test_full_store_refuses_and_never_evicts():
    """Full of unexpired entries: the new key is refused (FULL), every old one is still a replay."""
    store = MemoryReplayStore(3)
    for name in (b"a", b"b", b"c"):
        assert store.claim_now(name, T + 60, T) is FRESH
    assert store.claim_now(b"d", T + 60, T + 1) is FULL
    assert store.claim_now(b"d", T + 60, T + 1) is FULL  # not remembered either
    for name in (b"a", b"b", b"c"):
        assert store.claim_now(name, T + 60, T + 2) is REPLAYED
    assert store.size() == 3


def test_full_store_purges_expired_entries_first():
    store = MemoryReplayStore(2)
    assert store.claim_now(b"a", T + 10, T) is FRESH
    assert store.claim_now(b"b", T + 60, T) is FRESH
    assert store.claim_now(b"c", T + 60, T + 5) is FULL
    assert store.claim_now(b"c", T + 60, T + 10) is FRESH  # a expired at T + 10: room again
    assert store.claim_now(b"b", T + 60, T + 10) is REPLAYED


def test_long_idle_purges_by_walking_buckets():
    """After a long pause (more seconds than buckets) every expired bucket goes in one purge."""
    store = MemoryReplayStore(100)
    for i in range(50):
        store.claim_now(bytes([i]), T + 10 + i, T)
    assert store.size() == 50
    store.claim_now(b"late", T + 10**6 + 60, T + 10**6)
    assert store.size() == 1
    assert store._buckets.keys() == {int(T + 10**6 + 60)}


def test_purge_walks_second_by_second():
    store = MemoryReplayStore(100)
    for i in range(30):
        store.claim_now(bytes([i]), T + 1 + i, T)
    store.claim_now(b"x", T + 100, T + 15)
    assert store.size() == 30 - 15 + 1  # entries expiring at T+1..T+15 are gone
    assert store.claim_now(bytes([15]), T + 100, T + 15) is REPLAYED  # expires at T+16: kept


def test_clock_stepping_back_never_forgets_early():
    """An entry inserted after the clock stepped back still expires (not lost to the walk),
    and not before its time."""
    store = MemoryReplayStore(100)
    store.claim_now(b"a", T + 200, T + 100)  # purged through T + 100
    assert store.claim_now(b"b", T + 95, T + 90) is FRESH  # clock 10 s back; expiry already purged
    assert store.claim_now(b"b", T + 95, T + 100.5) is REPLAYED
    assert store.claim_now(b"c", T + 300, T + 102) is FRESH
    assert store.claim_now(b"b", T + 95, T + 102) is FRESH  # gone now, with the next purge
    assert store.size() == 3


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):  # noqa: PT011
        MemoryReplayStore(0)


def test_concurrent_claims_of_one_key_admit_exactly_one():
    """Check-and-insert is atomic: many threads, one key, one FRESH."""
    store = MemoryReplayStore(1000)
    results: list[ReplayVerdict] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            results.append(store.claim_now(b"same", T + 60, T))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)  # bound: a deadlock fails the test instead of hanging it
    assert results.count(FRESH) == 1
    assert len(results) == 400


def test_check_and_insert_hold_even_when_a_thread_switch_falls_between():
    """The lock, not the GIL's timing, makes claim atomic: with a membership test that yields
    the GIL (a sleep), two threads still cannot both find the key new."""
    import time

    class SlowSet(set):
        def __contains__(self, item: object) -> bool:
            found = super().__contains__(item)
            time.sleep(0.01)  # another thread runs here
            return found

    store = MemoryReplayStore(10)
    store._seen = SlowSet()
    results: list[ReplayVerdict] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.claim_now(b"k", T + 60, T))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)  # bound: a deadlock fails the test instead of hanging it
    assert sorted(v.value for v in results) == ["fresh", "replayed", "replayed", "replayed"]


def test_same_proof_across_coroutines_on_one_loop():
    """Both doors of a process share the loop and the store: the second claim is a replay."""
    store = MemoryReplayStore(10)

    async def both() -> list[ReplayVerdict]:
        key = replay_key(JKT_A, "e1j3V_bKic8-LAEB")
        return list(await asyncio.gather(store.claim(key, T + 60, T), store.claim(key, T + 60, T)))

    assert sorted(v.value for v in asyncio.run(both())) == ["fresh", "replayed"]


def test_memory_per_entry_is_bounded():
    """Measured with tracemalloc: about 100 bytes per entry (set + bucket lists + the keys)."""
    count = 50_000
    store = MemoryReplayStore(count)
    keys = [replay_key(JKT_A, f"jti-{i}") for i in range(count)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, key in enumerate(keys):
        store.claim_now(key, T + 1 + i % 120, T)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    key_bytes = sum(key.__sizeof__() for key in keys)  # the keys existed before: they count too
    per_entry = (grown + key_bytes) / count
    assert 40 < per_entry < 200, per_entry


# ReplayMemory: where a store's memory of accepted proofs breaks (security review of issue 14,
# findings B, C, D). Windows below: max_age 60 + skew 5 (expires_at = iat + 65).
UNREMEMBERED = ReplayVerdict.UNREMEMBERED


def test_a_proof_made_before_the_memory_began_is_refused_and_one_made_after_is_not():
    """A restart: the process before may have accepted a proof made before this one started."""
    store = MemoryReplayStore(10)
    store.memory.forgot(T)
    assert store.claim_now(b"old", T - 1 + 65, T + 1, issued_at=T - 1) is UNREMEMBERED
    assert store.claim_now(b"old", T - 1 + 65, T + 1, issued_at=T - 1) is UNREMEMBERED  # not remembered
    assert store.claim_now(b"new", T + 65, T + 1, issued_at=T) is FRESH
    assert store.claim_now(b"new", T + 65, T + 2, issued_at=T) is REPLAYED


def test_a_break_is_dropped_once_every_proof_made_before_it_is_too_old_anyway():
    store = MemoryReplayStore(10)
    store.memory.forgot(T)
    assert store.claim_now(b"a", T - 1 + 65, T + 60, issued_at=T - 1) is UNREMEMBERED
    # 66 s on, a proof of before T is refused by its age; the break no longer decides
    assert store.memory.covers(T + 66, T + 66 + 65, T + 66)
    assert store.claim_now(b"b", T + 66 + 65, T + 66, issued_at=T + 66) is FRESH
    assert store.memory.breaks == ()  # dropped, not kept forever


def test_a_raised_max_age_judges_proofs_made_before_by_the_old_one():
    """Entries made under max_age 10 expire by it: a proof of then is refused once 10 s old."""
    store = MemoryReplayStore(10)
    assert store.claim_now(b"p", T + 10 + 5, T, issued_at=T) is FRESH  # accepted under max_age 10
    store.narrowed(T + 1, 10)
    assert store.claim_now(b"p", T + 65, T + 9, issued_at=T) is REPLAYED  # its entry lives
    # past T + 15 the entry is gone; without the narrowing the proof (60 s allowed now) passes
    assert store.claim_now(b"p", T + 65, T + 20, issued_at=T) is UNREMEMBERED
    assert store.claim_now(b"q", T + 2 + 65, T + 20, issued_at=T + 2) is FRESH  # made after the reload


def test_without_issued_at_or_a_break_every_claim_is_covered():
    store = MemoryReplayStore(10)
    assert store.claim_now(b"x", T + 65, T, issued_at=T - 50) is FRESH
    store.memory.forgot(T)
    assert store.claim_now(b"y", T + 65, T) is FRESH  # callers that pass no iat


def test_a_proof_of_the_second_a_break_happened_in_is_refused():
    """iat is whole seconds: a proof accepted at T + 0.2, just before a break at T + 0.3, says T."""
    store = MemoryReplayStore(10)
    store.memory.forgot(T + 0.3)
    assert store.claim_now(b"same-second", T + 65, T + 0.5, issued_at=T) is UNREMEMBERED
    assert store.claim_now(b"next-second", T + 1 + 65, T + 1.2, issued_at=T + 1) is FRESH
