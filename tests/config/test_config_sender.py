"""Configuration of sender-constrained tokens: the ``dpop`` section, tenants' ``sender_constraint``
and ``origins``, rules' ``sender_constraint``, ``request.client_certificate``; every bad value
rejected with file, line and reason; the nonce secret watched and rotated by reload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from authz.app.reload import Reloader
from authz.config import SnapshotHolder, load_config
from authz.core.policy import SenderConstraint
from authz.core.request import CertificateSource
from authz.jose.dpop import DEFAULT_ALGORITHMS
from testkit.sender import nonce_keys
from tests.app.test_reload import DEBOUNCE, INTERVAL, wait_generation
from tests.config.test_config import MARK, SPEC_CONFIG, edit, load_error, marked_line

NONCE = "dpop:\n  nonce:\n    required: true\n    secret: keys/nonce.jwks.json\n"


@pytest.fixture
def folder(world, tmp_path) -> Path:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    (tmp_path / "keys" / "nonce.jwks.json").write_text(json.dumps(nonce_keys("n1")), encoding="utf-8")
    return tmp_path


def test_defaults(folder):
    path = folder / "config.yaml"
    path.write_text(SPEC_CONFIG, encoding="utf-8")
    config = load_config(path)
    dpop = config.snapshot.dpop
    assert (dpop.algorithms, dpop.max_age, dpop.skew, dpop.nonce) == (DEFAULT_ALGORITHMS, 60, 5, None)
    assert dpop.replay_cache_size == 1_000_000
    assert dpop.replay_window == 70
    assert config.snapshot.certificate_source is CertificateSource.PEER
    acme = config.snapshot.tenants.by_name["acme"]
    assert (acme.sender_constraint, acme.origins) == (SenderConstraint.OPTIONAL, ())
    assert all(rule.sender_constraint is None for rule in acme.rules)


def test_every_setting(folder):
    text = edit(
        "    mode: enforce                    # or dry-run\n",
        "    mode: enforce\n    sender_constraint: required\n"
        '    origins: ["HTTPS://API.Acme.Test:443", "https://api.acme.test:8443", "http://[::1]:80/"]\n',
    )
    text = edit(
        "        scopes: [orders:read]        # all required\n", "        sender_constraint: optional\n", text
    )
    text += "request:\n  client_certificate: xfcc\n" if "request:" not in text else ""
    text = edit("  path_parameters: reject ", "  client_certificate: xfcc\n  path_parameters: reject ", text)
    text += NONCE + "  algorithms: [EdDSA, ES256]\n  max_age: 30\n  clock_skew: 2\n  replay_cache_size: 5\n"
    text = text.replace("    required: true\n", "    required: true\n    lifetime: 60\n")
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    dpop = config.snapshot.dpop
    assert (dpop.algorithms, dpop.challenge_algs, dpop.max_age, dpop.skew) == (
        ("EdDSA", "ES256"),
        "EdDSA ES256",
        30,
        2,
    )
    assert dpop.nonce is not None
    assert (dpop.nonce.lifetime, dpop.nonce.skew, dpop.replay_cache_size) == (60, 2, 5)
    assert [key.kid for key in dpop.nonce.keys] == ["n1"]
    assert str(folder / "keys" / "nonce.jwks.json") in config.files  # watched like the other key files
    acme = config.snapshot.tenants.by_name["acme"]
    assert acme.sender_constraint is SenderConstraint.REQUIRED
    assert acme.origins == ("https://api.acme.test", "https://api.acme.test:8443", "http://[::1]")
    assert acme.rules[1].sender_constraint is SenderConstraint.OPTIONAL
    assert config.snapshot.certificate_source is CertificateSource.XFCC


def test_a_secret_without_required_is_read_and_checked_not_used(folder):
    path = folder / "config.yaml"
    path.write_text(SPEC_CONFIG + NONCE.replace("true", "false"), encoding="utf-8")
    config = load_config(path)
    assert config.snapshot.dpop.nonce is None
    assert str(folder / "keys" / "nonce.jwks.json") in config.files


ERRORS = [
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  algorithms: [ES256, HS256] {MARK}\n",
        "config.dpop.algorithms[1]: 'HS256' is not an asymmetric DPoP algorithm",
        id="hmac",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  algorithms: [none] {MARK}\n",
        "'none' is not an asymmetric DPoP algorithm",
        id="none",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  algorithms: [] {MARK}\n",
        "config.dpop.algorithms: must not be empty",
        id="empty",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  algorithms: [ES256, ES256] {MARK}\n",
        "an algorithm is listed twice",
        id="twice",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  max_age: 0 {MARK}\n",
        "config.dpop.max_age: must be a positive integer",
        id="max-age",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  replay_cache_size: 0 {MARK}\n",
        "must be a positive integer",
        id="replay-size",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  nonce: {MARK}\n    required: true\n",
        "required nonces need a secret",
        id="no-secret",
    ),
    pytest.param(
        SPEC_CONFIG + NONCE + f"    lifetime: 5 {MARK}\n",
        "must be longer than dpop.clock_skew",
        id="lifetime",
    ),
    pytest.param(
        SPEC_CONFIG + f"dpop:\n  nonce: {{required: 'yes'}} {MARK}\n",
        "must be true or false",
        id="required-type",
    ),
    pytest.param(
        edit("    mode: enforce ", f"    sender_constraint: sometimes {MARK}\n    mode: enforce "),
        "config.tenants[0].sender_constraint: must be optional or required",
        id="tenant-constraint",
    ),
    pytest.param(
        edit(
            "        public: true ",
            f"        public: true\n        sender_constraint: required {MARK}\n        #",
        ),
        "a public rule takes no token: no sender constraint",
        id="public-rule",
    ),
    pytest.param(
        edit("    mode: enforce ", f"    origins: [https://api.acme.test/v1] {MARK}\n    mode: enforce "),
        "an origin has no path",
        id="origin-path",
    ),
    pytest.param(
        edit("    mode: enforce ", f"    origins: [ftp://api.acme.test] {MARK}\n    mode: enforce "),
        "not an http(s) origin",
        id="origin-scheme",
    ),
    pytest.param(
        edit(
            "    mode: enforce ",
            f"    origins: [https://a.test, HTTPS://A.TEST:443] {MARK}\n    mode: enforce ",
        ),
        "is listed twice",
        id="origin-twice",
    ),
    pytest.param(
        edit(
            "  path_parameters: reject ", f"  client_certificate: header {MARK}\n  path_parameters: reject "
        ),
        "config.request.client_certificate: must be peer or xfcc",
        id="certificate-source",
    ),
]


@pytest.mark.parametrize(("text", "reason"), ERRORS)
def test_a_bad_value_names_file_line_and_reason(folder, text, reason):
    error = load_error(folder, text)
    assert error.file == str(folder / "config.yaml")
    assert reason in error.reason
    assert error.line == marked_line(text)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read nonce key file"),
        ("{", "not valid JSON"),
        (json.dumps({"keys": [{"kty": "oct", "kid": "a", "k": "AAAA"}]}), "a secret of at least 32 bytes"),
        (json.dumps({"keys": [{"kty": "RSA", "kid": "a"}]}), '"kty": "oct"'),
    ],
    ids=["missing", "not-json", "short", "not-oct"],
)
def test_a_bad_nonce_key_file_names_itself_and_where_it_is_referenced(folder, content, reason):
    nonce = folder / "keys" / "nonce.jwks.json"
    if content is None:
        nonce.unlink()
    else:
        nonce.write_text(content, encoding="utf-8")
    text = SPEC_CONFIG + NONCE
    error = load_error(folder, text)
    assert error.file == str(nonce)
    assert reason in error.reason
    line = text.splitlines().index("    secret: keys/nonce.jwks.json") + 1
    assert f"referenced from {folder / 'config.yaml'}:{line}" in error.reason


async def test_a_changed_nonce_secret_is_reloaded_and_the_old_key_verifies_meanwhile(folder):
    """Replacing the file swaps the signing key; nonces of the old one stay valid for two lifetimes."""
    path = folder / "config.yaml"
    path.write_text(SPEC_CONFIG + NONCE, encoding="utf-8")
    now = [1_900_000_000.0]
    holder = SnapshotHolder(load_config(path), clock=lambda: now[0])
    issuer = holder.current.snapshot.dpop.nonce
    assert issuer is not None
    nonce = issuer.issue(now[0])
    reloader = Reloader(holder, str(path), interval=INTERVAL, debounce=DEBOUNCE)
    reloader.start()
    try:
        (folder / "keys" / "nonce.jwks.json").write_text(json.dumps(nonce_keys("n2")), encoding="utf-8")
        await wait_generation(reloader, 2)
    finally:
        await reloader.stop()
    after = holder.current.snapshot.dpop.nonce
    assert after is not None
    assert [key.kid for key in after.keys] == ["n2"]
    assert after.issue(now[0]) != nonce  # the new key signs
    assert after.verify(nonce, now[0])  # the old one still verifies
    assert not after.verify(nonce, now[0] + 2 * 120 + 1)


def test_a_reload_raising_max_age_judges_proofs_made_before_it_by_the_old_one(folder):
    """Security review of issue 14, finding B: replay entries made under max_age 10 expire by it;
    after a reload to 60 a proof accepted before would pass its age check again once its entry
    is gone. The holder narrows the replay store's memory, so it is refused instead."""
    from authz.core.replay import ReplayVerdict

    path = folder / "config.yaml"
    path.write_text(SPEC_CONFIG + "dpop:\n  max_age: 10\n", encoding="utf-8")
    now = [1_900_000_000.0]
    holder = SnapshotHolder(load_config(path), clock=lambda: now[0])
    iat = now[0]
    replay = holder.replay
    assert replay.claim_now(b"captured", iat + 10 + 5, now[0], issued_at=iat) is ReplayVerdict.FRESH  # type: ignore[attr-defined]

    path.write_text(SPEC_CONFIG + "dpop:\n  max_age: 60\n", encoding="utf-8")
    now[0] += 1
    holder.swap(load_config(path))
    now[0] = iat + 30  # the entry expired at iat + 15; the proof is 30 s old, within 60
    verdict = replay.claim_now(b"captured", iat + 60 + 5, now[0], issued_at=iat)  # type: ignore[attr-defined]
    assert verdict is ReplayVerdict.UNREMEMBERED
    # a proof made after the reload gets the new max_age
    assert replay.claim_now(b"later", iat + 2 + 65, iat + 50, issued_at=iat + 2) is ReplayVerdict.FRESH  # type: ignore[attr-defined]

    # lowering it again adds no break: entries outlive the shorter window anyway
    path.write_text(SPEC_CONFIG + "dpop:\n  max_age: 20\n", encoding="utf-8")
    breaks = replay.memory.breaks
    holder.swap(load_config(path))
    assert replay.memory.breaks == breaks  # type: ignore[attr-defined]
