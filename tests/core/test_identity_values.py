"""Claims that become identity headers: one treatment, the same answer from both doors.

Issue 19, findings 4 and 6: ``sub: "用户-1"`` was allowed by the gRPC door and
crashed the HTTP door's Latin-1 rendering; ``sub: "  admin  "`` reached the
upstream as ``admin``; one ``scope`` string split on Unicode whitespace granted
``orders:read`` and sent ``orders:write``. Claim validation now refuses every
value that cannot be sent as it is (``claims_malformed``), so both doors
answer each token alike and send byte-identical identity headers when they allow.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authz.config import Config
from testkit.doors import Answer, via_grpc, via_http
from testkit.world import World

TOKENS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def both_doors(world: World, config: Config, claims: dict[str, Any]) -> tuple[Answer, Answer]:
    # dir + ES256: the cheapest pair, so that generated claims can be minted per example.
    token = world.token(world.claims(**claims), outer="dir", inner="ES256")
    spec = {
        "method": "GET",
        "path": "/orders",
        "host": "api.acme.test",
        "headers": {"authorization": f"Bearer {token}"},
    }
    return via_grpc(config, **spec), via_http(config, **spec)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "用户-1"},
        {"sub": "josé"},
        {"sub": "  admin  "},
        {"sub": "admin\u3000"},
        {"scope": "profile\x1forders:read\u3000orders:write"},
        {"scope": "orders:read\u00a0orders:write"},
        {"scope": "orders:read  orders:write"},
        {"scope": "orders:read 用户"},
        {"scope": None, "scp": ["orders:read", "orders:write\u3000admin"]},
        {"tenant": "acme "},
    ],
)
def test_unsendable_identity_values_are_refused_by_both_doors(world: World, config: Config, claims) -> None:
    """Each case of the issue: 401 claims_malformed through the gRPC door and the HTTP door alike."""
    grpc, http = both_doors(world, config, claims)
    assert grpc == http
    assert (grpc.status, grpc.reason) == (401, "claims_malformed")


@pytest.mark.parametrize(
    ("claims", "subject", "scopes"),
    [
        ({"sub": "user 1"}, "user 1", "orders:read"),
        ({"sub": 'a"b\\c~'}, 'a"b\\c~', "orders:read"),
        (
            {"scope": "orders:read a!#$%&'()*+,-./:;<=>?@[]^_`{|}~"},
            "user-1",
            "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~ orders:read",
        ),
    ],
)
def test_sendable_identity_values_reach_both_doors_unchanged(
    world: World, config: Config, claims, subject, scopes
) -> None:
    """Printable US-ASCII values are allowed and sent as they are, the same through both doors."""
    grpc, http = both_doors(world, config, claims)
    assert grpc == http
    assert grpc.status == 200
    assert grpc.identity == {"x-authz-tenant": "acme", "x-authz-subject": subject, "x-authz-scopes": scopes}


# Values around the boundary: ASCII, Latin-1, beyond; every kind of space and control.
_PIECES = [
    "user",
    "orders:read",
    " ",
    "  ",
    '"',
    "\\",
    "~",
    "\t",
    "\x1f",
    "\x7f",
    "\x85",
    "\xa0",
    "é",
    "用户",
    "\u3000",
    "\u2028",
]
identity_text = st.lists(st.sampled_from(_PIECES), max_size=5).map("".join)


@TOKENS
@given(sub=identity_text, scope=identity_text)
@example(sub="用户-1", scope="orders:read")
@example(sub="user-1", scope="profile\x1forders:read\u3000orders:write")
def test_both_doors_decide_alike_for_any_subject_and_scope(world: World, config: Config, sub, scope) -> None:
    """Whatever sub and scope a valid token carries, both doors give the same answer, never an error."""
    grpc, http = both_doors(world, config, {"sub": sub, "scope": scope})
    assert grpc == http
    assert grpc.reason in {"ok", "claims_malformed", "scope_missing"}
    if grpc.status == 200:
        for value in grpc.identity.values():
            assert value.isascii()
            assert value.isprintable()
            assert value == value.strip()
