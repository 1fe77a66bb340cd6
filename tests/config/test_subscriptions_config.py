"""apis, client_claim, rule.api and the subscriptions: section and file: good ones load, bad ones
name file, line and reason."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from authz.config import Config, load_config
from authz.config.subscriptions import parse_subscription_file, render_subscription_file
from authz.core.subscription import Status, Subscription
from authz.errors import ConfigError
from testkit.world import World, subscriptions_config

APIS = {"acme": frozenset({"orders", "admin"}), "globex": frozenset()}


@pytest.fixture
def folder(world: World, tmp_path: Path) -> Path:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    return tmp_path


def _config_text(world: World) -> str:
    return subscriptions_config(world, "scratch-subscriptions.yaml").read_text()


def _load(folder: Path, text: str) -> Config:
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(folder, text)
    return info.value


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth - 1]


# -- the policy -----------------------------------------------------------------------------------------


def test_apis_and_rules_load(world: World, folder: Path) -> None:
    config = _load(folder, _config_text(world))
    acme = config.snapshot.tenants.by_name["acme"]
    assert {name: api.subscription for name, api in acme.apis.items()} == {"orders": True, "admin": False}
    assert [(rule.name, rule.api, rule.subscription) for rule in acme.rules] == [
        ("health", None, False),
        ("read-orders", "orders", True),
        ("admin", "admin", False),
    ]
    assert acme.client_claims == ("azp", "client_id")
    assert config.subscriptions.required
    assert not load_config(world.config_path).subscriptions.required


@pytest.mark.parametrize(
    ("edit", "needle", "reason"),
    [
        (
            ("api: orders\n", "api: billing\n"),
            "api: billing",
            "API 'billing' is not one of this tenant's apis",
        ),
        (
            ("      - name: admin\n    rules", "      - name: orders\n    rules"),
            "- name: orders",
            "duplicate API",
        ),
        (
            ("subscription: required", "subscription: always"),
            "subscription: always",
            "must be required or none",
        ),
        (
            (
                "      - name: health\n        paths: [/healthz]\n",
                "      - name: health\n        api: orders\n        paths: [/healthz]\n",
            ),
            "api: orders",
            "a public rule takes no token",
        ),
    ],
)
def test_a_bad_api_names_file_line_and_reason(
    world: World, folder: Path, edit: tuple[str, str], needle: str, reason: str
) -> None:
    text = _config_text(world).replace(*edit, 1)
    error = _error(folder, text)
    nth = 2 if edit[1].endswith("name: orders\n    rules") else 1
    assert (error.file, error.line) == (str(folder / "config.yaml"), _line_of(text, needle, nth)), error
    assert reason in error.reason


def test_a_rule_naming_an_api_in_a_tenant_without_apis_is_refused(world: World, folder: Path) -> None:
    text = _config_text(world).replace(
        "      - name: read-orders\n        methods: [GET]\n",
        "      - name: read-orders\n        api: orders\n        methods: [GET]\n",
        1,
    )
    error = _error(folder, text)
    assert "not one of this tenant's apis (none)" in error.reason


def test_client_issuer_defaults_to_the_one_issuer_and_is_refused_when_not_the_tenants(
    world: World, folder: Path
) -> None:
    config = _load(folder, _config_text(world))
    tenants = config.snapshot.tenants.by_name
    assert tenants["acme"].client_issuer == "https://idp.acme.test"  # named: acme has two issuers
    assert tenants["globex"].client_issuer == "https://idp.globex.test"  # its one issuer
    assert tenants["initech"].client_issuer == "https://idp.shared.test"
    text = _config_text(world).replace(
        "client_issuer: https://idp.acme.test", "client_issuer: https://idp.globex.test"
    )
    error = _error(folder, text)
    assert error.line == _line_of(text, "client_issuer:"), error
    assert "'https://idp.globex.test' is not one of this tenant's issuers" in error.reason


def test_a_tenant_of_several_issuers_requiring_subscriptions_must_name_its_client_issuer(
    world: World, folder: Path
) -> None:
    """Client ids are per issuer: with two, which one's `mobile-app` a subscription names is a choice."""
    text = _config_text(world).replace("    client_issuer: https://idp.acme.test\n", "", 1)
    error = _error(folder, text)
    assert error.line == _line_of(text, "issuers: [https://idp.acme.test, https://idp.shared.test]"), error
    assert "2 issuers and API 'orders' requires subscriptions: set client_issuer" in error.reason
    # Without an API requiring subscriptions there is nothing to name.
    plain = _load(folder, text.replace("subscription: required", "subscription: none", 1))
    assert plain.snapshot.tenants.by_name["acme"].client_issuer is None


READ_ORDERS = "      - name: read-orders\n        api: orders\n        methods: [GET, HEAD]\n"


@pytest.mark.parametrize(
    ("earlier", "example"),
    [
        ("      - name: older\n        paths: [/orders/**]\n", "GET /orders"),  # no api
        ("      - name: older\n        api: admin\n        paths: [/orders/*]\n", "GET /orders/x"),
        ("      - name: older\n        methods: [head]\n        paths: ['/**']\n", "HEAD /orders"),
        ("      - name: older\n        public: true\n        paths: [/x, /orders]\n", "GET /orders"),
    ],
)
def test_an_earlier_rule_matching_requests_of_a_subscription_rule_is_refused(
    world: World, folder: Path, earlier: str, example: str
) -> None:
    """The first matching rule decides: one before read-orders (API orders, subscription required)
    matching some of its requests would let them through without a subscription."""
    text = _config_text(world).replace(READ_ORDERS, earlier + READ_ORDERS, 1)
    error = _error(folder, text)
    assert error.line == _line_of(text, "- name: older"), error
    assert error.reason.endswith(
        f"rule 'older' matches requests of rule 'read-orders' (e.g. {example}) before it, so they would "
        "pass without the subscription API 'orders' requires: move it below, narrow its methods or "
        "paths, or give it api: orders"
    )


@pytest.mark.parametrize(
    "earlier",
    [
        "      - name: writes\n        methods: [POST]\n        paths: [/orders/**]\n",  # other methods
        "      - name: items\n        paths: [/orders/*/items, /orders/]\n",  # other paths
        "      - name: mine\n        api: orders\n        paths: [/orders/mine]\n",  # the same API
    ],
)
def test_an_earlier_rule_sharing_no_request_or_of_the_same_api_loads(
    world: World, folder: Path, earlier: str
) -> None:
    text = _config_text(world).replace(READ_ORDERS, earlier + READ_ORDERS, 1)
    assert _load(folder, text).snapshot.tenants.by_name["acme"].rules[1].name != "read-orders"
    # And a rule after it may overlap: read-orders decides its requests first.
    later = _config_text(world).replace(
        "      - name: admin\n        api: admin\n        paths: [/admin/**]",
        "      - name: admin\n        api: admin\n        paths: [/admin/**, /orders/**]",
        1,
    )
    assert "/orders/**" in later
    _load(folder, later)


def test_store_settings_without_a_store_are_refused(world: World, folder: Path) -> None:
    text = "subscriptions:\n  max_staleness: 10\n" + _config_text(world)
    error = _error(folder, text)
    assert error.line == 2, error
    assert error.reason.endswith("only applies to subscriptions from the store")


# -- the file -------------------------------------------------------------------------------------------


FILE = """\
subscriptions:
  - tenant: acme
    client: mobile-app
    api: orders
    status: approved
    requested_by: team-mobile
    requested_at: 2026-11-20T09:00:00Z
    decided_by: alice
    decided_at: 2026-11-20T10:00:00Z
    decision_reason: SEC-142
    expires: 2030-01-01T00:00:00Z
  - tenant: acme
    client: web
    api: orders
    status: pending
"""


def test_a_subscriptions_file_loads_and_is_watched(world: World, folder: Path) -> None:
    (folder / "subs.yaml").write_text(FILE, encoding="utf-8")
    config = _load(folder, "subscriptions:\n  file: subs.yaml\n" + _config_text(world))
    records = {record.client: record for record in config.subscriptions.records}
    assert records["mobile-app"].status is Status.APPROVED
    assert records["mobile-app"].expires_at == 1893456000
    assert (records["mobile-app"].decided_by, records["web"].status) == ("alice", Status.PENDING)
    assert str(folder / "subs.yaml") in config.files  # an edit reloads it


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: orders\n",
            2,
            "missing required key 'status'",
        ),
        (
            "subscriptions:\n  - tenant: nope\n    client: c\n    api: orders\n    status: pending\n",
            2,
            "not configured",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: billing\n    status: pending\n",
            4,
            "not one of",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: orders\n    status: maybe\n",
            5,
            "must be pending",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: 7\n    api: orders\n    status: pending\n",
            3,
            "non-empty",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: orders\n    status: pending\n    expires: 1\n",
            6,
            "only an approved",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: orders\n    status: pending\n"
            "  - tenant: acme\n    client: c\n    api: orders\n    status: approved\n",
            6,
            "has a subscription",
        ),
        (
            "subscriptions:\n  - tenant: acme\n    client: c\n    api: orders\n    status: pending\n    by: x\n",
            6,
            "unknown key",
        ),
        ("subs: []\n", 1, "unknown key"),
        ("subscriptions: [\n", 2, "YAML error"),
    ],
)
def test_a_bad_subscriptions_file_names_its_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_subscription_file(text.encode(), "subs.yaml", APIS)
    assert (info.value.file, info.value.line) == ("subs.yaml", line), info.value
    assert reason in info.value.reason


def test_a_bad_file_fails_the_load_naming_the_file(world: World, folder: Path) -> None:
    (folder / "subs.yaml").write_text("subscriptions:\n  - tenant: acme\n", encoding="utf-8")
    text = "subscriptions:\n  file: subs.yaml\n" + _config_text(world)
    error = _error(folder, text)
    assert (error.file, error.line) == (str(folder / "subs.yaml"), 2)
    assert "referenced from" in error.reason


def test_the_rendered_file_reads_back_the_same() -> None:
    records = parse_subscription_file(FILE.encode(), "subs.yaml", APIS)
    again = parse_subscription_file(render_subscription_file(records).encode(), "subs.yaml", APIS)
    assert sorted(again, key=lambda r: r.key) == sorted(records, key=lambda r: r.key)
    empty = Subscription("acme", "x", "orders", Status.REVOKED)
    assert parse_subscription_file(render_subscription_file([empty]).encode(), "s", APIS) == (empty,)
    assert math.isinf(empty.expires_at)
