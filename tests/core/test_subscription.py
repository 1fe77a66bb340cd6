"""Subscriptions: the workflow's moves, the mirror's answers, and the decision and memo honouring them."""

from __future__ import annotations

import math
import time

import pytest

from authz.app.subscriptions import attach
from authz.config import Config, load_config
from authz.config.holder import SnapshotHolder
from authz.core.decision import Decision, Verdict, decide
from authz.core.subscription import (
    Action,
    Event,
    Status,
    Subscription,
    SubscriptionSet,
    WorkflowError,
    transition,
)
from authz.errors import Outcome, Reason
from authz.grpc.messages import from_check_request
from authz.http.door import HttpDoor
from authz.telemetry.decision_log import DEFAULT_SETTINGS, decision_fields
from authz.telemetry.recorder import Telemetry
from testkit.world import NOW, SHARED_IDP, World, check_request, subscriptions_config

KEY = ("acme", "orders", "mobile-app")  # (tenant, API, client)


def _record(status: Status, *, client: str = "mobile-app", expires: float = math.inf) -> Subscription:
    return Subscription("acme", client, "orders", status, expires_at=expires)


@pytest.fixture
def mirror() -> SubscriptionSet:
    return SubscriptionSet()


@pytest.fixture(scope="module")
def base(world: World) -> Config:
    return load_config(subscriptions_config(world))


@pytest.fixture
def config(base: Config, mirror: SubscriptionSet) -> Config:
    return attach(base, mirror)


def _decide(config: Config, token: str, path: str = "/orders", at: float = NOW) -> Decision:
    return decide(config.snapshot, from_check_request(check_request(token=token, path=path)), at)


# -- the workflow -------------------------------------------------------------------------------------


def _move(current: Subscription | None, action: Action, **kwargs: float) -> tuple[Subscription, Event]:
    return transition(current, action, key=KEY, by="alice", reason="why", at=NOW, **kwargs)


def test_request_approve_revoke_and_request_again() -> None:
    pending, event = _move(None, Action.REQUEST)
    assert (pending.status, pending.requested_by, event.before, event.after) == (
        Status.PENDING,
        "alice",
        None,
        Status.PENDING,
    )
    approved, event = _move(pending, Action.APPROVE, expires_at=NOW + 60)
    assert (approved.status, approved.decided_by, approved.expires_at) == (Status.APPROVED, "alice", NOW + 60)
    assert (event.before, event.after, event.expires_at) == (Status.PENDING, Status.APPROVED, NOW + 60)
    revoked, _ = _move(approved, Action.REVOKE)
    assert revoked.status is Status.REVOKED
    again, _ = _move(revoked, Action.REQUEST)
    assert again.status is Status.PENDING
    rejected, _ = _move(again, Action.REJECT)
    assert rejected.status is Status.REJECTED
    assert _move(rejected, Action.REQUEST)[0].status is Status.PENDING


@pytest.mark.parametrize(
    ("status", "action", "message"),
    [
        (None, Action.APPROVE, "must be requested first"),
        (None, Action.REJECT, "must be requested first"),
        (None, Action.REVOKE, "must be requested first"),
        (Status.APPROVED, Action.APPROVE, "only a pending one can be approved"),
        (Status.REJECTED, Action.APPROVE, "only a pending one can be approved"),
        (Status.REVOKED, Action.APPROVE, "only a pending one can be approved"),
        (Status.APPROVED, Action.REJECT, "only a pending one can be rejected"),
        (Status.PENDING, Action.REVOKE, "only a approved one can be revoked"),
        (Status.REJECTED, Action.REVOKE, "only a approved one can be revoked"),
        (Status.PENDING, Action.REQUEST, "pending already"),
        (Status.APPROVED, Action.REQUEST, "approved already"),
    ],
)
def test_moves_the_workflow_refuses(status: Status | None, action: Action, message: str) -> None:
    current = None if status is None else _record(status)
    with pytest.raises(WorkflowError, match=message):
        _move(current, action)


def test_an_expired_approval_may_be_requested_again() -> None:
    assert _move(_record(Status.APPROVED, expires=NOW - 1), Action.REQUEST)[0].status is Status.PENDING


def test_who_and_a_future_expiry_only_on_an_approval() -> None:
    with pytest.raises(WorkflowError, match="--by"):
        transition(None, Action.REQUEST, key=KEY, by="", reason="", at=NOW)
    with pytest.raises(WorkflowError, match="--by"):
        transition(_record(Status.PENDING), Action.APPROVE, key=KEY, by=" \t", reason="", at=NOW)
    with pytest.raises(WorkflowError, match="only an approval"):
        _move(None, Action.REQUEST, expires_at=NOW + 60)
    with pytest.raises(WorkflowError, match="not in the future"):
        _move(_record(Status.PENDING), Action.APPROVE, expires_at=NOW)


def test_an_expiry_more_than_a_century_ahead_is_refused() -> None:
    """Milliseconds taken for seconds (1798761600000 ms is 2027-01-01; as seconds, year 58970)."""
    for expires in (NOW + 101 * 365.25 * 86400, 1798761600000.0, 1e300):
        with pytest.raises(WorkflowError, match="more than 100 years ahead"):
            _move(_record(Status.PENDING), Action.APPROVE, expires_at=expires)
    assert _move(_record(Status.PENDING), Action.APPROVE, expires_at=NOW + 99 * 365.25 * 86400)[0]


@pytest.mark.parametrize("expires", [1e300, 1798761600000 * 1000, -1, 253402300800])
def test_a_stored_time_no_clock_can_write_is_a_damaged_record_and_event(expires: float) -> None:
    """Read as unreadable (skipped and counted: fail closed), never a crash of whoever reads it."""
    data = _record(Status.APPROVED).to_dict() | {"expires": expires}
    with pytest.raises(ValueError, match="before year 10000"):
        Subscription.from_dict(data)
    _, event = _move(_record(Status.PENDING), Action.APPROVE)
    for key in ("at", "expires"):
        with pytest.raises(ValueError, match="not an audit event"):
            Event.from_dict(event.to_dict() | {key: str(expires)})


def test_an_expiry_of_zero_is_1970_not_never() -> None:
    record = Subscription.from_dict(_record(Status.APPROVED).to_dict() | {"expires": 0})
    assert record.expires_at == 0.0
    assert SubscriptionSet([record]).check(*KEY, NOW)[0] is Reason.SUBSCRIPTION_EXPIRED


def test_records_and_events_round_trip() -> None:
    record, event = _move(_record(Status.PENDING), Action.APPROVE, expires_at=NOW + 60)
    assert Subscription.from_json(record.to_json()) == record
    as_strings = {k: "" if v is None else str(v) for k, v in event.to_dict().items()}  # as a stream keeps it
    assert Event.from_dict(as_strings) == event
    assert Event.from_dict(event.to_dict()) == event


@pytest.mark.parametrize(
    "text", ["", "[]", '{"tenant":"acme"}', '{"tenant":"a","client":"c","api":"o","status":"maybe"}', "{"]
)
def test_anything_else_is_not_a_record(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every malformed record, one error type
        Subscription.from_json(text)


# -- the mirror ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, Reason.SUBSCRIPTION_REQUIRED),
        (_record(Status.PENDING), Reason.SUBSCRIPTION_PENDING),
        (_record(Status.REJECTED), Reason.SUBSCRIPTION_REJECTED),
        (_record(Status.REVOKED), Reason.SUBSCRIPTION_REVOKED),
        (_record(Status.APPROVED, expires=NOW), Reason.SUBSCRIPTION_EXPIRED),
        (_record(Status.APPROVED, expires=NOW + 1), Reason.OK),
        (_record(Status.APPROVED), Reason.OK),
        (_record(Status.APPROVED, client="other-app"), Reason.SUBSCRIPTION_REQUIRED),
    ],
)
def test_each_status_answers_its_reason(
    mirror: SubscriptionSet, record: Subscription | None, reason: Reason
) -> None:
    if record is not None:
        mirror.put(record)
    assert mirror.check(*KEY, NOW)[0] is reason


def test_every_change_moves_the_generation_and_the_same_state_does_not(mirror: SubscriptionSet) -> None:
    seen = [mirror.generation]
    assert mirror.put(_record(Status.PENDING))
    seen.append(mirror.generation)
    assert not mirror.put(_record(Status.PENDING))  # the same again: nothing for checks to see
    assert mirror.put(_record(Status.APPROVED))
    seen.append(mirror.generation)
    mirror.replace([])
    seen.append(mirror.generation)
    assert len(set(seen)) == len(seen)
    assert len(mirror) == 0


def test_a_store_fed_mirror_is_stale_until_confirmed(mirror: SubscriptionSet) -> None:
    mirror.put(_record(Status.APPROVED))
    mirror.set_staleness(30.0, serve_stale=False)
    assert mirror.check(*KEY, NOW)[0] is Reason.SUBSCRIPTION_STATE_STALE
    mirror.confirm()
    assert mirror.check(*KEY, NOW)[0] is Reason.OK
    mirror.confirm(at=time.monotonic() - 31)
    assert mirror.check(*KEY, NOW)[0] is Reason.SUBSCRIPTION_STATE_STALE
    mirror.set_staleness(30.0, serve_stale=True)
    assert (mirror.check(*KEY, NOW)[0], mirror.stale_checks) == (Reason.OK, 1)


# -- the decision -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, "subscription_required"),
        (Status.PENDING, "subscription_pending"),
        (Status.REJECTED, "subscription_rejected"),
        (Status.REVOKED, "subscription_revoked"),
        (Status.APPROVED, "ok"),
    ],
)
def test_a_rule_of_an_api_requiring_subscriptions_checks_the_tokens_client(
    world: World, config: Config, mirror: SubscriptionSet, status: Status | None, reason: str
) -> None:
    if status is not None:
        mirror.put(_record(status))
    decision = _decide(config, world.token(world.claims(azp="mobile-app")))
    assert (decision.reason, decision.api, decision.client, decision.subscription) == (
        reason,
        "orders",
        "mobile-app",
        Reason(reason),
    )
    assert decision.verdict is (Verdict.ALLOW if reason == "ok" else Verdict.DENY)
    if reason != "ok":
        assert decision.outcome is Outcome.FORBIDDEN


def test_an_expired_approval_is_subscription_expired_and_an_allow_ends_with_it(
    world: World, config: Config, mirror: SubscriptionSet
) -> None:
    mirror.put(_record(Status.APPROVED, expires=NOW + 10))
    token = world.token(world.claims(azp="mobile-app"))
    allowed = _decide(config, token)
    assert (allowed.reason, allowed.valid_until) == ("ok", NOW + 10)  # the memo may not repeat it past then
    assert _decide(config, token, at=NOW + 10).reason == "subscription_expired"


@pytest.mark.parametrize(
    ("claims", "client"),
    [
        ({"azp": "mobile-app"}, "mobile-app"),
        ({"client_id": "mobile-app"}, "mobile-app"),
        ({"azp": "mobile-app", "client_id": "other"}, "mobile-app"),  # azp first
        ({}, None),
        ({"azp": ""}, None),
        ({"azp": ["mobile-app"]}, None),  # not a string: no client, not the first item
        ({"azp": 7, "client_id": "mobile-app"}, None),  # the first present decides
    ],
)
def test_the_client_is_azp_then_client_id(
    world: World, config: Config, mirror: SubscriptionSet, claims: dict[str, object], client: str | None
) -> None:
    mirror.put(_record(Status.APPROVED))
    decision = _decide(config, world.token(world.claims(**claims)))
    assert decision.reason == ("ok" if client else "client_unknown")
    assert decision.client == client


def test_a_tenant_names_its_own_client_claim(world: World, mirror: SubscriptionSet) -> None:
    path = subscriptions_config(world, "client-claim.yaml")
    path.write_text(path.read_text().replace("    apis:\n", "    client_claim: app\n    apis:\n", 1))
    config = attach(load_config(path), mirror)
    mirror.put(_record(Status.APPROVED))
    assert _decide(config, world.token(world.claims(app="mobile-app"))).reason == "ok"
    assert _decide(config, world.token(world.claims(azp="mobile-app"))).reason == "client_unknown"


def test_another_issuers_client_of_the_same_id_is_not_the_subscribed_one(
    world: World, config: Config, mirror: SubscriptionSet
) -> None:
    """acme trusts idp.acme.test (its client_issuer) and idp.shared.test: the approval of acme's
    mobile-app does not admit the shared IdP's application that it also calls mobile-app."""
    mirror.put(_record(Status.APPROVED))
    assert config.snapshot.tenants.by_name["acme"].client_issuer == "https://idp.acme.test"
    shared = world.token(
        world.claims(iss=SHARED_IDP, tenant="acme", azp="mobile-app"), signing_kid="shared-es256"
    )
    decision = _decide(config, shared)
    assert (decision.reason, decision.client, decision.subscription) == (
        "client_unknown",
        "mobile-app",
        Reason.CLIENT_UNKNOWN,
    )
    assert _decide(config, world.token(world.claims(azp="mobile-app"))).reason == "ok"
    # The shared IdP's tokens still pass acme's rules of APIs without subscriptions.
    admin = world.claims(iss=SHARED_IDP, tenant="acme", roles=["admin"], email_verified=True)
    assert _decide(config, world.token(admin, signing_kid="shared-es256"), "/admin/x").reason == "ok"


def test_rules_of_other_apis_and_no_api_never_look(
    world: World, config: Config, mirror: SubscriptionSet
) -> None:
    """admin's API needs no subscription; other tenants have no apis: no client needed, no lookup."""
    mirror.set_staleness(30.0, serve_stale=False)  # a lookup would answer subscription_state_stale
    admin = _decide(config, world.token(world.claims(roles=["admin"], email_verified=True)), "/admin/x")
    assert (admin.reason, admin.api, admin.client, admin.subscription) == ("ok", "admin", None, None)
    globex = world.token(
        world.claims(iss="https://idp.globex.test", tenant="globex"), signing_kid="globex-es256"
    )
    other = decide(
        config.snapshot, from_check_request(check_request(token=globex, host="api.globex.test")), NOW
    )
    assert (other.reason, other.api) == ("ok", None)


def test_a_stale_mirror_denies_with_503(world: World, config: Config, mirror: SubscriptionSet) -> None:
    mirror.put(_record(Status.APPROVED))
    mirror.set_staleness(30.0, serve_stale=False)
    decision = _decide(config, world.token(world.claims(azp="mobile-app")))
    assert (decision.reason, decision.outcome) == ("subscription_state_stale", Outcome.UNAVAILABLE)


def test_the_subscription_is_checked_before_scopes(world: World, config: Config) -> None:
    """An unsubscribed client learns that, not which scopes the rule wants."""
    decision = _decide(config, world.token(world.claims(azp="mobile-app", scope="other")))
    assert decision.reason == "subscription_required"


def test_the_decision_log_the_span_and_the_metric_name_the_api_and_the_client(
    world: World, config: Config, mirror: SubscriptionSet
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mirror.put(_record(Status.PENDING))
    decision = _decide(config, world.token(world.claims(azp="mobile-app")))
    fields = decision_fields(decision, None, DEFAULT_SETTINGS)
    assert (fields["reason"], fields["api"], fields["client"], fields["subscription"]) == (
        "subscription_pending",
        "orders",
        "mobile-app",
        "subscription_pending",
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider)
    trace = telemetry.begin((), None, "check", grpc=True)
    telemetry.finish(trace, decision, None, request_id="r", elapsed=0.001, settings=None)
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert (attributes["authz.api"], attributes["authz.client"], attributes["authz.subscription"]) == (
        "orders",
        "mobile-app",
        "subscription_pending",
    )
    text = telemetry.registry.render()[0].decode()
    assert (
        'authz_subscription_checks_total{api="orders",result="subscription_pending",tenant="acme"} 1.0'
        in text
    )


def test_a_dry_run_tenant_records_a_missing_subscription(world: World, tmp_path: object) -> None:
    path = subscriptions_config(world, "dry-subscriptions.yaml")
    path.write_text(
        path.read_text().replace("    mode: enforce\n    apis:", "    mode: dry-run\n    apis:", 1)
    )
    config = attach(load_config(path), SubscriptionSet())
    decision = _decide(config, world.token(world.claims(azp="mobile-app")))
    assert (decision.verdict, decision.reason) == (Verdict.DRY_RUN_DENY, "subscription_required")


# -- the memo ------------------------------------------------------------------------------------------


def test_the_memo_never_outlives_a_change_of_the_subscriptions(
    world: World, config: Config, mirror: SubscriptionSet
) -> None:
    """Approve: the next request is allowed; revoke: the next request is denied, memo warm or not;
    an unrelated change costs one full check, then repeats resume."""
    clock = [float(NOW)]
    door = HttpDoor(SnapshotHolder(config), lambda: clock[0], Telemetry(), config.http)
    token = world.token(world.claims(azp="mobile-app"))
    headers = [(b"host", b"api.acme.test"), (b"authorization", f"Bearer {token}".encode())]

    def ask() -> int:
        answer = door.answer_raw(b"GET", b"/orders", headers)
        assert isinstance(answer, bytes)
        return int(answer.split(b" ", 2)[1])

    mirror.put(_record(Status.PENDING))
    assert (ask(), ask()) == (403, 403)
    mirror.put(_record(Status.APPROVED, expires=NOW + 100))
    assert (ask(), ask(), door.memo_hits) == (200, 200, 1)
    mirror.put(_record(Status.PENDING, client="unrelated"))
    assert (ask(), door.memo_hits) == (200, 1)  # decided afresh once
    assert (ask(), door.memo_hits) == (200, 2)  # and repeated again
    mirror.put(_record(Status.REVOKED))
    assert (ask(), ask(), door.memo_hits) == (403, 403, 2)
    mirror.put(_record(Status.APPROVED, expires=NOW + 100))
    assert (ask(), ask(), door.memo_hits) == (200, 200, 3)
    clock[0] = NOW + 100  # the approval's expiry: the memo's allow ends with it
    assert ask() == 403
