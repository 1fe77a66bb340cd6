"""Revocation: the entries, the mirror's checks and freshness, and the decision and memo honouring them."""

from __future__ import annotations

import math
import time

import pytest

from authz.app.revocation import attach
from authz.config import Config
from authz.config.holder import SnapshotHolder
from authz.core.decision import Decision, Verdict, decide
from authz.core.revocation import Entry, EntryKind, RevocationSet, jti_hash
from authz.errors import AuthzError
from authz.grpc.messages import from_check_request
from authz.http.door import HttpDoor
from authz.telemetry.decision_log import DEFAULT_SETTINGS, decision_fields
from authz.telemetry.recorder import Telemetry
from testkit.world import ACME_IDP, NOW, World, check_request

ISSUED = NOW - 10


def _decide(config: Config, token: str, *, host: str = "api.acme.test") -> Decision:
    return decide(config.snapshot, from_check_request(check_request(token=token, host=host)), NOW)


@pytest.fixture
def mirror() -> RevocationSet:
    return RevocationSet()


@pytest.fixture
def config(world: World, mirror: RevocationSet) -> Config:
    return attach(world.config(), mirror)


def _subject(before: float, *, subject: str = "user-1", issuer: str = ACME_IDP) -> Entry:
    return Entry(EntryKind.SUBJECT, subject, issuer, before, before + 3600)


def _client(before: float, client: str = "app-1") -> Entry:
    return Entry(EntryKind.CLIENT, client, ACME_IDP, before, before + 3600)


# -- entries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        Entry(EntryKind.JTI, jti_hash("t-1"), expires_at=NOW + 60),
        Entry(EntryKind.SUBJECT, "alice", ACME_IDP, NOW + 0.5, NOW + 3600),
        Entry(EntryKind.CLIENT, "app", ACME_IDP, NOW, NOW + 3600),
    ],
)
def test_an_entry_is_its_member_and_back(entry: Entry) -> None:
    assert Entry.from_member(entry.member(), entry.expires_at) == entry


@pytest.mark.parametrize(
    "member",
    [
        "",
        "[]",
        '["jti","","not-a-hash"]',
        '["jti","x","' + "0" * 32 + '"]',
        '["subject","","alice",1]',
        '["subject","iss","alice"]',
        '["subject","iss","alice",true]',
        '["client","iss","",1]',
        '["other","iss","a",1]',
        '{"kind":"jti"}',
    ],
)
def test_anything_else_is_not_an_entry(member: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every malformed member, one error type
        Entry.from_member(member, NOW)


# -- the checks ----------------------------------------------------------------------------------------


def test_a_jti_entry_revokes_that_token_only(world: World, config: Config, mirror: RevocationSet) -> None:
    """The token with the jti is revoked, from the verified-token cache too; another jti is not."""
    token, other = world.token(world.claims(jti="t-1")), world.token(world.claims(jti="t-2"))
    assert _decide(config, token).reason == "ok"  # verified and cached
    mirror.add(Entry(EntryKind.JTI, jti_hash("t-1"), expires_at=NOW + 300))
    denied = _decide(config, token)
    assert (denied.verdict, denied.reason, denied.cache_hit) == (Verdict.DENY, "token_revoked", True)
    assert (denied.revocation, denied.jti_hash) == ("jti", jti_hash("t-1")[:12])
    assert _decide(config, other).reason == "ok"


def test_the_decision_log_names_the_entry_kind_and_never_the_jti(
    world: World, config: Config, mirror: RevocationSet
) -> None:
    mirror.add(Entry(EntryKind.JTI, jti_hash("secret-jti-value"), expires_at=NOW + 300))
    decision = _decide(config, world.token(world.claims(jti="secret-jti-value")))
    fields = decision_fields(decision, None, DEFAULT_SETTINGS)
    assert (fields["reason"], fields["revocation"], fields["jti_hash"]) == (
        "token_revoked",
        "jti",
        jti_hash("secret-jti-value")[:12],
    )
    assert "secret-jti-value" not in repr(fields)


@pytest.mark.parametrize(
    ("claims", "revoked"),
    [
        ({"iat": ISSUED}, True),  # issued before the entry
        ({"iat": NOW - 5, "nbf": ISSUED}, False),  # iat decides, not nbf
        ({"iat": None, "nbf": ISSUED}, True),  # no iat: nbf
        ({"iat": None, "nbf": None, "exp": NOW + 60}, True),  # neither: cannot show it is newer
        ({"iat": NOW - 5}, False),  # issued at or after the entry's time
        ({"sub": "user-2"}, False),  # another subject
    ],
)
def test_a_subject_entry_revokes_that_subjects_tokens_issued_before_it(
    world: World, config: Config, mirror: RevocationSet, claims: dict[str, object], revoked: bool
) -> None:
    mirror.add(_subject(NOW - 5))
    decision = _decide(config, world.token(world.claims(**claims)))
    assert decision.reason == ("token_revoked" if revoked else "ok")
    if revoked:
        assert decision.revocation == "subject"


def test_a_subject_entry_is_per_issuer(world: World, config: Config, mirror: RevocationSet) -> None:
    mirror.add(_subject(NOW, issuer="https://idp.shared.test"))
    assert _decide(config, world.token(world.claims(iat=ISSUED))).reason == "ok"


@pytest.mark.parametrize("claim", ["azp", "client_id"])
def test_a_client_entry_revokes_by_azp_or_client_id(
    world: World, config: Config, mirror: RevocationSet, claim: str
) -> None:
    mirror.add(_client(NOW + 1))
    denied = _decide(config, world.token(world.claims(**{claim: "app-1"})))
    assert (denied.reason, denied.revocation) == ("token_revoked", "client")
    assert _decide(config, world.token(world.claims(**{claim: "app-2"}))).reason == "ok"


def test_a_revoked_token_in_a_dry_run_tenant_is_recorded_not_refused(
    world: World, config: Config, mirror: RevocationSet
) -> None:
    mirror.add(_subject(NOW + 1))
    decision = _decide(config, world.token(world.claims(tenant="dry")), host="api.dry.test")
    assert (decision.verdict, decision.reason) == (Verdict.DRY_RUN_DENY, "token_revoked")


def test_later_entries_of_one_subject_widen_and_removing_one_narrows(
    mirror: RevocationSet, world: World, config: Config
) -> None:
    early, late = _subject(NOW - 100), _subject(NOW)
    mirror.add(early)
    token = world.token(world.claims(iat=NOW - 50))
    assert _decide(config, token).reason == "ok"
    mirror.add(late)
    assert _decide(config, token).reason == "token_revoked"
    assert mirror.remove(late.member())
    assert _decide(config, token).reason == "ok"
    assert mirror.remove(early.member())
    assert not mirror.remove(early.member())
    assert len(mirror) == 0


def test_every_change_moves_the_generation(mirror: RevocationSet) -> None:
    entry = _subject(NOW)
    seen = [mirror.generation]
    mirror.add(entry)
    seen.append(mirror.generation)
    assert not mirror.add(entry)  # the same entry again changes nothing
    assert mirror.generation == seen[-1]
    mirror.replace([entry])
    seen.append(mirror.generation)
    mirror.purge(entry.expires_at)
    seen.append(mirror.generation)
    assert len(set(seen)) == len(seen)
    assert len(mirror) == 0


def test_purge_drops_only_what_expired(mirror: RevocationSet) -> None:
    mirror.replace([Entry(EntryKind.JTI, jti_hash("a"), expires_at=NOW), _subject(NOW)])
    assert mirror.purge(NOW) == 1
    assert [e.kind for e in mirror.entries()] == [EntryKind.SUBJECT]


# -- freshness ----------------------------------------------------------------------------------------


def test_a_store_fed_mirror_is_stale_until_confirmed_and_after_max_staleness(
    world: World, config: Config, mirror: RevocationSet
) -> None:
    token = world.token()
    mirror.set_staleness(30.0, serve_stale=False)
    assert mirror.stale
    assert _decide(config, token).reason == "revocation_state_stale"
    mirror.confirm()
    assert _decide(config, token).reason == "ok"
    mirror.confirm(at=time.monotonic() - 31)  # last confirmed 31 s ago
    assert (_decide(config, token).reason, mirror.age() > 30) == ("revocation_state_stale", True)
    mirror.set_staleness(30.0, serve_stale=True)
    assert _decide(config, token).reason == "ok"
    assert mirror.stale_checks == 1


def test_a_file_fed_mirror_is_never_stale(mirror: RevocationSet) -> None:
    mirror.set_staleness(30.0, serve_stale=False)
    mirror.set_staleness(None, serve_stale=False)
    assert not mirror.stale
    assert mirror.age() == 0.0
    assert mirror.holds(mirror.generation)


def test_public_rules_do_not_read_the_mirror(config: Config, mirror: RevocationSet) -> None:
    mirror.set_staleness(30.0, serve_stale=False)
    decision = decide(config.snapshot, from_check_request(check_request(path="/healthz")), NOW)
    assert decision.reason == "ok"


def test_the_stale_check_raises_the_deny_reason(mirror: RevocationSet, world: World) -> None:
    mirror.set_staleness(1.0, serve_stale=False)
    with pytest.raises(AuthzError) as raised:
        mirror.check(world.config().snapshot.claim_rules and _claims(world))
    assert raised.value.code == "revocation_state_stale"


def _claims(world: World):
    from authz.core.claims import validate_claims

    return validate_claims(world.claims(), world.config().snapshot.claim_rules, NOW)


# -- the memo ------------------------------------------------------------------------------------------


def test_the_memo_repeats_an_allow_only_while_the_revocations_are_unchanged(
    world: World, config: Config, mirror: RevocationSet
) -> None:
    """A revocation (or any change of the entries) takes effect from the next request on,
    memo or not; an unrelated change costs one full check, then repeats resume."""
    telemetry = Telemetry()
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), telemetry, config.http)
    token = world.token(world.claims(jti="t-1"))
    headers = [(b"host", b"api.acme.test"), (b"authorization", f"Bearer {token}".encode())]

    def ask() -> int:
        answer = door.answer_raw(b"GET", b"/orders", headers)
        assert isinstance(answer, bytes)
        return int(answer.split(b" ", 2)[1])

    assert (ask(), ask(), door.memo_hits) == (200, 200, 1)
    mirror.add(Entry(EntryKind.JTI, jti_hash("unrelated"), expires_at=NOW + 60))
    assert (ask(), door.memo_hits) == (200, 1)  # decided afresh once
    assert (ask(), door.memo_hits) == (200, 2)  # and repeated again
    mirror.add(Entry(EntryKind.JTI, jti_hash("t-1"), expires_at=NOW + 60))
    assert (ask(), ask(), door.memo_hits) == (401, 401, 2)
    mirror.set_staleness(30.0, serve_stale=False)  # a store-fed mirror not yet confirmed
    mirror.replace([])
    assert ask() == 503


def test_an_empty_mirror_has_no_lookups_to_do(mirror: RevocationSet, world: World) -> None:
    assert mirror.check(_claims(world)) is None
    assert math.isinf(mirror._fresh_until)


def test_a_memo_repeat_on_a_stale_mirror_served_anyway_is_counted(
    world: World, config: Config, mirror: RevocationSet
) -> None:
    """on_stale: serve counts every check served stale (authz_revocation_stale_checks_total, what
    operators alert on): a repeat answered from the memo is one too (review of issue 16, A)."""
    door = HttpDoor(SnapshotHolder(config), lambda: float(NOW), Telemetry(), config.http)
    headers = [
        (b"host", b"api.acme.test"),
        (b"authorization", f"Bearer {world.token(world.claims())}".encode()),
    ]

    def ask() -> int:
        answer = door.answer_raw(b"GET", b"/orders", headers)
        assert isinstance(answer, bytes)
        return int(answer.split(b" ", 2)[1])

    mirror.set_staleness(30.0, serve_stale=True)
    mirror.confirm()
    assert (ask(), ask(), door.memo_hits, mirror.stale_checks) == (200, 200, 1, 0)  # fresh: none
    mirror.confirm(at=-1e9)  # long past max_staleness: stale, served
    assert (ask(), ask(), door.memo_hits) == (200, 200, 3)
    assert mirror.stale_checks == 2
