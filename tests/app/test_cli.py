"""The command line, run as a real process: keygen -> config -> check-config -> mint -> explain; demo."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from authz.app.demo import setup_demo
from authz.cli import main
from authz.config import load_config
from authz.jose.keys import Purpose, load_keyset

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

CONFIG = """\
decryption:
  keys: [keys/enc.private.jwks.json]
issuers:
  - issuer: https://idp.example.test
    jwks: keys/sig.public.jwks.json
tenants:
  - name: shop
    issuers: [https://idp.example.test]
    audiences: [shop-api]
    hosts: [shop.example.test]
    rules:
      - name: read-items
        methods: [GET]
        paths: [/items/**]
        scopes: [items:read]
"""


def authz(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m authz ARGS`` in ``cwd``; bounded, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "authz", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keys_of(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["keys"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """keygen (an encryption key, two signing keys, one refused duplicate), then a config over them."""
    root = tmp_path_factory.mktemp("cli")
    keys = root / "keys"

    def keygen(alg, kid, name, *, public=True):
        files = ["--private", keys / f"{name}.private.jwks.json"]
        if public:
            files += ["--public", keys / f"{name}.public.jwks.json"]
        return authz("keygen", "--alg", alg, "--kid", kid, *files, cwd=root)

    runs = {
        "enc": keygen("RSA-OAEP-256", "enc-1", "enc"),
        "sig": keygen("ES256", "sig-1", "sig"),
        "sig2": keygen("ES256", "sig-2", "sig"),
    }
    before = (keys / "sig.private.jwks.json").read_bytes()
    runs["dup"] = keygen("ES256", "sig-1", "sig", public=False)
    runs["dup_unchanged"] = (keys / "sig.private.jwks.json").read_bytes() == before
    (root / "config.yaml").write_text(CONFIG, encoding="utf-8")
    return root, runs


@pytest.mark.parametrize("run", ["enc", "sig", "sig2"])
def test_keygen_succeeds(deployment, run):
    """keygen exits 0 and says what it wrote."""
    _, runs = deployment
    assert runs[run].returncode == 0, runs[run].stderr
    assert "wrote" in runs[run].stdout


@pytest.mark.parametrize(
    ("name", "kids", "alg", "kty"),
    [("enc", ["enc-1"], "RSA-OAEP-256", "RSA"), ("sig", ["sig-1", "sig-2"], "ES256", "EC")],
)
def test_keygen_files(deployment, name, kids, alg, kty):
    """Private files are 0600 with the private part; public files have the same keys without it."""
    root, _ = deployment
    private = root / "keys" / f"{name}.private.jwks.json"
    public = root / "keys" / f"{name}.public.jwks.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    use = "enc" if name == "enc" else "sig"
    for path in (private, public):
        entries = keys_of(path)
        assert [k["kid"] for k in entries] == kids
        assert all((k["alg"], k["kty"], k["use"]) == (alg, kty, use) for k in entries)
    assert all("d" in k for k in keys_of(private))
    assert not any(PRIVATE_MEMBERS & set(k) for k in keys_of(public))


def test_keygen_refuses_duplicate_kid(deployment):
    """keygen with a kid the file already has exits 1 and leaves the file alone."""
    _, runs = deployment
    assert runs["dup"].returncode == 1
    assert "already has a key 'sig-1'" in runs["dup"].stderr
    assert runs["dup_unchanged"]


def test_check_config_mint_explain(deployment):
    """check-config passes; a minted token explains as allow with its rule; a forbidden path exits 1."""
    root, _ = deployment
    checked = authz("check-config", "config.yaml", cwd=root)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(
        "ok: config.yaml: 1 tenant(s), 1 rule(s), 1 decryption key(s), 1 issuer(s)"
    )

    minted = authz(
        "mint", "--encryption-key", "keys/enc.public.jwks.json",
        "--signing-key", "keys/sig.private.jwks.json", "--signing-kid", "sig-2",
        "--iss", "https://idp.example.test", "--aud", "shop-api", "--sub", "alice",
        "--tenant", "shop", "--scope", "items:read", cwd=root,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 4

    base = ("explain", "--config", "config.yaml", "--host", "shop.example.test", "--token", token)
    allowed = authz(*base, "--path", "/items/42", cwd=root)
    assert allowed.returncode == 0, allowed.stderr
    result = json.loads(allowed.stdout)
    assert (result["decision"], result["reason"], result["tenant"], result["rule"]) == (
        "allow", "ok", "shop", "read-items",
    )  # fmt: skip
    assert (result["http_status"], result["grpc_status"]) == (200, 0)

    denied = authz(*base, "--path", "/items/../admin", cwd=root)
    assert denied.returncode == 1
    result = json.loads(denied.stdout)
    assert (result["decision"], result["reason"]) == ("deny", "no_matching_rule")
    assert (result["http_status"], result["grpc_status"]) == (403, 7)
    assert token not in denied.stdout


def test_check_config_names_the_line(deployment):
    """check-config on a broken file exits 1 and prints config.yaml:LINE: reason."""
    root, _ = deployment
    broken = root / "broken"
    broken.mkdir()
    text = CONFIG.replace("scopes:", "scope:").replace("keys/", "../keys/")
    (broken / "config.yaml").write_text(text, encoding="utf-8")
    line = CONFIG.splitlines().index("        scopes: [items:read]") + 1
    result = authz("check-config", "config.yaml", cwd=broken)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: config.yaml:{line}: ")
    assert "config.tenants[0].rules[0].scope: unknown key" in result.stderr


def test_demo(tmp_path):
    """demo writes config, keys and issue-token; the config checks and its token explains as allowed."""
    demo = tmp_path / "demo"
    made = authz("demo", "--dir", demo, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (demo / "config.yaml").is_file()
    for name in ("decrypt", "acme-idp", "globex-idp"):
        assert stat.S_IMODE((demo / "keys" / f"{name}.private.jwks.json").stat().st_mode) == 0o600
        assert not any(PRIVATE_MEMBERS & set(k) for k in keys_of(demo / "keys" / f"{name}.public.jwks.json"))
    assert (demo / "issue-token").stat().st_mode & stat.S_IXUSR

    checked = authz("check-config", demo / "config.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

    issued = subprocess.run(
        [demo / "issue-token", "--scope", "orders:read"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    explained = authz("explain", "--config", demo / "config.yaml", "--host", "api.acme.test",
                      "--path", "/orders", "--token", token, cwd=tmp_path)  # fmt: skip
    assert explained.returncode == 0, explained.stdout + explained.stderr
    result = json.loads(explained.stdout)
    assert (result["decision"], result["tenant"], result["rule"]) == ("allow", "acme", "read-orders")


# -- in-process, no subprocess ----------------------------------------------------------------------


def test_demo_quotes_listen_address(tmp_path):
    """A demo listen address that is not a plain YAML scalar (IPv6) still makes a valid config."""
    setup_demo(tmp_path, "[::]:9001")
    assert load_config(tmp_path / "config.yaml").listen == "[::]:9001"


def test_keygen_x25519(tmp_path, capsys):
    """keygen makes an ECDH-ES key on X25519 (OKP) that loads as a decryption key."""
    private, public = tmp_path / "x.private.jwks.json", tmp_path / "x.public.jwks.json"
    code = main(["keygen", "--alg", "ECDH-ES", "--crv", "X25519", "--kid", "x1",
                 "--private", str(private), "--public", str(public)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (keys_of(private)[0]["kty"], keys_of(private)[0]["crv"]) == ("OKP", "X25519")
    assert "d" not in keys_of(public)[0]
    assert load_keyset(private, Purpose.DECRYPT).by_kid["x1"].crv == "X25519"


def test_keygen_tightens_existing_private_file(tmp_path, capsys):
    """Appending to an existing private file leaves it 0600 even if it was readable by others."""
    private = tmp_path / "secrets.jwks.json"
    private.write_text('{"keys": []}\n', encoding="utf-8")
    private.chmod(0o644)
    assert main(["keygen", "--alg", "A256KW", "--kid", "s1", "--private", str(private)]) == 0
    assert "secret s1" in capsys.readouterr().out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert keys_of(private)[0]["kty"] == "oct"


def test_keygen_refused_kid_in_public_file_writes_nothing(tmp_path, capsys):
    """A kid already in the public file is refused before the private file is written."""
    private, public = tmp_path / "p.jwks.json", tmp_path / "pub.jwks.json"
    public.write_text('{"keys": [{"kid": "k1", "kty": "EC"}]}', encoding="utf-8")
    code = main(
        ["keygen", "--alg", "ES256", "--kid", "k1", "--private", str(private), "--public", str(public)]
    )
    assert code == 1
    assert "already has a key 'k1'" in capsys.readouterr().err
    assert not private.exists()


@pytest.mark.parametrize("content", ["not json", '{"keys": 5}', "[]"])
def test_keygen_refuses_a_broken_key_file(tmp_path, capsys, content):
    """keygen appending to a file that is not a JWK Set exits 1 with a message, not a traceback."""
    private = tmp_path / "p.jwks.json"
    private.write_text(content, encoding="utf-8")
    assert main(["keygen", "--alg", "A256KW", "--kid", "s1", "--private", str(private)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert private.read_text(encoding="utf-8") == content


def test_mint_errors_are_messages(tmp_path, capsys):
    """mint with a missing key file or a --claim that is not JSON exits 2 with a message."""
    secret = tmp_path / "s.jwks.json"
    assert main(["keygen", "--alg", "A256KW", "--kid", "s1", "--private", str(secret)]) == 0
    base = ["mint", "--encrypt-only", "--iss", "https://idp.example.test"]
    assert main([*base, "--encryption-key", str(tmp_path / "missing.json")]) == 2
    assert main([*base, "--encryption-key", str(secret), "--claim", "admin=yes"]) == 2
    err = capsys.readouterr().err
    assert "cannot read a key file" in err
    assert "--claim admin: the value must be JSON" in err
    assert main([*base, "--encryption-key", str(secret), "--claim", "admin=true"]) == 0
    assert capsys.readouterr().out.count(".") == 4
