"""Two real ``authz serve`` processes sharing one real Redis: revocations everywhere within a second,
through both doors, the token cache and the HTTP door's memo; the store lost and back; a reload
moving the store; a store that turns evicting (attack review 14, F).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from testkit.envoy import http_request
from testkit.files import rename_over
from testkit.processes import ServeProcess
from testkit.redis import RedisServer
from testkit.world import ACME_IDP, World, check_request

pytestmark = pytest.mark.slow

PROPAGATION = 1.0  # the promise: enforced by every replica within a second of `authz revoke`


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def running(redis_server: RedisServer) -> None:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()


def _config(world: World, folder: Path, url: str, revocation: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "keys").exists():
        (folder / "keys").symlink_to(world.root / "keys")
    path = folder / "config.yaml"
    text = world.config_path.read_text().replace(
        "listen: 127.0.0.1:0\n",
        f"listen: 127.0.0.1:0\nstore:\n  url: {url}\n  timeout: 0.2\nrevocation:\n  resync_interval: 0.5\n{revocation}",
    )
    rename_over(path, text)
    return path


class Authz:
    """One serve process: its gRPC and HTTP doors and admin port."""

    def __init__(self, config: Path) -> None:
        self.process = ServeProcess.start(
            config, ["--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        )
        line = self.process.wait_for(lambda r: r["msg"] == "serving", "serving")
        self.grpc_port, self.http_port = int(line["port"]), int(line["http_port"])  # type: ignore[call-overload]
        self.admin_port = int(line["admin_port"])  # type: ignore[call-overload]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = AuthorizationStub(self.channel)  # type: ignore[no-untyped-call]

    def grpc(self, token: str) -> str:
        response: CheckResponse = self.stub.Check(check_request(token=token), timeout=5)
        return response.dynamic_metadata.fields["reason"].string_value

    def http(self, token: str) -> str:
        answer = http_request(self.http_port, "GET", "/orders", host="api.acme.test",
                              headers={"authorization": f"Bearer {token}"}, timeout=5)  # fmt: skip
        return "ok" if answer.status == 200 else str(json.loads(answer.body)["reason"])

    def dpop(self, token: str, proof: str) -> str:
        """GET /orders through the HTTP door with a DPoP-bound token and its proof (https origin)."""
        headers = {"authorization": f"DPoP {token}", "dpop": proof, "x-forwarded-proto": "https"}
        answer = http_request(
            self.http_port, "GET", "/orders", host="api.acme.test", headers=headers, timeout=5
        )
        return "ok" if answer.status == 200 else str(json.loads(answer.body)["reason"])

    def metric(self, name: str) -> float:
        text = http_request(self.admin_port, "GET", "/metrics", timeout=5).body.decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def exposition(self) -> str:
        return http_request(self.admin_port, "GET", "/metrics", timeout=5).body.decode()

    def ready(self) -> int:
        return http_request(self.admin_port, "GET", "/readyz", timeout=5).status

    def stop(self) -> None:
        self.channel.close()
        self.process.stop()


@pytest.fixture
def pair(world: World, tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Authz, Authz]]:
    one = Authz(_config(world, tmp_path / "one", redis_server.url))
    try:
        two = Authz(_config(world, tmp_path / "two", redis_server.url))
        try:
            yield one, two
        finally:
            two.stop()
    finally:
        one.stop()


def _token(world: World, **claims: object) -> str:
    now = int(time.time())
    return world.token(world.claims(iat=now - 5, nbf=now - 5, exp=now + 600, **claims))


def _authz(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "authz", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]) if done.stdout.strip() else {}


def _until(seconds: float, condition: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_revocation_is_enforced_by_every_replica_through_both_doors_within_a_second(
    world: World, redis_server: RedisServer, pair: tuple[Authz, Authz]
) -> None:
    token, other = _token(world, jti="leaked-1"), _token(world, jti="fine-1", sub="user-2")
    doors = [(authz, door) for authz in pair for door in (authz.grpc, authz.http)]
    for _, door in doors:  # each twice: the token cache holds it, the HTTP memo repeats it
        assert (door(token), door(token)) == ("ok", "ok")
    assert all(authz.metric("authz_http_memo_hits_total") >= 1 for authz in pair)
    assert all(authz.metric('authz_token_cache_lookups_total{result="hit"}') >= 1 for authz in pair)

    _authz("revoke", "--store", redis_server.url, "--jti", "leaked-1")
    for _, door in doors:
        assert _until(PROPAGATION, lambda door=door: door(token) == "token_revoked") < PROPAGATION
    assert all(door(other) == "ok" for _, door in doors)

    # A subject: every token of it issued before now, on every replica; a later one is fine.
    _authz("revoke", "--store", redis_server.url, "--subject", "user-2", "--issuer", ACME_IDP)
    for _, door in doors:
        _until(PROPAGATION, lambda door=door: door(other) == "token_revoked")
    time.sleep(1.1)  # iat has whole seconds: a token issued after the entry's time
    now = int(time.time())
    later = world.token(world.claims(sub="user-2", iat=now, nbf=now, exp=now + 600))
    assert all(door(later) == "ok" for _, door in doors)

    listed = subprocess.run([sys.executable, "-m", "authz", "revocations", "list", "--store", redis_server.url],
                            capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()  # fmt: skip
    assert {json.loads(line)["kind"] for line in listed} == {"jti", "subject"}
    assert "leaked-1" not in "".join(listed)  # the jti by its hash only
    _authz("revocations", "unrevoke", "--store", redis_server.url, "--jti", "leaked-1")
    for _, door in doors:
        _until(PROPAGATION, lambda door=door: door(token) == "ok")
    assert all(authz.metric("authz_revocations_applied_total") >= 2 for authz in pair)
    decision = next(r for r in pair[0].process.lines if r.get("reason") == "token_revoked")
    assert decision["revocation"] in ("jti", "subject")
    assert len(str(decision["jti_hash"])) == 12


def test_the_store_lost_and_back_while_serving(
    world: World, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Past max_staleness without the store: token checks 503 revocation_state_stale, /readyz 503;
    with it back: serving again, without a restart."""
    config = _config(world, tmp_path / "lost", redis_server.url, "  max_staleness: 1.5\n")
    authz = Authz(config)
    try:
        token = _token(world)
        assert (authz.grpc(token), authz.http(token), authz.ready()) == ("ok", "ok", 200)
        redis_server.kill()
        _until(10, lambda: authz.grpc(token) == "revocation_state_stale")
        assert authz.http(token) == "revocation_state_stale"
        assert authz.ready() == 503
        assert authz.metric("authz_revocation_mirror_stale") == 1
        started = time.monotonic()
        for _ in range(50):  # bounded: checks answer at once, nothing waits for the store
            assert authz.grpc(token) == "revocation_state_stale"
        assert time.monotonic() - started < 5
        redis_server.start()
        _until(15, lambda: authz.grpc(token) == "ok")
        assert (authz.http(token), authz.ready()) == ("ok", 200)
    finally:
        authz.stop()


def test_a_reload_moves_to_another_store_without_dropping_checks(
    world: World, tmp_path: Path, redis_server: RedisServer
) -> None:
    other = RedisServer(tmp_path / "other-redis").start()
    config = _config(world, tmp_path / "move", redis_server.url)
    authz = Authz(config)
    try:
        token = _token(world, jti="moved-1")
        _config(world, tmp_path / "move", other.url)
        answers = []
        deadline = time.monotonic() + 20  # bounds the wait for the reload (polling + debounce)
        while not any(r["msg"] == "config reloaded" for r in authz.process.lines):
            answers.append(authz.grpc(token))
            assert time.monotonic() < deadline
        assert set(answers) == {"ok"}  # every check answered, none dropped
        _authz("revoke", "--store", other.url, "--jti", "moved-1")
        _until(PROPAGATION, lambda: authz.grpc(token) == "token_revoked")
    finally:
        authz.stop()
        other.stop()


def test_a_bad_store_url_is_refused_at_start_with_file_line_and_reason(world: World, tmp_path: Path) -> None:
    config = _config(world, tmp_path / "bad", "redis://user:secret@cache:6379")
    process = ServeProcess.start(config)
    try:
        assert process.process.wait(timeout=30) == 2
        record = process.wait_for(lambda r: r["msg"] == "configuration rejected", "the rejection")
        assert f"{config}:3: config.store.url: " in str(record["error"])
        assert "secret" not in "".join(process.raw)
    finally:
        process.stop()


def test_a_dpop_proof_accepted_by_one_replica_is_a_replay_for_the_other(
    world: World, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The shared replay store: one SET NX per proof, so a captured proof sent to another
    replica is refused there; the store's own counters show one round trip per check at most."""
    from testkit import dpop
    from testkit.sender import jkt, proof, write_config

    authzs = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        path = write_config(world, folder, extra=f"store:\n  url: {redis_server.url}\n  timeout: 0.2\n")
        authzs.append(Authz(path))
    try:
        key = dpop.new_key("ES256")
        now = int(time.time())
        token = world.token(world.claims(iat=now - 5, nbf=now - 5, exp=now + 600, cnf={"jkt": jkt(key)}))

        def send(authz: Authz, value: str) -> str:
            return authz.dpop(token, value)

        one, two = authzs
        first = proof(key, token, iat=int(time.time()))  # https://api.acme.test/orders
        assert send(one, first) == "ok"
        assert send(two, first) == "dpop_proof_replayed"  # another process: still a replay
        assert send(one, first) == "dpop_proof_replayed"
        second = proof(key, token, iat=int(time.time()))
        assert send(two, second) == "ok"
        assert send(one, second) == "dpop_proof_replayed"
        for authz in authzs:
            claims = authz.metric('authz_replay_claims_total{source="store"')
            trips = authz.metric('authz_store_round_trips_total{operation="claim"}')
            assert claims >= 2
            assert trips <= claims
    finally:
        for authz in authzs:
            authz.stop()


def test_a_store_that_turns_evicting_forgets_nothing_it_is_asked_to_keep(
    world: World, tmp_path: Path
) -> None:
    """Attack review 14, finding F (its evict.py through a real `authz serve`): a proof accepted
    on a noeviction store, then the store set to volatile-lru (a common managed default) and
    filled by keys with an expiry until it evicts the replay key. The captured request must not
    pass again: from the next resync the store is not asked (503 dpop_replay_store_unavailable
    with on_unavailable: deny), one error line names the policy, the gauges show it. Set back
    to noeviction, new proofs are accepted (and refused as replays) without a restart, and the
    captured request, made before, is refused: its key may be among the evicted."""
    from testkit import dpop
    from testkit.sender import jkt, proof, write_config

    store = RedisServer(tmp_path / "evicting-redis").start()
    authz = None
    try:
        admin = store.client()
        admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) + 1_500_000))
        folder = tmp_path / "evict"
        folder.mkdir()
        extra = f"store:\n  url: {store.url}\n  timeout: 0.2\nrevocation:\n  resync_interval: 0.5\n"
        authz = Authz(write_config(world, folder, extra=extra))
        key = dpop.new_key("ES256")
        now = int(time.time())
        token = world.token(world.claims(iat=now - 5, nbf=now - 5, exp=now + 600, cnf={"jkt": jkt(key)}))

        captured = proof(key, token, iat=int(time.time()))
        assert (authz.dpop(token, captured), authz.dpop(token, captured)) == ("ok", "dpop_proof_replayed")
        assert authz.metric('authz_store_eviction_safe{policy="noeviction"}') == 1

        admin.config_set("maxmemory-policy", "volatile-lru")
        # Bounds the next INFO reading (every resync_interval, 0.5 s): the gauge names the new policy.
        _until(10, lambda: 'authz_store_eviction_safe{policy="volatile-lru"} 0.0' in authz.exposition())  # type: ignore[union-attr]
        # Another application's keys with an expiry: the store evicts, until the replay key is
        # among the evicted (LRU is sampled: bounded at 300,000 keys, a few seconds).
        for batch in range(30):
            pipe = admin.pipeline(transaction=False)
            for i in range(10_000):
                pipe.set(f"otherapp:session:{batch}:{i}", "x" * 64, px=600_000)
            pipe.execute()
            if not list(admin.scan_iter("authz:dpop:*")):
                break
        assert int(admin.info("stats")["evicted_keys"]) > 0
        assert not list(admin.scan_iter("authz:dpop:*"))
        assert authz.dpop(token, captured) == "dpop_replay_store_unavailable"
        assert authz.dpop(token, proof(key, token, iat=int(time.time()))) == "dpop_replay_store_unavailable"
        _until(10, lambda: authz.metric("authz_store_evicted_keys") > 0)  # type: ignore[union-attr]
        [line] = [
            r for r in authz.process.lines if r.get("level") == "error" and r.get("logger") == "authz.store"
        ]
        assert line["maxmemory_policy"] == "volatile-lru"
        assert "maxmemory-policy noeviction" in str(line["msg"])

        admin.config_set("maxmemory", "0")
        admin.config_set("maxmemory-policy", "noeviction")
        accepted: list[str] = []

        def fresh_accepted() -> bool:
            accepted[:] = [proof(key, token, iat=int(time.time()))]
            return authz.dpop(token, accepted[0]) == "ok"  # type: ignore[union-attr]

        _until(10, fresh_accepted)  # bounds the next resync
        assert authz.dpop(token, accepted[0]) == "dpop_proof_replayed"
        assert authz.dpop(token, captured) == "dpop_proof_invalid"  # made before: maybe evicted
        assert authz.metric('authz_store_eviction_safe{policy="noeviction"}') == 1
    finally:
        if authz is not None:
            authz.stop()
        store.stop()
