"""The store: and revocation: sections, and the revocation file: good ones load, bad ones name file, line, reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from authz.config import Config, load_config
from authz.core.revocation import EntryKind, jti_hash
from authz.errors import ConfigError
from testkit.world import CONFIG, World

MARK = "# <-"


@pytest.fixture
def folder(world: World, tmp_path: Path) -> Path:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    return tmp_path


def _load(folder: Path, section: str) -> Config:
    path = folder / "config.yaml"
    path.write_text(CONFIG + section, encoding="utf-8")
    return load_config(path)


def _error(folder: Path, section: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(folder, section)
    return info.value


def _line(section: str) -> int:
    """The line of the config (CONFIG + section) that carries MARK."""
    text = CONFIG + section
    return next(i for i, line in enumerate(text.splitlines(), 1) if MARK in line)


def test_a_store_section_loads_with_its_defaults(folder: Path) -> None:
    (folder / "store-password").write_text("s3cret\n", encoding="utf-8")
    config = _load(folder, "store:\n  url: redis://cache.internal:6380/2\n  password_file: store-password\n")
    store = config.store
    assert store is not None
    assert (store.hosts, store.db, store.tls, store.password) == (
        (("cache.internal", 6380),),
        2,
        False,
        b"s3cret",
    )
    assert (store.key_prefix, store.timeout, store.local_fallback, store.sentinel_service) == (
        "authz:",
        0.05,
        False,
        None,
    )
    assert "s3cret" not in repr(store)
    assert str(folder / "store-password") in config.files  # a rotated password reloads the config
    assert config.revocation.file is None
    assert (config.revocation.max_staleness, config.revocation.serve_stale) == (30.0, False)


def test_sentinel_and_tls_forms(folder: Path) -> None:
    config = _load(folder, "store:\n  url: rediss+sentinel://authz@s1:26380,s2,[::1]:26381/primary/3\n")
    store = config.store
    assert store is not None
    assert store.hosts == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (store.sentinel_service, store.db, store.tls, store.username) == ("primary", 3, True, "authz")


def test_without_a_store_nothing_is_shared(config: Config) -> None:
    assert config.store is None
    assert config.revocation.entries == ()


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ("store:\n  url: http://cache:6379  # <-\n", "must be a redis://, rediss://, redis+sentinel://"),
        ("store:\n  url: redis://user:pw@cache:6379  # <-\n", "no password: use password_file"),
        ("store:\n  url: redis://cache:99999  # <-\n", "the port must be 1-65535"),
        ("store:\n  url: redis://cache:6379/16  # <-\n", "the database number (0-15)"),
        ("store:\n  url: redis://a:1,b:2/0  # <-\n", "several hosts need redis+sentinel://"),
        ("store:\n  url: redis+sentinel://s1:26379  # <-\n", "a Sentinel URL names the service"),
        ("store:\n  url: redis://cache?db=1  # <-\n", "query and fragment are not read"),
        (
            "store:\n  url: redis://cache\n  timeout: 0  # <-\n",
            "must be a number of seconds above 0, at most 5",
        ),
        ("store:\n  url: redis://cache\n  on_unavailable: allow  # <-\n", "must be deny or local"),
        ("store:\n  url: redis://cache\n  key_prefix: 'a{b}'  # <-\n", "at most 64 letters"),
        ("store:\n  url: redis://cache\n  ca_file: ca.pem  # <-\n", "only applies with rediss://"),
        ("store:\n  url: redis://cache\n  tiemout: 1  # <-\n", "unknown key"),
        ("store:\n  url: redis://cache\nrevocation:\n  on_stale: allow  # <-\n", "must be deny or serve"),
        (
            "store:\n  url: redis://cache\nrevocation:\n  max_staleness: 5\n  resync_interval: 5  # <-\n",
            "must be shorter than max_staleness",
        ),
        ("revocation:\n  max_staleness: 10  # <-\n", "only applies to revocations from the store"),
    ],
)
def test_bad_store_settings_name_file_line_and_reason(folder: Path, section: str, reason: str) -> None:
    error = _error(folder, section)
    assert error.file == str(folder / "config.yaml")
    assert error.line == _line(section), error
    assert reason in error.reason, error


def test_an_unreadable_password_file_names_the_file_and_where_it_is_named(folder: Path) -> None:
    section = "store:\n  url: redis://cache\n  password_file: missing-password  # <-\n"
    error = _error(folder, section)
    assert error.file == str(folder / "missing-password")
    assert f"config.yaml:{_line(section)}" in error.reason
    assert "cannot read store password" in error.reason
    (folder / "empty-password").write_text("\n", encoding="utf-8")
    section = "store:\n  url: redis://cache\n  password_file: empty-password  # <-\n"
    error = _error(folder, section)
    assert (error.line, "one non-empty line" in error.reason) == (_line(section), True)


# -- the revocation file --------------------------------------------------------------------------


def test_a_revocation_file_loads_its_entries(folder: Path) -> None:
    (folder / "revoked.yaml").write_text(
        "revoked:\n"
        "  - jti: token-1\n"
        "    expires: 2030-01-01T00:00:00Z\n"
        "  - jti_hash: " + "ab" * 16 + "\n"
        "    expires: 1900000300\n"
        "  - subject: alice\n"
        "    issuer: https://idp.acme.test\n"
        "    before: '2029-12-31T23:00:00+00:00'\n"
        "  - client: app-1\n"
        "    issuer: https://idp.acme.test\n"
        "    before: 1900000000\n"
        "    expires: 1900000600\n",
        encoding="utf-8",
    )
    config = _load(folder, "revocation:\n  file: revoked.yaml\n")
    entries = {(e.kind, e.value): e for e in config.revocation.entries}
    assert entries[EntryKind.JTI, jti_hash("token-1")].expires_at == 1893456000
    assert entries[EntryKind.JTI, "ab" * 16].expires_at == 1900000300
    alice = entries[EntryKind.SUBJECT, "alice"]
    assert (alice.before, alice.expires_at) == (1893452400, 1893452400 + 3600 + 30)  # max_lifetime + skew
    assert entries[EntryKind.CLIENT, "app-1"].expires_at == 1900000600
    assert str(folder / "revoked.yaml") in config.files  # watched: an edit reloads it


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("revoked:\n  - jti: t\n", 2, "needs expires"),
        (
            "revoked:\n  - jti: t\n    expires: 1\n  - subject: a\n    before: 1\n",
            4,
            "missing required key 'issuer'",
        ),
        ("revoked:\n  - subject: a\n    client: b\n    issuer: i\n    before: 1\n", 2, "exactly one of"),
        ("revoked:\n  - subject: a\n    issuer: i\n    before: yesterday\n", 4, "must be a time"),
        ("revoked:\n  - jti_hash: xyz\n    expires: 1\n", 2, "32 hex digits"),
        ("revoked:\n  - client: a\n    issuer: i\n    before: 1\n    reason: leaked\n", 5, "unknown key"),
        ("revoke:\n  - jti: t\n", 1, "unknown key"),
        ("revoked: [\n", 2, "YAML error"),
    ],
)
def test_a_bad_revocation_file_names_its_file_line_and_reason(
    folder: Path, text: str, line: int, reason: str
) -> None:
    (folder / "revoked.yaml").write_text(text, encoding="utf-8")
    section = "revocation:\n  file: revoked.yaml  # <-\n"
    error = _error(folder, section)
    assert (error.file, error.line) == (str(folder / "revoked.yaml"), line), error
    assert reason in error.reason, error
    assert f"config.yaml:{_line(section)}" in error.reason  # and where the config names it
