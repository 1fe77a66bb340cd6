"""The command line for sender-constrained tokens, in process: mint --dpop-key / --client-cert,
dpop-proof, explain and check with --dpop-key / --dpop / --client-cert; the demo's DPoP path."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from authz.app.demo import setup_demo
from authz.cli import main
from authz.config import SnapshotHolder, load_config
from authz.grpc.server import run_server
from authz.jose.dpop import verify_proof
from authz.jose.mint import write_jwks
from testkit.sender import make_cert
from testkit.world import ACME_IDP, World


@pytest.fixture(scope="module")
def files(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The issuer's private signing key and our public encryption key as files; a client key (keygen)."""
    root = tmp_path_factory.mktemp("cli-sender")
    signing = root / "sig.private.jwks.json"
    write_jwks(
        signing,
        {"keys": [json.loads(world.signing_keys["acme-es256"].export(private_key=True))]},
        private=True,
    )
    encryption = root / "enc.public.jwks.json"
    write_jwks(
        encryption,
        {"keys": [json.loads(world.decryption_keys["enc-rsa-oaep-256"].export_public())]},
        private=False,
    )
    client = root / "client.private.jwks.json"
    assert main(["keygen", "--alg", "ES256", "--kid", "client-1", "--private", str(client)]) == 0
    cert, other = make_cert(), make_cert()
    (root / "client.pem").write_text(cert.pem)
    (root / "other.pem").write_text(other.pem)
    return {"signing": signing, "encryption": encryption, "client": client, "cert": root / "client.pem",
            "other": root / "other.pem", "root": root}  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def mint(capsys: pytest.CaptureFixture[str], files: dict[str, Path], *extra: str | Path) -> str:
    code, out = run(capsys, "mint", "--encryption-key", files["encryption"], "--signing-key", files["signing"],
                    "--iss", ACME_IDP, "--aud", "orders-api", "--sub", "user-1", "--tenant", "acme",
                    "--scope", "orders:read", *extra)  # fmt: skip
    assert code == 0, out
    return out.strip()


def explain(
    capsys: pytest.CaptureFixture[str], world: World, token: str, *extra: str | Path
) -> dict[str, Any]:
    code, out = run(capsys, "explain", "--config", world.config_path, "--host", "api.acme.test", "--path", "/orders",
                    "--token", token, *extra)  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    assert code == (0 if result["decision"] == "allow" else 1)
    return result


def test_mint_binds_to_a_dpop_key_and_explain_makes_the_proof(capsys, world, files):
    token = mint(capsys, files, "--dpop-key", files["client"])
    allowed = explain(capsys, world, token, "--dpop-key", files["client"])
    assert (allowed["decision"], allowed["binding"]) == ("allow", "dpop")
    downgrade = explain(capsys, world, token)
    assert (downgrade["reason"], downgrade["http_status"]) == ("dpop_proof_missing", 401)


def test_the_key_thumbprint_is_joserfcs(capsys, files, world):
    """mint's cnf.jkt is the RFC 7638 thumbprint another library computes for the key."""
    from joserfc import jwk

    from authz.jose.nested import validate_token

    token = mint(capsys, files, "--dpop-key", files["client"])
    claims = validate_token(token, world.config().snapshot.token_keys).claims
    key = jwk.import_key(json.loads(files["client"].read_text())["keys"][0])
    assert claims["cnf"] == {"jkt": key.thumbprint()}


def test_dpop_proof_prints_a_proof_for_the_url_without_its_query(capsys, world, files):
    token = mint(capsys, files, "--dpop-key", files["client"])
    code, proof = run(capsys, "dpop-proof", "--key", files["client"], "--method", "GET",
                      "--url", "https://api.acme.test/orders?page=2#top", "--token", token, "--nonce", "n-1")  # fmt: skip
    assert code == 0, proof
    verified = verify_proof(proof.strip(), method="GET", htu={"https://api.acme.test/orders"}, now=float(__import__("time").time()),
                            max_age=60, skew=5, access_token=token, algorithms={"ES256"}, nonce=lambda n: n == "n-1")  # fmt: skip
    assert verified.nonce == "n-1"
    result = explain(capsys, world, token, "--dpop", proof.strip())
    assert (result["decision"], result["binding"]) == ("allow", "dpop")


def test_mint_binds_to_a_client_certificate(capsys, world, files):
    token = mint(capsys, files, "--client-cert", files["cert"])
    assert explain(capsys, world, token, "--client-cert", files["cert"])["binding"] == "mtls"
    assert (
        explain(capsys, world, token, "--client-cert", files["other"])["reason"]
        == "client_certificate_mismatch"
    )
    assert explain(capsys, world, token)["reason"] == "client_certificate_missing"


def test_mint_and_proof_errors_are_messages(capsys, files, tmp_path):
    code, out = run(capsys, "mint", "--encryption-key", files["encryption"], "--signing-key", files["signing"],
                    "--iss", ACME_IDP, "--dpop-key", tmp_path / "missing.json")  # fmt: skip
    assert code == 2
    assert out.startswith("error: cannot read the key or certificate")
    with pytest.raises(SystemExit) as info:  # one binding or the other (argparse)
        main(["mint", "--encryption-key", str(files["encryption"]), "--iss", ACME_IDP,
              "--dpop-key", str(files["client"]), "--client-cert", str(files["cert"])])  # fmt: skip
    assert info.value.code == 2
    capsys.readouterr()
    secret = tmp_path / "secret.jwks.json"
    assert main(["keygen", "--alg", "A256KW", "--kid", "s", "--private", str(secret)]) == 0
    capsys.readouterr()
    code, out = run(
        capsys, "dpop-proof", "--key", secret, "--method", "GET", "--url", "https://a.test/", "--token", "t"
    )
    assert code == 2
    assert "a DPoP key is EC, OKP or RSA" in out


async def test_check_sends_the_proof_and_the_certificate(capsys, world, files):
    """authz check against a served gRPC door: a DPoP request, its replay, a certificate-bound one."""
    config = world.config()
    token = mint(capsys, files, "--dpop-key", files["client"])
    bound = mint(capsys, files, "--client-cert", files["cert"])
    async with run_server(SnapshotHolder(config), "127.0.0.1:0", config.server) as server:
        base = [
            "check",
            "--server",
            f"127.0.0.1:{server.port}",
            "--host",
            "api.acme.test",
            "--path",
            "/orders",
        ]
        code = await asyncio.to_thread(main, [*base, "--token", token, "--dpop-key", str(files["client"])])
        assert code == 0, capsys.readouterr()
        capsys.readouterr()
        code, out = run(capsys, "dpop-proof", "--key", files["client"], "--method", "GET",
                        "--url", "https://api.acme.test/orders", "--token", token)  # fmt: skip
        for expected in (0, 1):  # the second time the same proof is a replay
            code = await asyncio.to_thread(main, [*base, "--token", token, "--dpop", out.strip()])
            assert code == expected
        printed = capsys.readouterr().out
        assert "dpop_proof_replayed" in printed
        code = await asyncio.to_thread(main, [*base, "--token", bound, "--client-cert", str(files["cert"])])
        assert code == 0, capsys.readouterr()


def test_the_demo_issues_a_dpop_bound_token(tmp_path, capsys):
    """The demo's client key, issue-token --dpop-key and its dpop-proof script, as the README uses them."""
    folder = tmp_path / "demo"
    instructions = setup_demo(folder, "127.0.0.1:9001")
    client = folder / "keys" / "client-dpop.private.jwks.json"
    assert "--dpop-key" in instructions
    issued = subprocess.run([folder / "issue-token", "--scope", "orders:read", "--dpop-key", client],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    token = issued.stdout.strip()
    proof = subprocess.run([folder / "dpop-proof", "--method", "GET", "--url", "http://api.acme.test/orders",
                            "--token", token], capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    code, out = run(capsys, "explain", "--config", folder / "config.yaml", "--host", "api.acme.test",
                    "--path", "/orders", "--token", token, "--dpop", proof.stdout.strip())  # fmt: skip
    result = json.loads(out)
    # explain's request is https: the proof names http (what the quick start's Envoy sees).
    assert (result["reason"], code) == ("dpop_proof_invalid", 1)
    https = subprocess.run([folder / "dpop-proof", "--method", "GET", "--url", "https://api.acme.test/orders",
                            "--token", token], capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    code, out = run(capsys, "explain", "--config", folder / "config.yaml", "--host", "api.acme.test",
                    "--path", "/orders", "--token", token, "--dpop", https.stdout.strip())  # fmt: skip
    assert (json.loads(out)["binding"], code) == ("dpop", 0)
    assert load_config(folder / "config.yaml").snapshot.dpop.nonce is None
