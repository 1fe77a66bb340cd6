"""The gRPC door with its answer memo on and off: the same answer to every policy case, every time.

Every case of the doors' parity table (tests/http/test_http_parity.py), three times over at
each moment while the clock crosses nbf/iat, exp and the skew (forward, then back), across a
reload and across JWKS refreshes (the same keys, then a signing key retired). The memo-on
service answers many of them from its memo; the memo-off one decides each. Sender-constrained
tokens too: certificate-bound (the certificate read from the peer, or x-forwarded-client-cert)
and DPoP-bound, through the same sweep.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authz.app.jwks import JwksRegistry, RemoteJwks
from authz.config import Config, SnapshotHolder, load_config
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.recorder import Telemetry
from testkit import dpop, sender
from testkit.jwks_server import CertificateAuthority, JwksServer
from testkit.world import ACME_IDP, CONFIG, INNER_ALGS, NOW, World, check_request
from tests.grpc.test_grpc_memo import raw_request
from tests.http.test_http_parity import CASES

# Every test here runs with each of the door's two readings of a repeat (tests/grpc/conftest.py).
pytestmark = pytest.mark.usefixtures("reader")

SKEW = 30  # CONFIG's clock_skew
EXP = NOW + 300  # the world's tokens: iat = nbf = NOW, exp = NOW + 300
# Each side of every boundary a repeat's answer depends on: nbf/iat and the skew before them,
# exp (the verified-token cache lets go there) and the skew after it.
MOMENTS = [NOW - SKEW - 1, NOW - SKEW, NOW - 1, NOW, NOW + 1, EXP - 1, EXP - 0.001, EXP, EXP + SKEW - 1, EXP + SKEW]  # fmt: skip
REPEATS = 3


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class Pair:
    """Two services on the same configuration file, one with ``server.memo_size: 0``."""

    def __init__(self, load: Callable[[], Config], clock: Clock) -> None:
        self.load = load
        self.on = SnapshotHolder(load())
        self.off = SnapshotHolder(_without_memo(load()))
        self.memo = AuthorizationService(self.on, clock, Telemetry())
        self.plain = AuthorizationService(self.off, clock, Telemetry())

    def reload(self) -> None:
        self.on.swap(self.load())
        self.off.swap(_without_memo(self.load()))

    async def agree(self, messages: list[bytes]) -> list[CheckResponse]:
        """Every message, REPEATS times, through both: the same answers (as messages: map order may differ)."""
        for _ in range(REPEATS):
            with_memo = [CheckResponse.FromString(await self.memo.answer(m, None)) for m in messages]
            without = [CheckResponse.FromString(await self.plain.answer(m, None)) for m in messages]
            assert with_memo == without
        assert self.plain.memo_hits == 0
        return without


def _without_memo(config: Config) -> Config:
    return replace(config, server=replace(config.server, memo_size=0))


def _messages(world: World) -> list[bytes]:
    specs = [
        {"method": "GET", "path": "/orders", "host": "api.acme.test", **build(world)} for _, build in CASES
    ]
    return [check_request(**spec).SerializeToString() for spec in specs]


def _reasons(answers: list[CheckResponse]) -> set[str]:
    return {a.dynamic_metadata.fields["reason"].string_value for a in answers}


async def test_memo_on_and_off_answer_alike_across_the_clock_and_a_reload(
    world: World, tmp_path: Path
) -> None:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    clock = Clock()
    pair = Pair(lambda: load_config(path), clock)
    messages = _messages(world)
    seen: set[str] = set()
    for moment in [*MOMENTS, *reversed(MOMENTS)]:
        clock.now = float(moment)
        seen |= _reasons(await pair.agree(messages))
    # The sweep went through every kind of answer a token's time gives.
    assert {"ok", "token_not_yet_valid", "token_expired", "scope_missing"} <= seen
    hits = pair.memo.memo_hits
    assert hits > 0

    clock.now = float(NOW + 1)
    before = await pair.agree(messages)
    path.write_text(CONFIG.replace("scopes: [orders:read]", "scopes: [orders:write]"))
    pair.reload()  # a tightened rule: the memo's allows of the old snapshot must not answer
    tightened = await pair.agree(messages)
    assert tightened != before
    path.write_text(CONFIG)
    pair.reload()
    assert await pair.agree(messages) == before
    assert pair.memo.memo_hits > hits


# -- across JWKS refreshes: acme's keys from a real HTTPS JWKS endpoint ------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(folder, "parity")
    return ca.ca_file, ca.server_files(folder, "jwks")


@pytest.fixture
def idp(pki: tuple[Path, tuple[Path, Path]]) -> Iterator[JwksServer]:
    server = JwksServer(pki[1])
    try:
        yield server
    finally:
        server.stop()


async def test_memo_on_and_off_answer_alike_across_jwks_refreshes(
    world: World, tmp_path: Path, pki: tuple[Path, tuple[Path, Path]], idp: JwksServer
) -> None:
    acme = [world.signing_keys[kid] for kid in INNER_ALGS.values()]
    idp.serve_keys(acme)
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    remote = f"jwks_uri: {idp.url()}\n    ca_file: {pki[0]}\n    refresh_interval: 300\n    min_refetch_interval: 30"
    text = CONFIG.replace(
        f"issuer: {ACME_IDP}\n    jwks: keys/acme-idp.jwks.json", f"issuer: {ACME_IDP}\n    {remote}"
    )
    assert text != CONFIG
    path = tmp_path / "config.yaml"
    path.write_text(text)
    registry = JwksRegistry()  # one source for both services' configurations
    clock = Clock()
    pair = Pair(lambda: load_config(path, registry), clock)
    source = _remote(pair.on.current)
    assert source is _remote(pair.off.current)
    assert await source.fetch()
    clock.now = float(NOW + 1)
    messages = _messages(world)
    first = await pair.agree(messages)
    hits = pair.memo.memo_hits
    assert hits > 0

    assert await source.fetch()  # the same keys again: cached tokens and their answers hold
    assert await pair.agree(messages) == first
    assert pair.memo.memo_hits > hits

    retired = INNER_ALGS["ES256"]  # the world's tokens are signed with it
    idp.serve_keys([key for key in acme if key["kid"] != retired])
    assert await source.fetch()
    after = await pair.agree(messages)
    assert "signing_key_unknown" in _reasons(after)
    assert after != first


def _remote(config: Config | None) -> RemoteJwks:
    assert config is not None
    (source,) = {
        id(k.remote): k.remote for k in config.snapshot.token_keys.issuers.values() if k.remote
    }.values()
    assert isinstance(source, RemoteJwks)
    return source


# -- sender-constrained tokens: never DPoP, a certificate-bound answer for its certificate only ------


@pytest.mark.parametrize("source", ["peer", "xfcc"])
async def test_memo_on_and_off_answer_alike_for_sender_constrained_tokens(
    world: World, tmp_path: Path, source: str
) -> None:
    """A certificate-bound token with its certificate, another, none; a DPoP-bound token with a
        fresh proof at each moment (then replayed), and sent as Bearer; an unbound token, alone and with
    a proof; through the clock sweep.
        The memo-on service answers the certificate-bound repeats from its memo, never a DPoP one."""
    extra = "request:\n  client_certificate: xfcc\n" if source == "xfcc" else ""
    path = sender.write_config(world, tmp_path, extra=extra)
    clock = Clock()
    pair = Pair(lambda: load_config(path), clock)
    cert, other = sender.make_cert(), sender.make_cert("other")
    bound = world.token(world.claims(cnf={"x5t#S256": cert.x5t}))
    key = dpop.new_key("ES256")
    held = world.token(world.claims(cnf={"jkt": sender.jkt(key)}))
    plain = world.token()

    def presenting(presented: sender.Cert | None) -> bytes:
        if source == "xfcc":
            extra = [("x-forwarded-client-cert", presented.xfcc)] if presented else []
            return raw_request(bound, extra=extra).SerializeToString()
        message = raw_request(bound)
        message.attributes.source.certificate = presented.envoy if presented else ""
        return message.SerializeToString()

    seen: set[str] = set()
    for moment in [*MOMENTS, *reversed(MOMENTS)]:
        clock.now = float(moment)
        proofs = [sender.proof(key, held, iat=moment) for _ in range(2)]
        messages = [
            presenting(cert),
            presenting(other),
            presenting(None),
            *(raw_request(extra=sender.dpop_headers(held, p)).SerializeToString() for p in proofs),
            raw_request(extra=sender.dpop_headers(held, proofs[0], "Bearer")).SerializeToString(),
            raw_request(held).SerializeToString(),
            raw_request(plain).SerializeToString(),
            # a stray proof beside a Bearer token: never a memo answer (test_grpc_memo), the same answer
            raw_request(plain, extra=[("dpop", proofs[0])]).SerializeToString(),
        ]
        seen |= _reasons(await pair.agree(messages))
    assert {"ok", "client_certificate_mismatch", "client_certificate_missing"} <= seen
    assert {"dpop_proof_replayed", "dpop_proof_missing", "token_expired", "token_not_yet_valid"} <= seen
    assert pair.memo.memo_hits > 0  # the certificate-bound token's repeats
    assert pair.memo.memo_entries == 2  # and nothing else: its one certificate, the unbound token
