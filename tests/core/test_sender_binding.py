"""Sender-constrained tokens through the core, by both doors of one process (issue 14).

Every check of RFC 9449 (DPoP) and RFC 8705 (certificate-bound) the decision makes, each with
a request that is denied for exactly that reason, the request that passes beside it, and the
answer's challenge, nonce and recording. Tokens are minted by jwcrypto (the world's minter);
proofs by our test minter (pyca) and joserfc.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.config import Config, load_config
from authz.core.decision import Verdict
from testkit import dpop
from testkit.dpop import DPOP_ALGS
from testkit.sender import URL, Answer, Doors, dpop_headers, jkt, make_cert, proof, write_config
from testkit.world import NOW, World

INVALID_PROOF = f'DPoP error="invalid_dpop_proof", {DPOP_ALGS}'
DPOP_INVALID_TOKEN = f'DPoP error="invalid_token", {DPOP_ALGS}'
BEARER_INVALID_TOKEN = f'Bearer error="invalid_token", DPoP {DPOP_ALGS}'
USE_NONCE = f'DPoP error="use_dpop_nonce", {DPOP_ALGS}'


@pytest.fixture(scope="module")
def sender_config(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(write_config(world, tmp_path_factory.mktemp("sender")))


@pytest.fixture(scope="module")
def nonce_config(world: World, tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("nonce")
    return load_config(
        write_config(world, root, dpop_section="nonce: {required: true, secret: keys/nonce.jwks.json}")
    )


@pytest.fixture
def doors(sender_config: Config) -> Doors:
    return Doors(sender_config)


@pytest.fixture(params=["grpc", "http"])
def door(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def key() -> Any:
    return dpop.new_key("ES256")


@pytest.fixture(scope="module")
def token(world: World, key: Any) -> str:
    """A DPoP-bound token of tenant acme (cnf.jkt of ``key``)."""
    return world.token(world.claims(cnf={"jkt": jkt(key)}))


def ask(doors: Doors, door: str, headers: list[tuple[str, str]], **kwargs: Any) -> Answer:
    return doors.grpc(headers, **kwargs) if door == "grpc" else doors.http(headers, **kwargs)


def denied(answer: Answer, reason: str, challenge: str | None = INVALID_PROOF, status: int = 401) -> None:
    assert (answer.status, answer.reason, answer.decision) == (status, reason, "deny"), answer
    assert answer.challenge == challenge
    assert not answer.upstream


def allowed(answer: Answer) -> None:
    assert (answer.status, answer.reason, answer.decision) == (200, "ok", "allow"), answer
    assert answer.upstream["x-authz-subject"] == "user-1"


# -- DPoP: the good request, and replay ----------------------------------------------------------


def test_a_bound_token_with_a_fresh_proof_is_allowed_by_both_doors(doors, door, key, token):
    """The scheme in any case, a fresh proof each time; the proof goes with the token upstream-side."""
    for scheme in ("DPoP", "dpop", "DPOP"):
        answer = ask(doors, door, dpop_headers(token, proof(key, token), scheme))
        allowed(answer)
        assert {"authorization", "dpop"} <= answer.removed  # strip_authorization: the proof goes too
        assert answer.client == {}  # no nonces configured: nothing for the client


def test_the_same_proof_twice_is_a_replay(doors, door, key, token):
    headers = dpop_headers(token, proof(key, token))
    allowed(ask(doors, door, headers))
    denied(ask(doors, door, headers), "dpop_proof_replayed")


def test_a_proof_used_through_one_door_is_a_replay_through_the_other(doors, key, token):
    """One process, one replay store: the gRPC door's proof is spent for the HTTP door, and back."""
    first = dpop_headers(token, proof(key, token))
    allowed(doors.grpc(first))
    denied(doors.http(first), "dpop_proof_replayed")
    second = dpop_headers(token, proof(key, token))
    allowed(doors.http(second))
    denied(doors.grpc(second), "dpop_proof_replayed")


def test_a_replay_is_denied_before_the_rules(doors, door, world, key):
    """The claim comes before scopes: a spent proof is replayed whatever the rule says."""
    token = world.token(world.claims(cnf={"jkt": jkt(key)}, scope="profile"))
    headers = dpop_headers(token, proof(key, token))
    answer = ask(doors, door, headers)
    assert (answer.status, answer.reason) == (403, "scope_missing")
    assert answer.challenge == f'DPoP error="insufficient_scope", scope="orders:read", {DPOP_ALGS}'
    denied(ask(doors, door, headers), "dpop_proof_replayed")


def test_a_proof_refused_before_the_claim_is_not_spent(doors, door, world, key, token):
    """Only a proof that passed every other check takes a replay entry: the same proof refused
    at a host whose tenant the token does not belong to still works for its own request."""
    headers = dpop_headers(token, proof(key, token))
    assert ask(doors, door, headers, host="api.globex.test").reason == "tenant_mismatch"
    allowed(ask(doors, door, headers))
    denied(ask(doors, door, headers), "dpop_proof_replayed")


def test_a_dry_run_tenant_records_a_replay_and_lets_it_through(doors, door, world, key):
    token = world.token(world.claims(tenant="dryb", cnf={"jkt": jkt(key)}))
    url = "https://api.dryb.test/orders"
    headers = dpop_headers(token, proof(key, token, url=url))
    first = ask(doors, door, headers, host="api.dryb.test")
    assert (first.status, first.decision, first.reason) == (200, "allow", "ok")
    again = ask(doors, door, headers, host="api.dryb.test")
    assert (again.status, again.decision, again.reason) == (200, "dry-run-deny", "dpop_proof_replayed")
    assert "x-authz-subject" not in again.upstream  # the identity is not the replayer's


# -- DPoP: each check of the proof --------------------------------------------------------------

PROOF_CASES = {
    "htm-other-method": {"method": "POST"},
    "htm-lower-case": {"method": "get"},
    "htu-other-host": {"url": "https://api.globex.test/orders"},
    "htu-other-path": {"url": "https://api.acme.test/orders/1"},
    "htu-with-query": {"url": "https://api.acme.test/orders?x=1"},
    "htu-other-scheme": {"url": "http://api.acme.test/orders"},
    "htu-other-port": {"url": "https://api.acme.test:8443/orders"},
    "iat-stale": {"iat": NOW - 61},
    "iat-future": {"iat": NOW + 6},
    "ath-missing": {"ath": None},
    "ath-of-another-token": {"ath": dpop.ath("another.token")},
    "jti-missing": {"jti": None},
}


@pytest.mark.parametrize("over", PROOF_CASES.values(), ids=PROOF_CASES.keys())
def test_a_proof_claim_that_does_not_fit_the_request_is_invalid(doors, door, key, token, over):
    denied(ask(doors, door, dpop_headers(token, proof(key, token, **over))), "dpop_proof_invalid")


EQUAL_URLS = [
    "HTTPS://API.ACME.TEST/orders",
    "https://api.acme.test:443/orders",
    "https://api.acme.test./orders",
    "https://api.acme.test/a/../orders",
    "https://api.acme.test//orders",
    "https://api.acme.test/%6frders",
]


@pytest.mark.parametrize("url", EQUAL_URLS)
def test_an_htu_spelled_otherwise_but_equal_is_accepted(doors, door, key, token, url):
    allowed(ask(doors, door, dpop_headers(token, proof(key, token, url=url))))


def test_the_iat_window_edges(doors, door, key, token):
    """max_age 60 back, clock_skew 5 forward (the defaults), both inclusive."""
    allowed(ask(doors, door, dpop_headers(token, proof(key, token, iat=NOW - 60))))
    allowed(ask(doors, door, dpop_headers(token, proof(key, token, iat=NOW + 5))))


def test_a_proof_that_is_no_proof_is_invalid(doors, door, key, token):
    other = dpop.new_key("ES256")
    body = dpop.claims(ath=dpop.ath(token))
    head = dpop.header("ES256", key)
    cases = {
        "private-jwk": dpop.mint("ES256", key, head={**head, "jwk": dpop.private_jwk(key)}, body=body),
        "wrong-typ": dpop.mint("ES256", key, head={**head, "typ": "JWT"}, body=body),
        "signed-by-another-key": dpop.mint("ES256", key, body=body, signer=other),
        "alg-none": f"{dpop.b64json({**head, 'alg': 'none'})}.{dpop.b64json(body)}.",
        "hs256-oct": dpop.mint(
            "ES256",
            key,
            header_json=json.dumps({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}),
            body=body,
        ),
        "garbage": "not-a-proof",
        "jwe": "a.b.c.d.e",
    }
    for name, value in cases.items():
        answer = ask(doors, door, dpop_headers(token, value))
        assert (answer.status, answer.reason) == (401, "dpop_proof_invalid"), name


def test_an_algorithm_outside_the_configured_list_is_invalid(world, tmp_path, door):
    doors = Doors(write_config(world, tmp_path, dpop_section="algorithms: [ES256]"))
    key = dpop.new_key("Ed25519")
    token = world.token(world.claims(cnf={"jkt": jkt(key)}))
    answer = ask(doors, door, dpop_headers(token, proof(key, token, alg="Ed25519")))
    denied(answer, "dpop_proof_invalid", 'DPoP error="invalid_dpop_proof", algs="ES256"')
    es = dpop.new_key("ES256")
    token = world.token(world.claims(cnf={"jkt": jkt(es)}))
    allowed(ask(doors, door, dpop_headers(token, proof(es, token))))


def test_two_dpop_headers_or_a_joined_pair_are_invalid(doors, door, key, token):
    one, two = proof(key, token), proof(key, token)
    both = [*dpop_headers(token, one), ("dpop", two)]
    denied(ask(doors, door, both), "dpop_proof_invalid")
    denied(ask(doors, door, dpop_headers(token, f"{one}, {two}")), "dpop_proof_invalid")
    denied(ask(doors, door, [*dpop_headers(token, one), ("dpop", one)]), "dpop_proof_invalid")
    allowed(ask(doors, door, dpop_headers(token, one)))  # neither request spent it


def test_a_proof_by_another_key_is_a_key_mismatch(doors, door, token):
    """A stolen token presented with the thief's own (valid) proof."""
    thief = dpop.new_key("ES256")
    denied(
        ask(doors, door, dpop_headers(token, proof(thief, token))), "dpop_key_mismatch", DPOP_INVALID_TOKEN
    )


def test_the_dpop_scheme_with_an_unbound_token_is_a_key_mismatch(doors, door, world, key):
    unbound = world.token()
    answer = ask(doors, door, dpop_headers(unbound, proof(key, unbound)))
    denied(answer, "dpop_key_mismatch", DPOP_INVALID_TOKEN)


def test_the_dpop_scheme_without_a_proof_is_missing(doors, door, token):
    denied(ask(doors, door, dpop_headers(token, None)), "dpop_proof_missing")


def test_a_bound_token_under_bearer_is_refused(doors, door, key, token):
    """Downgrade (RFC 9449 7.2): a DPoP-bound token is never a bearer token, proof or not."""
    for value in (None, proof(key, token)):
        answer = ask(doors, door, dpop_headers(token, value, scheme="Bearer"))
        denied(answer, "dpop_proof_missing", BEARER_INVALID_TOKEN)


def test_a_bearer_token_with_a_stray_dpop_header_ignores_it(doors, door, world, key):
    """An unbound token under Bearer: the DPoP header is not looked at, nothing is spent."""
    unbound = world.token()
    value = proof(key, unbound)
    allowed(ask(doors, door, dpop_headers(unbound, value, scheme="Bearer")))
    allowed(ask(doors, door, dpop_headers(unbound, "garbage", scheme="Bearer")))


CNF_CASES = {
    "empty": {},
    "list": [],
    "null": None,
    "both": {
        "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg0",
    },
    "jkt-and-kid": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "kid": "k"},
    "jwk": {"jwk": {"kty": "EC"}},
    "jkt-padded": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I="},
    "jkt-short": {"jkt": "0ZcOCORZNYy"},
    "rfc8705-example-non-canonical": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},
}


@pytest.mark.parametrize("cnf", CNF_CASES.values(), ids=CNF_CASES.keys())
def test_a_cnf_of_another_shape_is_unsupported(doors, door, world, cnf):
    token = world.token({**world.claims(), "cnf": cnf})  # cnf: null too (world.claims drops None)
    answer = ask(doors, door, [("authorization", f"Bearer {token}")])
    denied(answer, "cnf_unsupported", BEARER_INVALID_TOKEN)


def test_the_proof_is_read_before_the_token_costs_any_crypto(doors, door, key):
    """A garbage token with a garbage proof is refused for the proof: no decryption tried."""
    answer = ask(doors, door, dpop_headers("a.b.c.d.e", "x.y"))
    denied(answer, "dpop_proof_invalid")
    stale = proof(key, "a.b.c.d.e", iat=NOW - 3600)
    denied(ask(doors, door, dpop_headers("a.b.c.d.e", stale)), "dpop_proof_invalid")
    fresh = proof(key, "a.b.c.d.e")
    denied(ask(doors, door, dpop_headers("a.b.c.d.e", fresh)), "token_malformed", DPOP_INVALID_TOKEN)


def test_proofs_and_tokens_of_joserfc(doors, door, world):
    """A token and a proof minted by joserfc, the key's thumbprint by joserfc."""
    import warnings

    from joserfc import jwe, jwk, jwt

    client = jwk.generate_key("EC", "P-256", auto_kid=False)
    signing = jwk.import_key(json.loads(world.signing_keys["acme-es256"].export(private_key=True)))
    recipient = jwk.import_key(
        json.loads(world.decryption_keys["enc-rsa-oaep-256"].export(private_key=False))
    )
    inner = jwt.encode(
        {"alg": "ES256", "kid": "acme-es256", "typ": "at+jwt"},
        world.claims(cnf={"jkt": client.thumbprint()}),
        signing,
        algorithms=["ES256"],
    )
    token = jwe.encrypt_compact(
        {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": "enc-rsa-oaep-256"},
        inner,
        recipient,
        algorithms=["RSA-OAEP-256", "A256GCM"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = jwt.encode(
            {"typ": "dpop+jwt", "alg": "ES256", "jwk": client.as_dict(private=False)},
            dpop.claims(htu=URL, ath=dpop.ath(token)),
            client,
            algorithms=["ES256"],
        )
    allowed(ask(doors, door, dpop_headers(token, value)))
    denied(ask(doors, door, dpop_headers(token, value)), "dpop_proof_replayed")


# -- DPoP: server nonces ------------------------------------------------------------------------


def test_a_nonce_challenge_then_the_retry_with_it(nonce_config, door, key, token):
    """As a client does it: a proof without a nonce gets 401 use_dpop_nonce and a DPoP-Nonce;
    a new proof with that nonce is allowed, and the allow brings no new nonce (still current)."""
    doors = Doors(nonce_config)
    first = ask(doors, door, dpop_headers(token, proof(key, token)))
    denied(first, "dpop_nonce_required", USE_NONCE)
    assert first.nonce is not None
    assert len(first.nonce) == 28
    answer = ask(doors, door, dpop_headers(token, proof(key, token, nonce=first.nonce)))
    allowed(answer)
    assert answer.client == {}


def test_every_dpop_401_carries_the_current_nonce_and_bearer_ones_do_not(
    nonce_config, door, world, key, token
):
    doors = Doors(nonce_config)
    nonce = ask(doors, door, dpop_headers(token, proof(key, token))).nonce
    bad = ask(doors, door, dpop_headers(token, proof(key, token, nonce=nonce, method="POST")))
    denied(bad, "dpop_proof_invalid")
    assert bad.nonce == nonce
    bearer = ask(doors, door, [("authorization", "Bearer a.b.c.d.e")])
    assert bearer.reason == "token_malformed"
    assert bearer.nonce is None
    allowed(ask(doors, door, [("authorization", f"Bearer {world.token()}")]))


def test_a_nonce_in_its_last_window_is_accepted_and_refreshed(nonce_config, door, key, token):
    """Accepted for one to two lifetimes (120 s); in the last one the allow carries the next
    nonce, uncacheable (RFC 9449 8.2); past it the nonce is refused with the current one."""
    doors = Doors(nonce_config)
    nonce = ask(doors, door, dpop_headers(token, proof(key, token))).nonce
    doors.now = NOW + 120
    answer = ask(doors, door, dpop_headers(token, proof(key, token, nonce=nonce, iat=doors.now)))
    allowed(answer)
    assert answer.client["cache-control"] == "no-store"
    fresh = answer.client["dpop-nonce"]
    assert fresh != nonce
    doors.now = NOW + 240
    stale = ask(doors, door, dpop_headers(token, proof(key, token, nonce=nonce, iat=doors.now)))
    denied(stale, "dpop_nonce_required", USE_NONCE)
    assert stale.nonce not in (None, nonce)
    allowed(ask(doors, door, dpop_headers(token, proof(key, token, nonce=fresh, iat=doors.now))))


def test_a_forged_or_foreign_nonce_is_refused(nonce_config, door, key, token):
    doors = Doors(nonce_config)
    nonce = ask(doors, door, dpop_headers(token, proof(key, token))).nonce
    assert nonce is not None
    forged = nonce[:-4] + ("AAAA" if not nonce.endswith("AAAA") else "BBBB")
    for value in (forged, "eyJ7S_zG.eyJH0-Z.HX4w-7v"):  # the second: RFC 9449's example, not ours
        denied(
            ask(doors, door, dpop_headers(token, proof(key, token, nonce=value))),
            "dpop_nonce_required",
            USE_NONCE,
        )


def test_a_nonce_of_a_rotated_out_secret(world, tmp_path, door, key, token):
    """A reload that replaces the secret keeps the old one verify-only for two lifetimes (no
    client retries); a process that never had it refuses its nonces."""
    path = write_config(world, tmp_path, dpop_section="nonce: {required: true, secret: keys/nonce.jwks.json}")
    doors = Doors(path)
    nonce = ask(doors, door, dpop_headers(token, proof(key, token))).nonce
    (tmp_path / "keys" / "nonce.jwks.json").write_text(json.dumps(_nonce_file("n2")))
    doors.holder.swap(load_config(path))
    allowed(ask(doors, door, dpop_headers(token, proof(key, token, nonce=nonce))))
    fresh = Doors(load_config(path))
    answer = ask(fresh, door, dpop_headers(token, proof(key, token, nonce=nonce)))
    denied(answer, "dpop_nonce_required", USE_NONCE)
    allowed(ask(fresh, door, dpop_headers(token, proof(key, token, nonce=answer.nonce))))


def _nonce_file(*kids: str) -> dict[str, Any]:
    from testkit.sender import nonce_keys

    return nonce_keys(*kids)


# -- certificate-bound tokens --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert() -> Any:
    return make_cert()


@pytest.fixture(scope="module")
def cert_token(world: World, cert: Any) -> str:
    return world.token(world.claims(cnf={"x5t#S256": cert.x5t}))


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_certificate_bound_token_over_the_grpc_door(doors, cert, cert_token):
    """attributes.source.certificate (Envoy's URL-encoded PEM) must hash to cnf["x5t#S256"]."""
    allowed(doors.grpc(_bearer(cert_token), peer_certificate=cert.envoy))
    denied(
        doors.grpc(_bearer(cert_token), peer_certificate=make_cert().envoy),
        "client_certificate_mismatch",
        BEARER_INVALID_TOKEN,
    )
    denied(doors.grpc(_bearer(cert_token)), "client_certificate_missing", BEARER_INVALID_TOKEN)
    denied(
        doors.grpc(_bearer(cert_token), peer_certificate="garbage"),
        "client_certificate_missing",
        BEARER_INVALID_TOKEN,
    )


def test_the_grpc_door_never_falls_back_to_a_forwarded_certificate(doors, cert, cert_token):
    """With the peer certificate as the source, a client's x-forwarded-client-cert is no certificate."""
    answer = doors.grpc([*_bearer(cert_token), ("x-forwarded-client-cert", cert.xfcc)])
    denied(answer, "client_certificate_missing", BEARER_INVALID_TOKEN)


def test_the_grpc_door_reads_xfcc_when_configured(world, tmp_path, cert, cert_token):
    """request.client_certificate: xfcc (Istio: the gateway's sanitized XFCC): then only that."""
    doors = Doors(write_config(world, tmp_path, extra="request:\n  client_certificate: xfcc\n"))
    allowed(doors.grpc([*_bearer(cert_token), ("x-forwarded-client-cert", cert.xfcc)]))
    denied(
        doors.grpc(_bearer(cert_token), peer_certificate=cert.envoy),
        "client_certificate_missing",
        BEARER_INVALID_TOKEN,
    )


def test_a_certificate_bound_token_over_the_http_door(doors, cert, cert_token):
    """The XFCC Hash= Envoy sets (SANITIZE_SET): exactly one field, one element, one Hash."""
    allowed(doors.http([*_bearer(cert_token), ("x-forwarded-client-cert", cert.xfcc)]))
    other = make_cert()
    cases = {
        "client_certificate_mismatch": [("x-forwarded-client-cert", other.xfcc)],
        "client_certificate_missing": [],
    }
    for reason, extra in cases.items():
        denied(doors.http([*_bearer(cert_token), *extra]), reason, BEARER_INVALID_TOKEN)
    for extra in (
        [("x-forwarded-client-cert", f"{other.xfcc},{cert.xfcc}")],  # a forwarded element before Envoy's
        [("x-forwarded-client-cert", other.xfcc), ("x-forwarded-client-cert", cert.xfcc)],
        [("x-forwarded-client-cert", f"Hash={cert.fingerprint.hex().upper()}")],
        [("x-forwarded-client-cert", "By=spiffe://x")],
    ):
        denied(doors.http([*_bearer(cert_token), *extra]), "client_certificate_missing", BEARER_INVALID_TOKEN)


def test_the_dpop_scheme_with_a_certificate_bound_token_is_a_key_mismatch(doors, door, key, cert, cert_token):
    headers = [*dpop_headers(cert_token, proof(key, cert_token)), ("x-forwarded-client-cert", cert.xfcc)]
    denied(ask(doors, door, headers), "dpop_key_mismatch", DPOP_INVALID_TOKEN)


# -- sender_constraint and origins ---------------------------------------------------------------


def test_a_tenant_that_requires_a_bound_token(doors, door, world, key, cert):
    unbound = world.token(world.claims(tenant="bound"))
    denied(
        ask(doors, door, _bearer(unbound), host="api.bound.test"),
        "sender_constraint_required",
        BEARER_INVALID_TOKEN,
    )
    allowed(ask(doors, door, _bearer(unbound), host="api.bound.test", path="/open"))  # the rule says optional
    bound = world.token(world.claims(tenant="bound", cnf={"jkt": jkt(key)}))
    for url in ("https://public.bound.test:8443/orders", "https://BOUND.example:443/orders"):
        allowed(ask(doors, door, dpop_headers(bound, proof(key, bound, url=url)), host="api.bound.test"))
    # With origins, the URL Envoy saw is not one of them.
    seen = proof(key, bound, url="https://api.bound.test/orders")
    denied(ask(doors, door, dpop_headers(bound, seen), host="api.bound.test"), "dpop_proof_invalid")
    by_cert = world.token(world.claims(tenant="bound", cnf={"x5t#S256": cert.x5t}))
    if door == "grpc":
        allowed(doors.grpc(_bearer(by_cert), host="api.bound.test", peer_certificate=cert.envoy))
    else:
        allowed(
            doors.http([*_bearer(by_cert), ("x-forwarded-client-cert", cert.xfcc)], host="api.bound.test")
        )


def test_a_rule_that_requires_a_bound_token(doors, door, world, key):
    unbound = world.token(world.claims(tenant="ruled"))
    allowed(ask(doors, door, _bearer(unbound), host="api.ruled.test"))
    denied(
        ask(doors, door, _bearer(unbound), host="api.ruled.test", path="/admin"),
        "sender_constraint_required",
        BEARER_INVALID_TOKEN,
    )
    bound = world.token(world.claims(tenant="ruled", cnf={"jkt": jkt(key)}))
    value = proof(key, bound, url="https://api.ruled.test/admin")
    allowed(ask(doors, door, dpop_headers(bound, value), host="api.ruled.test", path="/admin"))


def test_a_dry_run_tenant_records_binding_failures(doors, door, world, key):
    """sender_constraint: required rolled out in dry-run first: each failure is a dry-run-deny."""
    unbound = world.token(world.claims(tenant="dryb"))
    answer = ask(doors, door, _bearer(unbound), host="api.dryb.test")
    assert (answer.status, answer.decision, answer.reason) == (
        200,
        "dry-run-deny",
        "sender_constraint_required",
    )
    bound = world.token(world.claims(tenant="dryb", cnf={"jkt": jkt(key)}))
    for value, reason in (
        (proof(key, bound, url="https://api.dryb.test/orders", method="PUT"), "dpop_proof_invalid"),
        (proof(dpop.new_key("ES256"), bound, url="https://api.dryb.test/orders"), "dpop_key_mismatch"),
        (None, "dpop_proof_missing"),
    ):
        answer = ask(doors, door, dpop_headers(bound, value), host="api.dryb.test")
        assert (answer.status, answer.decision, answer.reason) == (200, "dry-run-deny", reason)
    downgrade = ask(doors, door, _bearer(bound), host="api.dryb.test")
    assert (downgrade.decision, downgrade.reason) == ("dry-run-deny", "dpop_proof_missing")


def test_without_origins_or_a_scheme_the_proof_cannot_be_checked(doors, key, token):
    """The HTTP door without x-forwarded-proto (an Envoy that does not forward it) and no origins."""
    denied(doors.http(dpop_headers(token, proof(key, token)), scheme=None), "dpop_proof_invalid")


def test_the_request_scheme_and_port_as_envoy_reports_them(doors, door, key, token):
    """Without origins: Envoy's scheme and Host, the port kept when Envoy keeps it."""
    http = proof(key, token, url="http://api.acme.test/orders")
    allowed(ask(doors, door, dpop_headers(token, http), scheme="http"))
    port = proof(key, token, url="https://api.acme.test:8443/orders")
    allowed(ask(doors, door, dpop_headers(token, port), host="api.acme.test:8443"))
    default = proof(key, token, url="https://api.acme.test/orders")
    allowed(ask(doors, door, dpop_headers(token, default), host="api.acme.test:443"))


# -- caches and the memo --------------------------------------------------------------------------


def test_the_memo_never_answers_a_dpop_request(doors, key, token, world):
    """The HTTP door's memo: a bearer repeat is a hit; a replayed proof never is (it is decided
    and denied), nor is a bearer request carrying a DPoP header."""
    unbound = world.token()
    allowed(doors.http(_bearer(unbound)))
    allowed(doors.http(_bearer(unbound)))
    assert doors.door.memo_hits == 1
    headers = dpop_headers(token, proof(key, token))
    allowed(doors.http(headers))
    denied(doors.http(headers), "dpop_proof_replayed")
    stray = [*_bearer(unbound), ("dpop", "x")]
    allowed(doors.http(stray))
    allowed(doors.http(stray))
    assert doors.door.memo_hits == 1
    assert doors.door.memo_entries == 1  # the bearer allow only


def test_the_memo_key_holds_the_certificate(doors, cert, cert_token):
    """A certificate-bound token's allow is repeated for the same certificate only."""
    right = [*_bearer(cert_token), ("x-forwarded-client-cert", cert.xfcc)]
    allowed(doors.http(right))
    allowed(doors.http(right))
    assert doors.door.memo_hits == 1
    denied(
        doors.http([*_bearer(cert_token), ("x-forwarded-client-cert", make_cert().xfcc)]),
        "client_certificate_mismatch",
        BEARER_INVALID_TOKEN,
    )
    denied(doors.http(_bearer(cert_token)), "client_certificate_missing", BEARER_INVALID_TOKEN)
    assert doors.door.memo_hits == 1


def test_the_token_cache_keeps_the_token_and_every_proof_is_verified(doors, door, key, token):
    """The second request's token is a cache hit; its proof, signed by another key, is not let through."""
    allowed(ask(doors, door, dpop_headers(token, proof(key, token))))
    thief = dpop.new_key("ES256")
    forged = dpop.mint("ES256", key, body=dpop.claims(htu=URL, ath=dpop.ath(token)), signer=thief)
    denied(ask(doors, door, dpop_headers(token, forged)), "dpop_proof_invalid")


# -- the replay store's bounds -------------------------------------------------------------------


def test_a_full_replay_cache_refuses_and_never_evicts(world, tmp_path, door, key, token):
    doors = Doors(write_config(world, tmp_path, dpop_section="replay_cache_size: 1"))
    headers = dpop_headers(token, proof(key, token))
    allowed(ask(doors, door, headers))
    full = ask(doors, door, dpop_headers(token, proof(key, token)))
    assert (full.status, full.reason, full.challenge) == (503, "dpop_replay_cache_full", None)
    denied(ask(doors, door, headers), "dpop_proof_replayed")  # the first entry stays
    doors.now = NOW + 71  # max_age + 2 x clock_skew later, the entry expired
    value = proof(key, token, iat=doors.now)
    allowed(ask(doors, door, dpop_headers(token, value)))


# -- what is recorded ------------------------------------------------------------------------------


def test_the_binding_and_a_short_key_hash_are_recorded_never_the_proof(
    doors, world, key, token, cert, cert_token, caplog
):
    caplog.set_level("INFO", logger="authz.decision")
    value = proof(key, token)
    unbound = world.token()
    allowed(doors.grpc(dpop_headers(token, value)))
    allowed(doors.grpc(_bearer(cert_token), peer_certificate=cert.envoy))
    allowed(doors.http(_bearer(unbound)))
    lines = [record.fields for record in caplog.records if hasattr(record, "fields")]
    assert [line["binding"] for line in lines[-3:]] == ["dpop", "mtls", "none"]
    key_hash = lines[-3]["dpop_key"]
    assert len(key_hash) == 12
    assert "dpop_key" not in lines[-2]
    assert "dpop_key" not in lines[-1]
    text = json.dumps(lines)
    for secret in (value, jkt(key), value.split(".")[1], token, unbound, cert.x5t):
        assert secret not in text
    values = doors.telemetry.bindings.values
    assert values[("dpop",)] == values[("mtls",)] == values[("none",)] == 1


def test_decision_fields(sender_config, key, token):
    """The decision itself: binding, scheme and the short key hash (what telemetry reads)."""
    from authz.core.decision import decide
    from authz.http.wire import from_http

    request = from_http("GET", "/orders", {"host": ("api.acme.test",), "x-forwarded-proto": ("https",),
                                            "authorization": (f"DPoP {token}",), "dpop": (proof(key, token),)})  # fmt: skip
    decision = decide(sender_config.snapshot, request, NOW)
    assert decision.verdict is Verdict.ALLOW
    assert decision.dpop
    assert decision.binding.value == "dpop"
    assert decision.claim is not None  # left for the check sequence


def test_the_scheme_is_checked_against_the_binding_before_the_proof(
    doors, door, world, key, cert, cert_token
):
    """A token not bound to a key under DPoP is a key mismatch even when its proof names another
    URL: the binding decides before the proof's htu is looked at."""
    unbound = world.token()
    stray = proof(key, unbound, url="https://api.globex.test/elsewhere")
    denied(ask(doors, door, dpop_headers(unbound, stray)), "dpop_key_mismatch", DPOP_INVALID_TOKEN)
    stray = proof(key, cert_token, url="https://api.globex.test/elsewhere")
    denied(ask(doors, door, dpop_headers(cert_token, stray)), "dpop_key_mismatch", DPOP_INVALID_TOKEN)


def test_a_reload_keeps_the_replay_cache(doors, door, key, token, sender_config):
    """The replay cache is the process's, not the configuration's: a proof spent before a reload
    is a replay after it (an emptied cache would re-open every live proof)."""
    headers = dpop_headers(token, proof(key, token))
    allowed(ask(doors, door, headers))
    doors.holder.swap(sender_config)
    denied(ask(doors, door, headers), "dpop_proof_replayed")


def test_the_door_keeps_one_entry_per_certificate(doors, world, cert):
    """The HTTP door's memo key holds the certificate bytes: the same request from two clients
    keeps two entries (each repeated for its own certificate only)."""
    unbound = world.token()
    other = make_cert()
    for value in (cert.xfcc, other.xfcc, cert.xfcc, other.xfcc):
        allowed(doors.http([*_bearer(unbound), ("x-forwarded-client-cert", value)]))
    assert doors.door.memo_entries == 2
    assert doors.door.memo_hits == 2


def test_the_span_carries_the_binding_and_the_key_hash(doors, key, token):
    """What a traced check's span gets: authz.binding, authz.dpop.key_hash (never the thumbprint)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from authz.telemetry.recorder import Telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    doors.telemetry = Telemetry(provider)
    doors.door.telemetry = doors.telemetry
    doors.door.checker.recorder = doors.telemetry
    allowed(doors.http(dpop_headers(token, proof(key, token))))
    (span,) = [s for s in exporter.get_finished_spans() if "authz.decision" in (s.attributes or {})]
    attributes = dict(span.attributes or {})
    assert attributes["authz.binding"] == "dpop"
    assert len(attributes["authz.dpop.key_hash"]) == 12
    assert jkt(key) not in json.dumps(attributes)
