"""The verified-token cache: what it holds, when it stops serving, what runs on every hit."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from authz.config import Config, load_config
from authz.core.cache import TokenCache
from authz.core.decision import Decision, Verdict, decide
from authz.grpc.messages import from_check_request
from authz.jose.keys import IssuerKeys, KeySet, Purpose, keyset_from_jwks
from authz.jose.mint import generate_key, public_jwks
from authz.jose.nested import TokenKeys, VerifiedToken, validate_token
from testkit.world import CONFIG, NOW, World, check_request


def _decide(config: Config, token: str, *, path: str = "/orders", now: float = NOW) -> Decision:
    return decide(config.snapshot, from_check_request(check_request(path=path, token=token)), now)


@pytest.fixture
def fresh(world: World) -> Config:
    """A snapshot of its own: an empty cache per test."""
    return world.config()


def test_second_check_of_a_token_is_a_hit(world: World, fresh: Config) -> None:
    """The first check verifies and caches; the second is served from the cache."""
    token = world.token()
    first, second = _decide(fresh, token), _decide(fresh, token)
    assert (first.reason, first.cache_hit) == ("ok", False)
    assert (second.reason, second.cache_hit) == ("ok", True)
    assert (fresh.snapshot.cache.hits, fresh.snapshot.cache.misses, len(fresh.snapshot.cache)) == (1, 1, 1)


def test_time_checks_run_on_every_hit(world: World, fresh: Config) -> None:
    """A cached token past exp (plus skew) is expired, not served."""
    token = world.token(world.claims(exp=NOW + 60))
    assert _decide(fresh, token).reason == "ok"
    assert _decide(fresh, token, now=NOW + 30).cache_hit
    late = _decide(fresh, token, now=NOW + 60 + 31)
    assert (late.verdict, late.reason) == (Verdict.DENY, "token_expired")


def test_policy_runs_on_every_hit(world: World, fresh: Config) -> None:
    """The same cached token is allowed on one path and forbidden on another."""
    token = world.token()
    assert _decide(fresh, token).reason == "ok"
    admin = _decide(fresh, token, path="/admin/users")
    assert (admin.cache_hit, admin.reason) == (True, "role_missing")


def test_failures_are_never_cached(world: World, fresh: Config) -> None:
    """An invalid token, or a valid one whose claims fail, leaves the cache empty."""
    good = world.token()
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    expired = world.token(world.claims(exp=NOW - 100, iat=NOW - 200, nbf=NOW - 200))
    for token in (tampered, tampered, expired, expired):
        assert _decide(fresh, token).verdict is Verdict.DENY
    assert len(fresh.snapshot.cache) == 0


def test_a_reload_starts_with_an_empty_cache(world: World, tmp_path: Path) -> None:
    """A new snapshot does not serve the old one's entries: removing a key is effective at the swap."""
    root = tmp_path / "w"
    shutil.copytree(world.root, root)
    before = load_config(root / "config.yaml")
    token = world.token(outer="A256KW")
    assert _decide(before, token).reason == "ok"
    assert _decide(before, token).cache_hit
    # The operator removes the A256KW key and reloads.
    jwks = root / "keys" / "decrypt.jwks.json"
    data = json.loads(jwks.read_text())
    data["keys"] = [k for k in data["keys"] if k["kid"] != "enc-a256kw"]
    jwks.write_text(json.dumps(data))
    (root / "config.yaml").write_text(
        CONFIG.replace("encrypt_only_keys: [enc-a256kw, enc-dir]", "encrypt_only_keys: [enc-dir]")
    )
    after = load_config(root / "config.yaml")
    assert len(after.snapshot.cache) == 0
    assert _decide(after, token).reason == "decryption_key_unknown"


@dataclass
class _Remote:
    """A stand-in for a jwks_uri source: only its current key set matters to the cache."""

    keyset: KeySet | None

    async def refetch_for_unknown_kid(self, wait: float) -> bool:
        return False


def _remote_acme(config: Config) -> tuple[TokenKeys, _Remote, KeySet]:
    """Token keys where acme's signing keys come from a (stand-in) jwks_uri, with acme's file keys."""
    acme = config.snapshot.token_keys.issuers["https://idp.acme.test"]
    assert isinstance(acme, IssuerKeys)
    remote = _Remote(acme.static)
    keys = TokenKeys(
        decryption=config.snapshot.token_keys.decryption,
        content_encryption=config.snapshot.token_keys.content_encryption,
        issuers={
            **config.snapshot.token_keys.issuers,
            "https://idp.acme.test": IssuerKeys(KeySet.of(()), remote),
        },
        max_bytes=config.snapshot.token_keys.max_bytes,
        allowed_typ=config.snapshot.token_keys.allowed_typ,
    )
    return keys, remote, acme.static


def _cached(
    world: World, keys: TokenKeys, cache: TokenCache, inner: str = "ES256"
) -> tuple[bytes, VerifiedToken]:
    token = world.token(inner=inner)
    verified = validate_token(token, keys)
    key = cache.key(token)
    cache.put(key, verified, keys, NOW + 300)
    assert cache.get(key, keys, NOW) is verified
    return key, verified


def test_a_refresh_keeps_entries_whose_key_is_still_served(world: World, config: Config) -> None:
    """A new key set object that still serves the verifying Key (a key added beside it): still a hit."""
    keys, remote, acme = _remote_acme(config)
    cache = TokenCache(10)
    key, verified = _cached(world, keys, cache)
    added = keyset_from_jwks(public_jwks([generate_key("ES256", "added")]), Purpose.VERIFY, "test")
    remote.keyset = KeySet.of([*acme.by_kid.values(), *added.by_kid.values()])
    assert cache.get(key, keys, NOW) is verified
    assert cache.holds(key, verified, keys, NOW)
    assert (cache.hits, cache.misses, len(cache)) == (3, 0, 1)


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_refresh_retires_entries_of_a_removed_or_replaced_key(world: World, config: Config, change) -> None:
    """The verifying kid gone, or served as another Key (here: equal fields, a new object): the
    entries that key verified are not served; an entry of another key is."""
    keys, remote, acme = _remote_acme(config)
    cache = TokenCache(10)
    es_key, es_verified = _cached(world, keys, cache, "ES256")
    rs_key, rs_verified = _cached(world, keys, cache, "RS256")
    kid = es_verified.signing_kid
    assert kid is not None
    others = [k for k in acme.by_kid.values() if k.kid != kid]
    remote.keyset = KeySet.of(others if change == "removed" else [*others, replace(acme.by_kid[kid])])
    assert not cache.holds(es_key, es_verified, keys, NOW)
    assert cache.get(es_key, keys, NOW) is None
    assert cache.get(rs_key, keys, NOW) is rs_verified
    assert len(cache) == 1


def test_a_key_replaced_between_verification_and_put_is_not_cached(world: World, config: Config) -> None:
    """A fetch that replaces the verifying key while the token is being checked: the result is not kept."""
    keys, remote, acme = _remote_acme(config)
    cache = TokenCache(10)
    token = world.token()
    verified = validate_token(token, keys)
    kid = verified.signing_kid
    remote.keyset = KeySet.of([replace(k) if k.kid == kid else k for k in acme.by_kid.values()])
    cache.put(cache.key(token), verified, keys, NOW + 300)
    assert len(cache) == 0


def test_encrypt_only_entries_rest_on_no_issuer_key(world: World, config: Config) -> None:
    """An encrypt-only token (our symmetric key, no inner JWS) stays cached whatever its issuer's JWKS does."""
    keys, remote, _ = _remote_acme(config)
    cache = TokenCache(10)
    token = world.token(world.claims(tenant="legacy"), outer="A256KW", inner=None)
    verified = validate_token(token, keys)
    assert verified.signing_key is None
    cache.put(cache.key(token), verified, keys, NOW + 300)
    remote.keyset = KeySet.of(())
    assert cache.get(cache.key(token), keys, NOW) is verified


def test_entries_stop_at_exp(world: World, config: Config) -> None:
    """An entry is dropped once its exp has passed, whatever the claims step would say."""
    cache = TokenCache(10)
    token = world.token()
    verified = validate_token(token, config.snapshot.token_keys)
    key = cache.key(token)
    cache.put(key, verified, config.snapshot.token_keys, NOW + 10)
    assert cache.get(key, config.snapshot.token_keys, NOW + 9.9) is verified
    assert cache.get(key, config.snapshot.token_keys, NOW + 10) is None


def test_the_cache_is_bounded_lru(world: World, config: Config) -> None:
    """Past its bound the least recently used entry goes first."""
    cache = TokenCache(2)
    tokens = [world.token(world.claims(sub=f"user-{i}")) for i in range(3)]
    verified = [validate_token(t, config.snapshot.token_keys) for t in tokens]
    keys = [cache.key(t) for t in tokens]
    cache.put(keys[0], verified[0], config.snapshot.token_keys, NOW + 300)
    cache.put(keys[1], verified[1], config.snapshot.token_keys, NOW + 300)
    assert cache.get(keys[0], config.snapshot.token_keys, NOW) is verified[0]  # 0 is now the most recent
    cache.put(keys[2], verified[2], config.snapshot.token_keys, NOW + 300)
    assert len(cache) == 2
    assert cache.get(keys[1], config.snapshot.token_keys, NOW) is None
    assert cache.get(keys[0], config.snapshot.token_keys, NOW) is verified[0]


def test_cache_size_zero_disables_it(world: World, tmp_path: Path) -> None:
    """token.cache_size: 0 caches nothing."""
    root = tmp_path / "w"
    shutil.copytree(world.root, root)
    (root / "config.yaml").write_text(
        CONFIG.replace("  max_bytes: 8192\n", "  max_bytes: 8192\n  cache_size: 0\n")
    )
    config = load_config(root / "config.yaml")
    token = world.token()
    assert [_decide(config, token).cache_hit for _ in range(2)] == [False, False]
    assert len(config.snapshot.cache) == 0


async def test_a_hit_is_visible_in_the_span_and_skips_the_crypto_steps(world: World, fresh: Config) -> None:
    """On a hit the Check span says authz.cache_hit=true and has no decrypt/verify children."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from authz.config import SnapshotHolder
    from authz.grpc.servicer import AuthorizationService
    from authz.telemetry.recorder import Telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = AuthorizationService(SnapshotHolder(fresh), lambda: float(NOW), Telemetry(provider))
    data = check_request(token=world.token()).SerializeToString()
    for _ in range(2):
        assert (await service.check(data, None)).status.code == 0
    spans = exporter.get_finished_spans()
    checks = [s for s in spans if s.name.endswith("/Check")]
    assert [dict(s.attributes or {})["authz.cache_hit"] for s in checks] == [False, True]
    second = checks[1].context.span_id
    children = [s.name for s in spans if s.parent is not None and s.parent.span_id == second]
    assert children == ["policy"]
    provider.shutdown()
