"""Hot reload: files changed on disk -> a new snapshot, swapped between requests, last good kept.

Every test works in its own folder (the session world's key files copied in),
runs a Reloader with short intervals on the test's event loop, and waits by
bounded polling on ``Reloader.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from authz.app.jwks import JwksRegistry
from authz.app.reload import Reloader
from authz.config import Config, SnapshotHolder, load_config
from authz.core.decision import Decision, Verdict
from authz.grpc.servicer import AuthorizationService, evaluate
from authz.jose.mint import generate_key, mint
from authz.telemetry.logs import JsonFormatter
from testkit.files import AtomicDir, config_text, rename_over, write_in_place
from testkit.world import NOW, World, check_request

INTERVAL = 0.05
DEBOUNCE = 0.1
TIMEOUT = 5.0
FAILED = "config reload failed; keeping the last good configuration"

# The policy change of these tests: acme's read-orders rule asks for another scope.


# ------------------------------------------------------------------ helpers


def copy_world(world: World, root: Path) -> Path:
    """The session world's key files and config in ``root``; returns the config path."""
    shutil.copytree(world.root / "keys", root / "keys")
    path = root / "config.yaml"
    path.write_text(config_text(root / "keys"), encoding="utf-8")
    return path


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` (bounded) while the event loop runs the reloader."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_generation(reloader: Reloader, generation: int) -> None:
    await wait_until(lambda: reloader.status.generation >= generation, f"generation {generation}")
    assert reloader.status.generation == generation, reloader.status


async def wait_result(reloader: Reloader, result: str, count: int) -> None:
    await wait_until(lambda: reloader.status.results.get(result, 0) >= count, f"{result} >= {count}")


@contextlib.asynccontextmanager
async def watching(path: Path) -> AsyncIterator[tuple[SnapshotHolder, Reloader]]:
    """A holder with the config at ``path`` loaded, and a running Reloader watching it."""
    holder = SnapshotHolder(load_config(path))
    reloader = Reloader(holder, str(path), interval=INTERVAL, debounce=DEBOUNCE)
    reloader.start()
    try:
        yield holder, reloader
    finally:
        await reloader.stop()


def decide_now(holder: SnapshotHolder, token: str, **request: Any) -> Decision:
    return evaluate(holder, check_request(token=token, **request), lambda: NOW)[0]


def assert_old_policy(holder: SnapshotHolder, token: str) -> None:
    decision = decide_now(holder, token)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "read-orders"), decision


def assert_new_policy(holder: SnapshotHolder, token: str) -> None:
    decision = decide_now(holder, token)
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "scope_missing"), decision


def jwks_with(path: Path, add: Any = (), drop: tuple[str, ...] = ()) -> bytes:
    """The JWK Set file at ``path`` with keys (JSON objects) added and kids dropped."""
    keys = [k for k in json.loads(path.read_bytes())["keys"] if k["kid"] not in drop]
    return (json.dumps({"keys": [*keys, *add]}, indent=2) + "\n").encode()


def private_jwk(key: Any) -> dict[str, Any]:
    return json.loads(key.export(private_key=True))


def public_jwk(key: Any) -> dict[str, Any]:
    return json.loads(key.export_public())


@pytest.fixture
def token(world: World) -> str:
    """acme, scope orders:read, RSA-OAEP-256 + ES256: allowed by read-orders at NOW."""
    return world.token()


# ------------------------------------------------------------------ policy changes


async def test_policy_change_applies_to_next_check(world: World, tmp_path: Path, token: str) -> None:
    """A rewritten policy is live after the reload window, with a new generation and digest."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        before = reloader.status
        assert before.generation == 1
        assert before.last_error is None
        assert_old_policy(holder, token)
        write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)
        after = reloader.status
        assert after.digest == load_config(path).digest != before.digest
        assert after.results.get("success") == 1
        assert after.results.get("failure", 0) == 0
        assert after.loaded_at >= before.loaded_at
        assert after.last_error is None


async def test_in_flight_check_finishes_on_its_snapshot(world: World, tmp_path: Path, token: str) -> None:
    """A check that read the old snapshot decides on it even when the swap lands mid-check."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        swapped = threading.Event()

        def clock() -> float:
            # evaluate() calls the clock after it read holder.current: reload under it now.
            write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
            deadline = time.monotonic() + TIMEOUT
            while holder.generation < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # in a worker thread: the event loop runs the reloader
            if holder.generation == 2:
                swapped.set()
            return NOW

        decision, _, _ = await asyncio.to_thread(evaluate, holder, check_request(token=token), clock)
        assert swapped.is_set(), "the reload did not happen while the check was in flight"
        assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "read-orders"), decision
        assert_new_policy(holder, token)
        assert reloader.status.generation == 2


async def test_in_flight_grpc_check_finishes_on_its_snapshot(
    world: World, tmp_path: Path, token: str
) -> None:
    """The gRPC servicer reads the snapshot once: a swap in the middle of a check does not split it."""
    path = copy_world(world, tmp_path)
    holder = SnapshotHolder(load_config(path))
    write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
    new = load_config(path)

    def clock() -> float:
        if holder.current is not new:
            holder.swap(new)  # what the reloader does, at the worst moment
        return NOW

    service = AuthorizationService(holder, clock)
    data = check_request(token=token).SerializeToString()
    first = await service.check(data, None)
    assert first.status.code == 0, first
    assert holder.generation == 2
    second = await service.check(data, None)
    assert json.loads(second.denied_response.body)["reason"] == "scope_missing"


async def test_change_between_load_and_watch_start_is_picked_up(
    world: World, tmp_path: Path, token: str
) -> None:
    """A change after the config was loaded but before the Reloader existed is not missed."""
    # serve() loads the config, awaits the first jwks_uri fetch (up to seconds), then
    # creates the Reloader: an edit in that window must still be picked up.
    path = copy_world(world, tmp_path)
    holder = SnapshotHolder(load_config(path))
    write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
    reloader = Reloader(holder, str(path), interval=INTERVAL, debounce=DEBOUNCE)
    reloader.start()
    try:
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)
    finally:
        await reloader.stop()


async def test_status_counts_every_result_from_the_start(world: World, tmp_path: Path) -> None:
    """The results counter has success, failure and unchanged (zero) before any reload."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (_holder, reloader):
        assert reloader.status.results == {"success": 0, "failure": 0, "unchanged": 0}


async def test_a_part_that_needs_a_restart_is_reported_and_the_rest_applies(
    world: World, tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot the restart_required hook objects to is swapped in (the policy applies), the log
    says "restart required: ...", the status and its gauge carry it until a config without it."""
    from authz.app.reload import Deferred
    from authz.app.serve import config_metrics

    path = copy_world(world, tmp_path)
    holder = SnapshotHolder(load_config(path))

    def hook(config: Config) -> tuple[Deferred, ...]:  # a stand-in: the write scope "needs a restart"
        wants = "orders:write" in config.snapshot.tenants.by_name["acme"].rules[1].scopes
        return (
            (Deferred("tls.client_ca", "added", "TLS, client certificates not requested"),) if wants else ()
        )

    reloader = Reloader(holder, str(path), restart_required=hook)
    gauge = config_metrics(holder, JwksRegistry(), lambda: reloader.status)

    def pending() -> dict[str, float]:
        (family,) = [f for f in gauge.collect() if f.name == "authz_config_restart_required"]
        return {sample.labels["setting"]: sample.value for sample in family.samples}

    assert reloader.status.restart_required == ()
    assert pending() == {"tls": 0.0, "tls.client_ca": 0.0, "store": 0.0}
    write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
    with caplog.at_level(logging.INFO, logger="authz.reload"):
        assert await reloader.reload()
    assert_new_policy(holder, token)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("restart required")]
    assert (line.levelname, line.getMessage()) == ("ERROR", "restart required: tls.client_ca added")
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["in_effect"] == "TLS, client certificates not requested"
    assert fields["applied"] == "the rest of the configuration"
    reloaded = next(r for r in caplog.records if r.getMessage() == "config reloaded")
    assert reloaded.fields["restart_required"] == ["tls.client_ca added"]  # type: ignore[attr-defined]
    assert [d.setting for d in reloader.status.restart_required] == ["tls.client_ca"]
    assert pending() == {"tls": 0.0, "tls.client_ca": 1.0, "store": 0.0}
    write_in_place(path, config_text(tmp_path / "keys"))
    assert await reloader.reload()
    assert reloader.status.restart_required == ()
    assert pending() == {"tls": 0.0, "tls.client_ca": 0.0, "store": 0.0}


# ------------------------------------------------------------------ ways of writing a file


async def test_kubernetes_configmap_swap_of_config(world: World, tmp_path: Path, token: str) -> None:
    """The kubelet's ..data symlink swap of a ConfigMap-mounted config is picked up, twice."""
    keys = tmp_path / "keys"
    shutil.copytree(world.root / "keys", keys)
    volume = AtomicDir(tmp_path / "configmap", {"config.yaml": config_text(keys)})
    path = volume.path("config.yaml")
    async with watching(path) as (holder, reloader):
        assert reloader.status.generation == 1
        assert_old_policy(holder, token)
        volume.write({"config.yaml": config_text(keys, scope="orders:write")})
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)
        volume.write({"config.yaml": config_text(keys)})
        await wait_generation(reloader, 3)
        assert_old_policy(holder, token)
        assert holder.current is not None
        assert holder.current.source == str(path)  # the path as written, never the ..2026_ target
        assert sorted(p.name for p in volume.root.iterdir() if p.name.startswith("..2026")) == [
            "..2026_11_29_18_00_00.000000003"
        ]


async def test_kubernetes_secret_swap_of_key_file(world: World, tmp_path: Path, token: str) -> None:
    """A key file in a Secret volume (referenced by its visible path) follows the ..data swap."""
    keys = tmp_path / "keys"
    shutil.copytree(world.root / "keys", keys)
    original = (keys / "decrypt.jwks.json").read_bytes()
    secret = AtomicDir(tmp_path / "secret", {"decrypt.jwks.json": original})
    decrypt = secret.path("decrypt.jwks.json")
    path = tmp_path / "config.yaml"
    path.write_text(config_text(keys, decrypt=decrypt), encoding="utf-8")
    new_key = generate_key("ECDH-ES", "enc-k8s-new")
    new_token = mint(world.claims(), encryption_key=new_key, signing_key=world.signing_keys["acme-es256"])
    async with watching(path) as (holder, reloader):
        assert holder.current is not None
        assert str(decrypt) in holder.current.files
        assert decide_now(holder, new_token).reason == "decryption_key_unknown"
        secret.write({"decrypt.jwks.json": jwks_with(decrypt, add=[private_jwk(new_key)])})
        await wait_generation(reloader, 2)
        assert decide_now(holder, new_token).verdict is Verdict.ALLOW
        assert_old_policy(holder, token)
        secret.write({"decrypt.jwks.json": original})
        await wait_generation(reloader, 3)
        assert decide_now(holder, new_token).reason == "decryption_key_unknown"


@pytest.mark.parametrize("write", [rename_over, write_in_place], ids=["rename-over", "in-place"])
async def test_write_styles(world: World, tmp_path: Path, token: str, write: Any) -> None:
    """Rename-over and in-place rewrite of the config are both picked up."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        write(path, config_text(tmp_path / "keys", scope="orders:write"))
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)


async def test_delete_then_create(world: World, tmp_path: Path, token: str) -> None:
    """The config deleted and created again (a new inode) is picked up."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        path.unlink()
        path.write_text(config_text(tmp_path / "keys", scope="orders:write"), encoding="utf-8")
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)


async def test_truncate_then_write(world: World, tmp_path: Path, token: str) -> None:
    """An empty file (truncate, pause) fails and keeps the last good; the full write then loads."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        with path.open("w"):
            pass  # truncated; the content follows later than the debounce
        await wait_result(reloader, "failure", 1)
        assert reloader.status.generation == 1
        assert "the file is empty" in (reloader.status.last_error or "")
        assert_old_policy(holder, token)
        await asyncio.sleep(DEBOUNCE * 2)  # still empty for a while: nothing more happens
        assert reloader.status.results["failure"] == 1
        write_in_place(path, config_text(tmp_path / "keys", scope="orders:write"))
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)
        assert reloader.status.last_error is None


async def test_burst_of_writes_ends_on_the_last_content(world: World, tmp_path: Path, token: str) -> None:
    """Many quick writes (closer than the debounce) end with the last content live."""
    path = copy_world(world, tmp_path)
    async with watching(path) as (holder, reloader):
        for i in range(6):
            scope = "orders:write" if i % 2 == 0 else "orders:read"
            # Renamed over: a reload that starts mid-burst never reads a half-written file.
            rename_over(path, config_text(tmp_path / "keys", scope=scope) + f"# {i}\n")
            await asyncio.sleep(DEBOUNCE / 5)
        final = load_config(path).digest
        await wait_until(lambda: reloader.status.digest == final, "the last write to be live")
        assert_old_policy(holder, token)  # the last write (i == 5) asked for orders:read
        status = reloader.status
        assert status.results["success"] == status.generation - 1
        assert status.results["failure"] == 0


# ------------------------------------------------------------------ identical content


@pytest.mark.parametrize("how", ["touch", "same-bytes", "rename-same", "configmap-same"])
async def test_identical_content_is_no_new_generation(world: World, tmp_path: Path, how: str) -> None:
    """Touching or rewriting the same bytes reloads as "unchanged": no new generation."""
    keys = tmp_path / "keys"
    shutil.copytree(world.root / "keys", keys)
    text = config_text(keys)
    volume = AtomicDir(tmp_path / "configmap", {"config.yaml": text})
    path = tmp_path / "config.yaml"
    if how == "configmap-same":
        path = volume.path("config.yaml")
    else:
        path.write_text(text, encoding="utf-8")
    async with watching(path) as (holder, reloader):
        digest = reloader.status.digest
        if how == "touch":
            os.utime(keys / "acme-idp.jwks.json", ns=(time.time_ns(), time.time_ns() + 10**9))
        elif how == "same-bytes":
            write_in_place(path, text)
        elif how == "rename-same":
            rename_over(keys / "decrypt.jwks.json", (keys / "decrypt.jwks.json").read_bytes())
        else:
            volume.write({"config.yaml": text})
        await wait_result(reloader, "unchanged", 1)
        status = reloader.status
        assert (status.generation, status.digest) == (1, digest)
        assert status.results == {"success": 0, "failure": 0, "unchanged": 1}
        assert holder.generation == 1


# ------------------------------------------------------------------ failures keep the last good


def _break_yaml(root: Path) -> tuple[Path, int | None]:
    text = config_text(root / "keys").replace("mode: enforce", "mode: @enforce", 1)
    write_in_place(root / "config.yaml", text)
    return root / "config.yaml", text.splitlines().index("    mode: @enforce") + 1


def _unknown_key(root: Path) -> tuple[Path, int | None]:
    text = config_text(root / "keys").replace(
        "  strip_authorization: true\n", "  strip_authorization: true\n  strip_cookies: true\n"
    )
    write_in_place(root / "config.yaml", text)
    return root / "config.yaml", text.splitlines().index("  strip_cookies: true") + 1


def _key_file_not_json(root: Path) -> tuple[Path, int | None]:
    path = root / "keys" / "acme-idp.jwks.json"
    write_in_place(path, '{"keys": [\n')
    return path, None


def _key_without_alg(root: Path) -> tuple[Path, int | None]:
    path = root / "keys" / "decrypt.jwks.json"
    data = json.loads(path.read_bytes())
    del data["keys"][0]["alg"]
    rename_over(path, json.dumps(data))
    return path, None


def _config_deleted(root: Path) -> tuple[Path, int | None]:
    (root / "config.yaml").unlink()
    return root / "config.yaml", None


def _key_file_deleted(root: Path) -> tuple[Path, int | None]:
    path = root / "keys" / "globex-idp.jwks.json"
    path.unlink()
    return path, None


BREAKAGES = {
    "broken-yaml": _break_yaml,
    "unknown-key": _unknown_key,
    "key-file-not-json": _key_file_not_json,
    "key-without-alg": _key_without_alg,
    "config-deleted": _config_deleted,
    "key-file-deleted": _key_file_deleted,
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
async def test_failure_keeps_last_good_and_fix_is_picked_up(
    world: World, tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture, breakage: Any
) -> None:
    """A bad file: old snapshot serves, error (file, line) in status and log; a fix then loads."""
    caplog.set_level(logging.INFO, logger="authz.reload")
    path = copy_world(world, tmp_path)
    originals = {p: p.read_bytes() for p in (tmp_path / "keys").iterdir()}
    async with watching(path) as (holder, reloader):
        snapshot = holder.current
        broken, line = breakage(tmp_path)
        await wait_result(reloader, "failure", 1)
        status = reloader.status
        assert holder.current is snapshot
        assert status.generation == 1
        assert status.results == {"success": 0, "failure": 1, "unchanged": 0}
        error = status.last_error or ""
        assert error.startswith(str(broken)), error
        if line is not None:
            assert error.startswith(f"{broken}:{line}: "), error
        assert_old_policy(holder, token)
        failures = [r for r in caplog.records if r.getMessage() == FAILED]
        assert len(failures) == 1
        assert failures[0].levelno == logging.ERROR
        entry = json.loads(JsonFormatter().format(failures[0]))
        assert entry["error"] == error
        assert entry["generation"] == 1
        assert entry["config_sha256"] == status.digest
        assert str(broken) in JsonFormatter().format(failures[0])

        # The fix: every key file as it was, and a changed policy.
        for key_path, data in originals.items():
            if not key_path.exists() or key_path.read_bytes() != data:
                rename_over(key_path, data)
        rename_over(path, config_text(tmp_path / "keys", scope="orders:write"))
        await wait_generation(reloader, 2)
        assert_new_policy(holder, token)
        assert reloader.status.last_error is None
        assert any(r.getMessage() == "config reloaded" for r in caplog.records)


async def test_revert_to_serving_content_clears_the_error(world: World, tmp_path: Path, token: str) -> None:
    """Broken, then put back byte for byte: "unchanged", and last_error no longer reported."""
    path = copy_world(world, tmp_path)
    original = path.read_bytes()
    async with watching(path) as (holder, reloader):
        write_in_place(path, b"tenants: [\n")
        await wait_result(reloader, "failure", 1)
        assert reloader.status.last_error is not None
        write_in_place(path, original)
        await wait_result(reloader, "unchanged", 1)
        status = reloader.status
        assert status.generation == 1
        assert status.last_error is None
        assert_old_policy(holder, token)


def _missing(path: Path, key: Any) -> None:
    pass


def _not_json(path: Path, key: Any) -> None:
    path.write_text("{", encoding="utf-8")


def _no_alg(path: Path, key: Any) -> None:
    jwk = private_jwk(key)
    del jwk["alg"]
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")


@pytest.mark.parametrize("bad", [_missing, _not_json, _no_alg], ids=["missing", "not-json", "no-alg"])
async def test_newly_referenced_key_file_fixed_later(
    world: World, tmp_path: Path, token: str, bad: Any
) -> None:
    """The config names a new key file that is missing or bad; fixing that file is picked up."""
    path = copy_world(world, tmp_path)
    keys = tmp_path / "keys"
    extra = keys / "extra.jwks.json"
    new_key = generate_key("ECDH-ES", "enc-extra")
    new_token = mint(world.claims(), encryption_key=new_key, signing_key=world.signing_keys["acme-es256"])
    async with watching(path) as (holder, reloader):
        bad(extra, new_key)
        text = config_text(keys).replace(
            f"keys: [{keys}/decrypt.jwks.json]", f"keys: [{keys}/decrypt.jwks.json, {extra}]"
        )
        assert text != config_text(keys)
        write_in_place(path, text)
        await wait_result(reloader, "failure", 1)
        assert (reloader.status.last_error or "").startswith(str(extra))
        assert decide_now(holder, new_token).reason == "decryption_key_unknown"
        assert_old_policy(holder, token)
        # Only the key file changes now: the config stays as it is.
        rename_over(extra, json.dumps({"keys": [private_jwk(new_key)]}))
        await wait_generation(reloader, 2)
        assert decide_now(holder, new_token).verdict is Verdict.ALLOW
        assert reloader.status.last_error is None
        assert holder.current is not None
        assert str(extra) in holder.current.files
        # Now part of the snapshot, the new file is watched like the others.
        rename_over(extra, jwks_with(extra, add=[private_jwk(generate_key("A256KW", "enc-extra-2"))]))
        await wait_generation(reloader, 3)
        assert holder.current.snapshot.token_keys.decryption.by_kid.keys() >= {"enc-extra", "enc-extra-2"}


# ------------------------------------------------------------------ key rotation under load


class Load:
    """Checks in a loop from worker threads, with the token the issuer currently issues."""

    def __init__(self, holder: SnapshotHolder, token: str, threads: int = 2) -> None:
        self.holder = holder
        self.issuing: tuple[int, str] = (0, token)  # (epoch, token): replaced in one assignment
        self.done = [-1] * threads  # per thread: epoch of the last check it finished
        self.counts = [0] * threads  # per thread: checks done
        self.wrong: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.deadline = time.monotonic() + 30
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        for _ in range(200_000):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            epoch, token = self.issuing
            decision = evaluate(self.holder, check_request(token=token), lambda: NOW)[0]
            if decision.verdict is not Verdict.ALLOW:
                self.wrong.append((epoch, decision.reason))
            self.counts[index] += 1
            self.done[index] = epoch

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._threads)

    async def issue(self, token: str) -> None:
        """Start issuing ``token``; return once no check still uses an older one."""
        epoch = self.issuing[0] + 1
        self.issuing = (epoch, token)
        await wait_until(lambda: min(self.done) >= epoch, f"every load thread on epoch {epoch}")


async def test_key_rotation_under_load(world: World, tmp_path: Path) -> None:
    """Decryption and signing keys rotated (add, issue, remove) under load: zero wrong decisions."""
    path = copy_world(world, tmp_path)
    decrypt = tmp_path / "keys" / "decrypt.jwks.json"
    acme = tmp_path / "keys" / "acme-idp.jwks.json"
    old_enc, old_sig = world.decryption_keys["enc-ecdh-es"], world.signing_keys["acme-es256"]
    new_enc, new_sig = generate_key("ECDH-ES", "enc-ecdh-es-2"), generate_key("ES256", "acme-es256-2")

    def token(enc: Any, sig: Any) -> str:
        return mint(world.claims(), encryption_key=enc, signing_key=sig)

    async with watching(path) as (holder, reloader):
        with Load(holder, token(old_enc, old_sig)) as load:
            await load.issue(token(old_enc, old_sig))
            # Decryption key: add, wait for the reload, issue with it, remove the old one.
            rename_over(decrypt, jwks_with(decrypt, add=[private_jwk(new_enc)]))
            await wait_generation(reloader, 2)
            await load.issue(token(new_enc, old_sig))
            rename_over(decrypt, jwks_with(decrypt, drop=("enc-ecdh-es",)))
            await wait_generation(reloader, 3)
            assert decide_now(holder, token(old_enc, old_sig)).reason == "decryption_key_unknown"
            # Signing key of the issuer: the same protocol.
            rename_over(acme, jwks_with(acme, add=[public_jwk(new_sig)]))
            await wait_generation(reloader, 4)
            await load.issue(token(new_enc, new_sig))
            rename_over(acme, jwks_with(acme, drop=("acme-es256",)))
            await wait_generation(reloader, 5)
            assert decide_now(holder, token(new_enc, old_sig)).reason == "signing_key_unknown"
            await load.issue(token(new_enc, new_sig))
        assert load.wrong == []
        assert sum(load.counts) >= 20, load.counts
        assert reloader.status.results["failure"] == 0
