"""``authz subscriptions`` against a real Redis and against a file; the store-fed mirror of two
"processes" (two ``SubscriptionService``s) following it within a second.

The CLI runs through ``authz.cli.main`` in a thread, as a separate program would (it makes its
own event loop and store connection).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authz.app.store import StoreHolder, StoreMetrics
from authz.app.subscriptions import CHANGE_SCRIPT, SubscriptionKeys, SubscriptionService, field_of
from authz.cli import main
from authz.config import Config, load_config
from authz.config.subscriptions import audit_path
from authz.core.subscription import Status, Subscription
from authz.errors import Reason
from authz.telemetry.metrics import Registry
from testkit.loop import worst_wait
from testkit.redis import RedisServer
from testkit.world import World, subscriptions_config

PROPAGATION = 1.0  # the promise: a change made anywhere is enforced everywhere within this
KEY = ("acme", "orders", "mobile-app")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def running(server: RedisServer) -> None:
    server.client().flushall()


@pytest.fixture
def store_config(world: World, server: RedisServer) -> Path:
    head = (
        f"store:\n  url: {server.url}\n"
        # Resyncs far apart: a change must come by its published message to arrive within 1 s.
        "subscriptions:\n  max_staleness: 30\n  resync_interval: 10\n  full_resync_interval: 60\n"
    )
    return subscriptions_config(world, "store-subscriptions.yaml", head=head)


@pytest.fixture
def file_config(world: World, tmp_path: Path) -> Path:
    subs = world.root / "subscriptions.yaml"
    subs.write_text("subscriptions: []\n", encoding="utf-8")
    audit_path(subs).unlink(missing_ok=True)
    return subscriptions_config(
        world, "file-subscriptions.yaml", head="subscriptions:\n  file: subscriptions.yaml\n"
    )


def authz(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, object]], str]:
    """Exit code, the JSON lines printed, and the error text of one CLI run."""
    try:
        code = main(["subscriptions", *args])
    except SystemExit as exc:  # argparse (a number), or an error message (printed, exit status 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 1 if exc.code else 0
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def move(capsys: pytest.CaptureFixture[str], config: Path, action: str, *extra: str) -> tuple[int, str]:
    code, _, err = authz(
        capsys,
        action,
        "--config",
        str(config),
        "--tenant",
        "acme",
        "--client",
        "mobile-app",
        "--api",
        "orders",
        *extra,
    )
    return code, err


class Process:
    """One authz process's subscription mirror, fed from the store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.holder = StoreHolder()
        self.service = SubscriptionService(StoreMetrics(Registry()))

    async def __aenter__(self) -> Process:
        client = await self.holder.apply(self.config.store)
        await self.service.apply(self.config, client, 5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()
        await self.holder.close()

    def answer(self, at: float | None = None) -> Reason:
        return self.service.mirror.check(*KEY, time.time() if at is None else at)[0]


async def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long until ``condition`` held (polled); fails past ``seconds``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- the store ----------------------------------------------------------------------------------------


async def test_every_move_reaches_every_process_within_a_second(
    store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(store_config)
    async with Process(config) as one, Process(config) as two:
        both = (one, two)
        assert all(p.answer() is Reason.SUBSCRIPTION_REQUIRED for p in both)
        assert all(p.service.ready() for p in both)
        steps = [
            ("request", ["--by", "team-mobile", "--reason", "checkout"], Reason.SUBSCRIPTION_PENDING),
            ("approve", ["--by", "alice", "--reason", "SEC-142"], Reason.OK),
            ("revoke", ["--by", "bob", "--reason", "contract ended"], Reason.SUBSCRIPTION_REVOKED),
            ("request", ["--by", "team-mobile", "--reason", "again"], Reason.SUBSCRIPTION_PENDING),
            ("reject", ["--by", "alice", "--reason", "no"], Reason.SUBSCRIPTION_REJECTED),
        ]
        for action, extra, reason in steps:
            code, err = await asyncio.to_thread(move, capsys, store_config, action, *extra)
            assert code == 0, err
            took = await _within(PROPAGATION, lambda r=reason: all(p.answer() is r for p in both))
            assert took < PROPAGATION
        code, lines, _ = await asyncio.to_thread(authz, capsys, "log", "--config", str(store_config))
        assert code == 0
        assert [(e["action"], e["by"], e["reason"], e.get("from"), e["to"]) for e in lines] == [
            ("request", "team-mobile", "checkout", None, "pending"),
            ("approve", "alice", "SEC-142", "pending", "approved"),
            ("revoke", "bob", "contract ended", "approved", "revoked"),
            ("request", "team-mobile", "again", "revoked", "pending"),
            ("reject", "alice", "no", "pending", "rejected"),
        ]
        code, lines, _ = await asyncio.to_thread(authz, capsys, "list", "--config", str(store_config))
        assert [(s["client"], s["status"], s["decided_by"]) for s in lines] == [
            ("mobile-app", "rejected", "alice")
        ]


async def test_an_approval_with_an_expiry_ends_there(
    store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(store_config)
    async with Process(config) as one:
        assert (await asyncio.to_thread(move, capsys, store_config, "request"))[0] == 0
        ends = time.time() + 3600
        code, err = await asyncio.to_thread(
            move, capsys, store_config, "approve", "--by", "a", "--expires", str(ends)
        )
        assert code == 0, err
        await _within(PROPAGATION, lambda: one.answer() is Reason.OK)
        assert one.answer(at=ends) is Reason.SUBSCRIPTION_EXPIRED


async def test_a_process_started_later_loads_what_is_there(
    store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await asyncio.to_thread(move, capsys, store_config, "request"))[0] == 0
    assert (await asyncio.to_thread(move, capsys, store_config, "approve", "--by", "alice"))[0] == 0
    async with Process(load_config(store_config)) as late:
        assert late.answer() is Reason.OK  # loaded before the process goes live


async def test_a_change_written_without_a_message_is_found_by_the_version_check(
    store_config: Path, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(store_config)
    config = replace(config, subscriptions=replace(config.subscriptions, resync_interval=0.2))
    async with Process(config) as one:
        keys = SubscriptionKeys("authz:")
        record = '{"tenant":"acme","client":"mobile-app","api":"orders","status":"approved"}'
        client = server.client()
        client.hset(keys.records, "acme orders mobile-app", record)  # no publish: a lost message
        client.incr(keys.version)
        await _within(2.0, lambda: one.answer() is Reason.OK)  # resync_interval 0.2 s


@pytest.mark.parametrize("how", ["back-by-one", "flushed-and-reseeded"])
async def test_a_counter_that_went_back_is_not_taken_for_the_mirror_s_history(
    store_config: Path, server: RedisServer, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A restored backup that lost the last write, an evicted version key, or a FLUSHALL and a
    re-seed: the next moves carry versions the mirror has held already; they must be enforced
    (version checks 10 s apart in this configuration: by their messages, within 1 s)."""
    async with Process(load_config(store_config)) as one:
        assert (await asyncio.to_thread(move, capsys, store_config, "request"))[0] == 0
        assert (await asyncio.to_thread(move, capsys, store_config, "approve", "--by", "alice"))[0] == 0
        await _within(PROPAGATION, lambda: one.answer() is Reason.OK)
        client, keys = server.client(), SubscriptionKeys("authz:")
        if how == "back-by-one":
            client.decr(keys.version)  # the restore lost a write the mirror had seen
            assert (await asyncio.to_thread(move, capsys, store_config, "revoke", "--by", "bob"))[0] == 0
            await _within(PROPAGATION, lambda: one.answer() is Reason.SUBSCRIPTION_REVOKED)
        else:
            client.flushall()  # and re-seeded with as many moves as the mirror had seen
            code, err = await asyncio.to_thread(move, capsys, store_config, "request", "--by", "t")
            assert code == 0, err
            await _within(PROPAGATION, lambda: one.answer() is Reason.SUBSCRIPTION_PENDING)
            assert len(one.service.mirror) == 1


LOAD_STALL = 0.5  # generous: a parse on the loop holds it ~1.5 s at 100k records on this machine


async def test_checks_go_on_during_a_full_load_of_100k_subscriptions(
    store_config: Path, server: RedisServer
) -> None:
    """A full load parses every record: in a worker thread, swapped in at once, so a check made
    meanwhile waits no longer than ``LOAD_STALL`` (on the loop it waited the whole parse)."""
    client, keys = server.client(), SubscriptionKeys("authz:")
    pipe = client.pipeline(transaction=False)
    for i in range(100_000):
        record = Subscription("acme", f"app-{i}", "orders", Status.APPROVED, decided_by="a")
        pipe.hset(keys.records, field_of(record.key), record.to_json())
    pipe.set(keys.version, 1)
    pipe.execute()
    async with Process(load_config(store_config)) as one:
        feed = one.service.feed
        assert feed is not None
        assert len(one.service.mirror) == 100_000
        mirror = one.service.mirror
        for _ in range(2):
            loaded, worst = await worst_wait(
                feed.load(), lambda: mirror.check("acme", "orders", "app-7", 0.0)
            )
            assert loaded
            assert worst < LOAD_STALL, f"a check waited {worst:.3f} s during a load"
        assert mirror.check("acme", "orders", "app-99999", time.time())[0] is Reason.OK


async def test_a_forged_or_misfiled_record_grants_nothing(
    store_config: Path,
    server: RedisServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever writes the store by hand: a record under another subscription's field is not a
    subscription (it would grant what ``revoke`` cannot find), and ``expires: 0`` is 1970."""
    client, keys = server.client(), SubscriptionKeys("authz:")
    hidden = '{"tenant":"acme","client":"hidden-app","api":"orders","status":"approved"}'
    epoch = '{"tenant":"acme","client":"mobile-app","api":"orders","status":"approved","expires":0}'
    client.hset(keys.records, mapping={"acme orders f-victim": hidden, "acme orders mobile-app": epoch})
    client.set(keys.version, 2)
    async with Process(load_config(store_config)) as one:
        mirror = one.service.mirror
        assert mirror.check("acme", "orders", "hidden-app", time.time())[0] is Reason.SUBSCRIPTION_REQUIRED
        assert mirror.check("acme", "orders", "f-victim", time.time())[0] is Reason.SUBSCRIPTION_REQUIRED
        assert one.answer() is Reason.SUBSCRIPTION_EXPIRED
        feed = one.service.feed
        assert feed is not None
        assert await feed.load()  # a second load: counted again, not logged again
        assert one.service._counters.bad_members == 2
        warned = [r for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(warned) == 1
    code, lines, _ = await asyncio.to_thread(authz, capsys, "list", "--config", str(store_config))
    assert (code, [line["client"] for line in lines]) == (0, ["mobile-app"])
    code, _, err = await asyncio.to_thread(
        authz, capsys, "revoke", "--config", str(store_config), "--tenant", "acme", "--client", "f-victim",
        "--api", "orders", "--by", "alice",
    )  # fmt: skip
    assert code == 1
    assert "the stored record 'acme orders f-victim' is damaged" in err


def test_a_move_raced_by_another_changes_nothing(server: RedisServer) -> None:
    """The script writes only over the record the move was decided on."""
    keys = SubscriptionKeys("authz:")
    client = server.client()
    client.hset(keys.records, "acme orders mobile-app", "newer")
    args = [keys.channel, "acme orders mobile-app", "", "mine", "action", "request"]
    assert client.eval(CHANGE_SCRIPT, 3, keys.records, keys.version, keys.log, *args) == -1
    assert client.hget(keys.records, "acme orders mobile-app") == b"newer"
    assert client.xlen(keys.log) == 0
    assert client.get(keys.version) is None


# -- the CLI's errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["store", "file"])
def test_moves_the_workflow_refuses_change_nothing(
    kind: str, store_config: Path, file_config: Path, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = store_config if kind == "store" else file_config

    def state() -> object:
        if kind == "store":
            client = server.client()
            return (client.hgetall("authz:{sub}:records"), client.xlen("authz:{sub}:log"))
        subs = config.parent / "subscriptions.yaml"
        trail = audit_path(subs)
        return (subs.read_bytes(), trail.read_bytes() if trail.exists() else b"")

    before = state()
    code, err = move(capsys, config, "approve", "--by", "alice")
    assert (code, err.strip()) == (
        1,
        "error: there is no subscription of 'mobile-app' to API 'orders' of tenant 'acme': it must be requested first",
    )
    assert state() == before
    assert move(capsys, config, "request")[0] == 0
    before = state()
    for action, message in [
        ("revoke", "is pending: only a approved one can be revoked"),
        ("request", "is pending already"),
    ]:
        code, err = move(capsys, config, action, "--by", "alice")
        assert code == 1
        assert message in err
    code, _, err = authz(
        capsys,
        "approve",
        "--config",
        str(config),
        "--tenant",
        "acme",
        "--client",
        "c",
        "--api",
        "billing",
        "--by",
        "a",
    )
    assert (code, "API 'billing' is not one of the apis of tenant 'acme' (admin, orders)" in err) == (1, True)
    code, _, err = authz(
        capsys,
        "approve",
        "--config",
        str(config),
        "--tenant",
        "nope",
        "--client",
        "c",
        "--api",
        "orders",
        "--by",
        "a",
    )
    assert (code, "tenant 'nope' is not in the configuration" in err) == (1, True)
    code, err = move(capsys, config, "approve", "--by", "alice", "--expires", "2001-01-01T00:00:00Z")
    assert (code, "the expiry is not in the future" in err) == (1, True), err
    code, err = move(capsys, config, "approve")  # no --by
    assert (code, "--by" in err) == (2, True)
    assert state() == before


@pytest.mark.parametrize("kind", ["store", "file"])
@pytest.mark.parametrize("by", ["", "   ", "\t"])
def test_an_empty_by_is_refused_not_read_as_the_client(
    kind: str,
    by: str,
    store_config: Path,
    file_config: Path,
    server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--by "$ADMIN"`` with ADMIN unset: refused, not recorded as the client approving itself."""
    config = store_config if kind == "store" else file_config
    assert move(capsys, config, "request")[0] == 0
    for action in ("approve", "reject", "request"):
        code, err = move(capsys, config, action, "--by", by)
        assert (code, err.strip()) == (1, "error: who makes the change must be named (--by)"), action
    code, lines, _ = authz(capsys, "log", "--config", str(config))
    assert [(e["action"], e["by"]) for e in lines] == [("request", "mobile-app")]


@pytest.mark.parametrize("kind", ["store", "file"])
@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("1798761600000", "--expires: must be a time before year 10000: seconds (not milliseconds)"),
        ("1e300", "--expires: must be a time before year 10000"),
        (str(int(time.time() + 101 * 365.25 * 86400)), "more than 100 years ahead"),
        ("3000-01-01T00:00:00Z", "more than 100 years ahead"),
    ],
)
def test_an_expiry_no_one_means_is_refused_and_changes_nothing(
    kind: str,
    expires: str,
    message: str,
    store_config: Path,
    file_config: Path,
    server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = store_config if kind == "store" else file_config
    assert move(capsys, config, "request")[0] == 0
    code, err = move(capsys, config, "approve", "--by", "alice", "--expires", expires)
    assert code in (1, 2)
    assert message in err, err
    assert "Traceback" not in err
    code, lines, err = authz(capsys, "list", "--config", str(config))
    assert (code, [line["status"] for line in lines]) == (0, ["pending"]), err
    code, lines, err = authz(capsys, "log", "--config", str(config))
    assert (code, [line["action"] for line in lines]) == (0, ["request"]), err
    if kind == "store":  # one stored by an earlier version, or by hand: unreadable, not a crash
        planted = '{"tenant":"acme","client":"old","api":"orders","status":"approved","expires":1e300}'
        server.client().hset("authz:{sub}:records", "acme orders old", planted)
        code, lines, err = authz(capsys, "list", "--config", str(config))
        assert (code, [line["client"] for line in lines]) == (0, ["mobile-app"]), err


@pytest.mark.parametrize("kind", ["store", "file"])
def test_a_damaged_audit_entry_is_marked_and_the_rest_printed(
    kind: str, store_config: Path, file_config: Path, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad (or planted) entry must not hide the whole trail."""
    config = store_config if kind == "store" else file_config
    assert move(capsys, config, "request")[0] == 0
    if kind == "store":
        server.client().xadd("authz:{sub}:log", {"at": "soon", "action": "approve"})
        where = server.client().xrange("authz:{sub}:log")[-1][0].decode()
        where = f"entry {where}"
    else:
        with audit_path(config.parent / "subscriptions.yaml").open("a", encoding="utf-8") as trail:
            trail.write('{"at": 1e999, "half a line\n')
        where = "line 2"
    assert move(capsys, config, "approve", "--by", "alice")[0] == 0
    code, lines, err = authz(capsys, "log", "--config", str(config))
    assert [line.get("action", line.get("unreadable")) for line in lines] == ["request", where, "approve"]
    assert (code, err.strip()) == (1, f"error: audit entry at {where} is not readable")


def test_a_configuration_without_a_store_or_file_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    config = subscriptions_config(world, "nowhere.yaml")
    code, err = move(capsys, config, "request")
    assert code == 2
    assert "keeps no subscriptions" in err


def test_an_unreachable_store_is_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    config = subscriptions_config(world, "down.yaml", head="store:\n  url: redis://127.0.0.1:1\n")
    code, err = move(capsys, config, "request")
    assert (code, err.strip()) == (1, "error: the store did not answer (ConnectionError)")


# -- the file --------------------------------------------------------------------------------------------


def test_the_file_is_edited_and_the_audit_trail_kept_beside_it(
    file_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert move(capsys, file_config, "request", "--by", "team-mobile", "--reason", "checkout")[0] == 0
    assert move(capsys, file_config, "approve", "--by", "alice", "--reason", "SEC-142")[0] == 0
    config = load_config(file_config)  # what a reload reads
    (record,) = config.subscriptions.records
    assert (record.status, record.requested_by, record.decided_by, record.decision_reason) == (
        Status.APPROVED,
        "team-mobile",
        "alice",
        "SEC-142",
    )
    code, lines, _ = authz(capsys, "log", "--config", str(file_config))
    assert [(e["action"], e["by"], e["reason"]) for e in lines] == [
        ("request", "team-mobile", "checkout"),
        ("approve", "alice", "SEC-142"),
    ]
    code, lines, _ = authz(capsys, "list", "--config", str(file_config), "--status", "pending")
    assert (code, lines) == (0, [])


def test_a_move_whose_audit_entry_cannot_be_written_changes_nothing(
    file_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The entry is written (and synced) before the file is replaced: no move without its entry."""
    assert move(capsys, file_config, "request")[0] == 0
    subs = file_config.parent / "subscriptions.yaml"
    trail = audit_path(subs)
    kept = trail.read_bytes()
    trail.unlink()
    trail.mkdir()  # unwritable whoever runs the test (root too): a full disk, a read-only mount
    try:
        before = subs.read_bytes()
        code, err = move(capsys, file_config, "approve", "--by", "alice")
        assert subs.read_bytes() == before  # the approval did not take effect
        assert code == 1
        assert f"error: the audit trail {trail} cannot be written (Is a directory): nothing changed" in err
        assert not list(subs.parent.glob(f".{subs.name}.*.tmp"))  # nothing left behind
    finally:
        trail.rmdir()
        trail.write_bytes(kept)
    assert move(capsys, file_config, "approve", "--by", "alice")[0] == 0  # and then it can be


def test_a_move_whose_file_cannot_be_replaced_is_marked_aborted_in_the_trail(
    file_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert move(capsys, file_config, "request")[0] == 0
    subs = file_config.parent / "subscriptions.yaml"
    before = subs.read_bytes()

    def refused(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("authz.app.subscribe.os.replace", refused)
    code, err = move(capsys, file_config, "approve", "--by", "alice")
    monkeypatch.undo()
    assert code == 1
    assert "cannot be replaced (No space left on device): nothing changed" in err
    assert "the audit trail marks the move aborted" in err
    assert subs.read_bytes() == before
    code, lines, _ = authz(capsys, "log", "--config", str(file_config))
    assert [(e["action"], e.get("aborted")) for e in lines] == [
        ("request", None),
        ("approve", None),
        ("approve", True),
    ]


def test_a_broken_hand_edit_is_named_by_file_and_line(
    file_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = file_config.parent / "subscriptions.yaml"
    subs.write_text("subscriptions:\n  - tenant: acme\n    client: c\n", encoding="utf-8")
    code, _, err = authz(capsys, "list", "--config", str(file_config))
    assert code == 2
    assert f"{subs}:2" in err


def test_explain_reads_the_subscriptions_file(
    world: World, file_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    token = world.token(world.claims(iat=now - 5, nbf=now - 5, exp=now + 600, azp="mobile-app"))
    explain = ["explain", "--config", str(file_config), "--host", "api.acme.test", "--path", "/orders"]

    def reason() -> object:
        main([*explain, "--token", token])
        return json.loads(capsys.readouterr().out)["reason"]

    assert reason() == "subscription_required"
    assert move(capsys, file_config, "request")[0] == 0
    assert move(capsys, file_config, "approve", "--by", "alice")[0] == 0
    assert reason() == "ok"


async def test_a_reload_moves_between_the_file_and_the_store(
    store_config: Path, file_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mirror follows each loaded configuration's source: the file's records, then the
    store's (stale until loaded, then what the store holds), then the file's again."""
    assert (await asyncio.to_thread(move, capsys, file_config, "request"))[0] == 0
    assert (await asyncio.to_thread(move, capsys, file_config, "approve", "--by", "alice"))[0] == 0
    from_file, from_store = load_config(file_config), load_config(store_config)
    holder, service = StoreHolder(), SubscriptionService(StoreMetrics(Registry()))
    try:
        await service.apply(from_file, None, 5.0)
        assert (service.mirror.check(*KEY, time.time())[0], service.feed) == (Reason.OK, None)
        client = await holder.apply(from_store.store)
        await service.apply(from_store, client, 5.0)
        assert service.feed is not None
        assert (
            service.mirror.check(*KEY, time.time())[0] is Reason.SUBSCRIPTION_REQUIRED
        )  # the store has none
        await service.apply(from_file, None, 5.0)
        assert (service.mirror.check(*KEY, time.time())[0], service.feed) == (Reason.OK, None)
    finally:
        await service.stop()
        await holder.close()
