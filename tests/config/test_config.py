"""Configuration: the documented shape loads; every invalid file is rejected with file, line and reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jwcrypto.jwk import JWK

from authz.config import load_config
from authz.core.policy import Mode
from authz.errors import ConfigError
from testkit.world import ACME_IDP, SHARED_IDP

# The configuration reference (docs/configuration.md) as it was first written, comments included.
SPEC_CONFIG = """\
listen: 0.0.0.0:9001                 # optional; --listen overrides; default 127.0.0.1:9001
token:                               # all optional, defaults shown
  clock_skew: 30                     # seconds, for exp, nbf and iat
  max_lifetime: 86400                # seconds from iat (or nbf, or now) to exp
  max_bytes: 8192                    # longest accepted token, checked before any crypto
  tenant_claim: tenant               # claim naming the token's tenant
  typ: []                            # inner JWS typ allow-list, e.g. [at+jwt]; empty: not checked
decryption:
  keys: [keys/decrypt.jwks.json]     # JWK Set files with our private keys; every key has kid and alg
  content_encryption: [A256GCM, A128GCM, A256CBC-HS512, A128CBC-HS256]   # the default
issuers:
  - issuer: https://idp.acme.test    # the exact iss value
    jwks: keys/acme-idp.jwks.json    # public signing keys; every key has kid and alg
upstream:
  strip_authorization: false         # remove the authorization header before the upstream
request:                             # how both doors read a request
  path_parameters: reject            # ";" in a path segment: reject (400 path_invalid) or strip
server:
  max_concurrent_checks: 256         # concurrent RPCs; more get RESOURCE_EXHAUSTED (Envoy denies)
  max_message_bytes: 1048576         # largest CheckRequest
  grace_seconds: 10                  # drain time on SIGTERM/SIGINT
tenants:
  - name: acme
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.acme.test, "*.acme.test"]   # exact, or any subdomain of the suffix
    mode: enforce                    # or dry-run
    encrypt_only_keys: []            # symmetric decryption kids accepted without an inner JWS
    rules:                           # first match by method and path decides
      - name: health
        paths: [/healthz]
        public: true                 # no token needed
      - name: read-orders
        methods: [GET, HEAD]         # default: any method
        paths: [/orders, /orders/*]  # * = one segment, ** = any rest (including none)
        scopes: [orders:read]        # all required
      - name: admin
        paths: [/admin/**]
        roles: [admin]               # any of
        claims: {email_verified: true}   # each claim equal (or contained in a list claim)
"""

# The reference with the shared IdP configured too (a tenant may then name two issuers).
SHARED_ISSUER_CONFIG = SPEC_CONFIG.replace(
    "    jwks: keys/acme-idp.jwks.json    # public signing keys; every key has kid and alg\n",
    "    jwks: keys/acme-idp.jwks.json    # public signing keys; every key has kid and alg\n"
    "  - issuer: https://idp.shared.test\n    jwks: keys/shared-idp.jwks.json\n",
)

GLOBEX = """\
  - name: globex
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    hosts: [api.globex.test]
    rules: []
"""

MARK = "# <- HERE"


@pytest.fixture
def folder(world, tmp_path) -> Path:
    """A folder with the world's key files under keys/, for a config.yaml beside them."""
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    return tmp_path


def edit(old: str, new: str, text: str = SPEC_CONFIG) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def marked_line(text: str) -> int:
    """The 1-based line carrying MARK."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if MARK in line)


def load_error(folder: Path, text: str, name: str = "config.yaml") -> ConfigError:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def write_jwks(path: Path, *keys: dict) -> None:
    path.write_text(json.dumps({"keys": list(keys)}), encoding="utf-8")


def private(key: JWK) -> dict:
    return json.loads(key.export(private_key=True))


def public(key: JWK) -> dict:
    return json.loads(key.export_public())


# -- valid configurations ----------------------------------------------------------


def test_world_config_loads(config):
    """The test world's config loads with every tenant, index and setting."""
    assert set(config.snapshot.tenants.by_name) == {"acme", "globex", "initech", "dry", "legacy"}
    assert set(config.snapshot.tenants.by_host) == {
        "api.acme.test", "api.globex.test", "api.initech.test", "api.dry.test", "api.legacy.test",
    }  # fmt: skip
    assert config.snapshot.tenants.by_suffix[0][0] == ".acme.test"
    assert config.snapshot.tenants.shared_issuers == {ACME_IDP, SHARED_IDP}
    assert config.snapshot.tenants.by_name["dry"].mode is Mode.DRY_RUN
    # Bare kids of a one-issuer tenant are bound to that issuer.
    assert config.snapshot.tenants.by_name["legacy"].encrypt_only_keys == {
        "enc-a256kw": {ACME_IDP},
        "enc-dir": {ACME_IDP},
    }
    assert config.snapshot.allow_path_parameters is False
    assert (config.snapshot.claim_rules.clock_skew, config.snapshot.claim_rules.max_lifetime) == (30, 3600)
    assert config.snapshot.strip_authorization is True
    assert len(config.snapshot.token_keys.decryption) == 7
    assert len(config.digest) == 64


def test_spec_config_loads(folder):
    """The configuration reference's exact YAML loads, with its documented defaults."""
    path = folder / "config.yaml"
    path.write_text(SPEC_CONFIG, encoding="utf-8")
    config = load_config(path)
    assert config.listen == "0.0.0.0:9001"
    assert (config.snapshot.claim_rules.clock_skew, config.snapshot.claim_rules.max_lifetime) == (30, 86400)
    assert config.snapshot.claim_rules.tenant_claim == "tenant"
    assert config.snapshot.token_keys.max_bytes == 8192
    assert config.snapshot.token_keys.allowed_typ == frozenset()
    assert set(config.snapshot.token_keys.issuers) == {ACME_IDP}
    assert config.snapshot.strip_authorization is False
    assert config.snapshot.allow_path_parameters is False
    assert (config.server.max_concurrent_checks, config.server.max_message_bytes) == (256, 1048576)
    acme = config.snapshot.tenants.by_name["acme"]
    assert [r.name for r in acme.rules] == ["health", "read-orders", "admin"]
    assert acme.rules[0].public
    assert acme.rules[1].methods == {"GET", "HEAD"}
    assert acme.rules[2].roles == {"admin"}
    assert dict(acme.rules[2].claims) == {"email_verified": True}
    assert acme.hosts == ("api.acme.test", "*.acme.test")


def test_minimal_config_gets_defaults(folder):
    """Only decryption, issuers and tenants are required; everything else has its default."""
    text = """\
decryption:
  keys: keys/decrypt.jwks.json
issuers:
  - issuer: https://idp.acme.test
    jwks: [keys/acme-idp.jwks.json]
tenants:
  - name: acme
    issuers: [https://idp.acme.test]
    audiences: [orders-api]
    rules: []
"""
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert config.listen is None
    assert config.snapshot.claim_rules.max_lifetime == 86400
    assert config.snapshot.token_keys.content_encryption == {
        "A256GCM",
        "A128GCM",
        "A256CBC-HS512",
        "A128CBC-HS256",
    }
    assert config.snapshot.tenants.by_name["acme"].mode is Mode.ENFORCE
    assert config.server.grace_seconds == 10.0


def test_encrypt_only_keys_name_their_issuers(folder):
    """encrypt_only_keys entries bind a symmetric kid to issuers; a bare kid of a one-issuer tenant to that one."""
    text = edit(
        "    issuers: [https://idp.acme.test]\n    audiences",
        "    issuers: [https://idp.acme.test, https://idp.shared.test]\n    audiences",
        edit(
            "    encrypt_only_keys: []",
            "    encrypt_only_keys:\n"
            "      - kid: enc-dir\n        issuers: [https://idp.shared.test]\n"
            "      - {kid: enc-a256kw, issuers: [https://idp.acme.test, https://idp.shared.test]}",
            SHARED_ISSUER_CONFIG,
        ),
    )
    path = folder / "config.yaml"
    path.write_text(text + GLOBEX.replace("    rules: []", "    encrypt_only_keys: [enc-dir]\n    rules: []"))
    tenants = load_config(path).snapshot.tenants.by_name
    assert tenants["acme"].encrypt_only_keys == {
        "enc-dir": {SHARED_IDP},
        "enc-a256kw": {ACME_IDP, SHARED_IDP},
    }
    assert tenants["globex"].encrypt_only_keys == {"enc-dir": {ACME_IDP}}


def test_request_path_parameters_strip(folder):
    """request.path_parameters: strip allows ';' parameters (removed before matching)."""
    path = folder / "config.yaml"
    path.write_text(edit("  path_parameters: reject ", "  path_parameters: strip "), encoding="utf-8")
    assert load_config(path).snapshot.allow_path_parameters is True


def test_relative_paths_resolve_against_config_folder(folder, tmp_path_factory, monkeypatch):
    """Relative key paths resolve against the config file's folder, whatever the working directory."""
    (folder / "config.yaml").write_text(SPEC_CONFIG, encoding="utf-8")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    config = load_config(folder / "config.yaml")
    assert str((folder / "keys" / "decrypt.jwks.json").resolve()) in config.files
    monkeypatch.chdir(folder.parent)
    relative = Path(folder.name) / "config.yaml"
    assert load_config(relative).digest == config.digest


def test_yaml_aliases_are_shared(folder):
    """A YAML anchor reused by an alias loads like the written-out value."""
    text = edit("    audiences: [orders-api]\n", "    audiences: &aud [orders-api]\n")
    text += GLOBEX.replace("audiences: [orders-api]", "audiences: *aud")
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path).snapshot.tenants.by_name["globex"].audiences == {"orders-api"}


# -- errors in config.yaml: file, line, reason ----------------------------------------------

CONFIG_ERRORS = [
    pytest.param(
        edit("  clock_skew: 30 ", "\tclock_skew: 30 " + MARK), "found character '\\t'", id="yaml-syntax-tab"
    ),
    pytest.param(
        edit("    mode: enforce ", "    mode: enforce: x " + MARK), "YAML error", id="yaml-syntax-mapping"
    ),
    pytest.param(
        edit("  tenant_claim: tenant ", f"  tenant_claim: tenant\n  clock_skew: 10 {MARK}\n  #"),
        "duplicate key 'clock_skew'",
        id="duplicate-key",
    ),
    pytest.param(
        edit("        scopes: [orders:read]", f"        scope: [orders:read] {MARK}"),
        "config.tenants[0].rules[1].scope: unknown key",
        id="unknown-key-rule-scope",
    ),
    pytest.param(
        edit("server:\n", f"server:\n  workers: 4 {MARK}\n"),
        "config.server.workers: unknown key",
        id="unknown-key-server",
    ),
    pytest.param(
        edit("listen: 0.0.0.0:9001", f"listne: 0.0.0.0:9001 {MARK}"),
        "config.listne: unknown key",
        id="unknown-key-root",
    ),
    pytest.param(
        edit("  clock_skew: 30 ", f'  clock_skew: "30" {MARK}'),
        "config.token.clock_skew: must be an integer",
        id="type-string-for-int",
    ),
    pytest.param(
        edit("  clock_skew: 30 ", f"  clock_skew: true {MARK}"),
        "config.token.clock_skew: must be an integer",
        id="type-bool-for-int",
    ),
    pytest.param(
        edit("  clock_skew: 30 ", f"  clock_skew: -1 {MARK}"), "must not be negative", id="negative-skew"
    ),
    pytest.param(
        edit("  max_lifetime: 86400 ", f"  max_lifetime: 0 {MARK}"),
        "config.token.max_lifetime: must be a positive integer",
        id="zero-lifetime",
    ),
    pytest.param(
        edit("  strip_authorization: false ", f'  strip_authorization: "no" {MARK}'),
        "config.upstream.strip_authorization: must be true or false",
        id="type-string-for-bool",
    ),
    pytest.param(
        edit("        paths: [/healthz]", f"        paths: /healthz {MARK}"),
        "config.tenants[0].rules[0].paths: must be a list",
        id="type-string-for-list",
    ),
    pytest.param(
        edit("        claims: {email_verified: true}", f"        claims: {{email_verified: [true]}} {MARK}"),
        "claim values must be strings, numbers or booleans",
        id="type-claim-value",
    ),
    pytest.param(
        edit("  - name: acme", f"  - name: 42 {MARK}"),
        "config.tenants[0].name: must be a string",
        id="type-name",
    ),
    pytest.param(
        edit("        methods: [GET, HEAD]", f"        methods: [GET, FETCH] {MARK}"),
        "unknown method 'FETCH'",
        id="unknown-method",
    ),
    pytest.param(
        edit("  content_encryption: [A256GCM,", f"  content_encryption: [A512GCM, {MARK}\n    A256GCM,"),
        "unknown content encryption 'A512GCM'",
        id="unknown-enc",
    ),
    pytest.param(
        edit("    issuers: [https://idp.acme.test]", f"    issuers: [https://idp.nobody.test] {MARK}"),
        "issuer 'https://idp.nobody.test' is not configured under issuers",
        id="unknown-issuer-in-tenant",
    ),
    pytest.param(
        SPEC_CONFIG + GLOBEX.replace("  - name: globex", f"  - name: acme {MARK}"),
        "config.tenants[1].name: duplicate tenant name",
        id="duplicate-tenant",
    ),
    pytest.param(
        SPEC_CONFIG + GLOBEX.replace("    hosts: [api.globex.test]", f"    hosts: [API.ACME.TEST] {MARK}"),
        "host 'api.acme.test' belongs to tenant 'acme' already",
        id="host-claimed-twice",
    ),
    pytest.param(
        SPEC_CONFIG + GLOBEX.replace("    hosts: [api.globex.test]", f'    hosts: ["*.acme.test"] {MARK}'),
        "belongs to tenant 'acme' already",
        id="suffix-claimed-twice",
    ),
    pytest.param(
        edit("        paths: [/admin/**]", f"        paths: [/a/**/b] {MARK}"),
        "'/a/**/b': ** may only be the last segment",
        id="pattern-inner-doublestar",
    ),
    pytest.param(
        edit("        paths: [/admin/**]", f"        paths: [/a*] {MARK}"),
        "'/a*': * must be a whole segment",
        id="pattern-partial-star",
    ),
    pytest.param(
        edit("        paths: [/admin/**]", f"        paths: [admin] {MARK}"),
        "must start with /",
        id="pattern-relative",
    ),
    pytest.param(
        edit("        paths: [/admin/**]", f"        paths: [/admin//x] {MARK}"),
        "empty segment",
        id="pattern-empty-segment",
    ),
    pytest.param(
        edit("        paths: [/admin/**]", f"        paths: [/a/../admin] {MARK}"),
        "dot segments",
        id="pattern-dotdot",
    ),
    pytest.param(
        edit("        public: true ", f"        scopes: [x]\n        public: true {MARK}"),
        "a public rule cannot also require scopes, roles or claims",
        id="public-with-scopes",
    ),
    pytest.param(
        edit("    hosts: [api.acme.test,", f"    hosts: [api.acme.test:8443, {MARK}\n      "),
        "is not a host name or *.suffix",
        id="host-with-port",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys: [enc-rsa-oaep-256] {MARK}"),
        "'enc-rsa-oaep-256' is not a symmetric decryption key",
        id="encrypt-only-rsa-key",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys: [nobody] {MARK}"),
        "'nobody' is not a symmetric decryption key",
        id="encrypt-only-unknown-kid",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys: [enc-dir, enc-dir] {MARK}"),
        "config.tenants[0].encrypt_only_keys[1]: 'enc-dir' is listed twice",
        id="encrypt-only-twice",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys: [5] {MARK}"),
        "config.tenants[0].encrypt_only_keys[0]: must be a kid or a mapping {kid, issuers}",
        id="encrypt-only-not-a-kid",
    ),
    pytest.param(
        edit(
            "    issuers: [https://idp.acme.test]\n    audiences",
            "    issuers: [https://idp.acme.test, https://idp.shared.test]\n    audiences",
            edit(
                "    encrypt_only_keys: []", f"    encrypt_only_keys: [enc-dir] {MARK}", SHARED_ISSUER_CONFIG
            ),
        ),
        "config.tenants[0].encrypt_only_keys[0]: the tenant has 2 issuers: bind the key to the ones it may "
        "speak for, e.g. {kid: enc-dir, issuers: [https://idp.acme.test]}",
        id="encrypt-only-bare-kid-several-issuers",
    ),
    pytest.param(
        edit(
            "    encrypt_only_keys: []",
            f"    encrypt_only_keys:\n      - kid: enc-dir\n        issuers: [https://idp.shared.test] {MARK}",
        ),
        "config.tenants[0].encrypt_only_keys[0].issuers: issuer 'https://idp.shared.test' is not one of "
        "this tenant's issuers",
        id="encrypt-only-issuer-of-another-tenant",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys:\n      - kid: enc-dir {MARK}"),
        "config.tenants[0].encrypt_only_keys[0]: missing required key 'issuers'",
        id="encrypt-only-mapping-without-issuers",
    ),
    pytest.param(
        edit(
            "    encrypt_only_keys: []",
            f"    encrypt_only_keys:\n      - kid: enc-dir\n        issuers: [https://idp.acme.test]\n"
            f"        issuer: x {MARK}",
        ),
        "config.tenants[0].encrypt_only_keys[0].issuer: unknown key",
        id="encrypt-only-mapping-unknown-key",
    ),
    pytest.param(
        edit(
            "    encrypt_only_keys: []",
            f"    encrypt_only_keys:\n      - kid: enc-rsa-oaep-256 {MARK}\n        issuers: [https://idp.acme.test]",
        ),
        "config.tenants[0].encrypt_only_keys[0]: 'enc-rsa-oaep-256' is not a symmetric decryption key",
        id="encrypt-only-mapping-rsa-key",
    ),
    pytest.param(
        edit("  path_parameters: reject ", f"  path_parameters: allow {MARK}"),
        "config.request.path_parameters: must be reject or strip",
        id="path-parameters-unknown",
    ),
    pytest.param(
        edit("  path_parameters: reject ", f"  path_parameters: true {MARK}"),
        "config.request.path_parameters: must be a string",
        id="path-parameters-bool",
    ),
    pytest.param(
        edit("  path_parameters: reject ", f"  path_params: strip {MARK}"),
        "config.request.path_params: unknown key",
        id="path-parameters-typo",
    ),
    pytest.param(
        SPEC_CONFIG.split("tenants:", maxsplit=1)[0] + f"tenants: [] {MARK}\n",
        "config.tenants: must not be empty",
        id="empty-tenants",
    ),
    pytest.param(
        edit("    mode: enforce ", f"    mode: audit {MARK}"),
        "config.tenants[0].mode: must be enforce or dry-run",
        id="bad-mode",
    ),
    pytest.param(
        edit("    audiences: [orders-api]", f"    audiences: [] {MARK}"),
        "config.tenants[0].audiences: must not be empty",
        id="empty-audiences",
    ),
    pytest.param(
        edit("      - name: admin", f"      - name: health {MARK}"),
        "duplicate rule name",
        id="duplicate-rule",
    ),
    pytest.param(
        edit(
            "    jwks: keys/acme-idp.jwks.json ",
            f"    jwks: keys/acme-idp.jwks.json\n    jwks: x {MARK}\n    #",
        ),
        "duplicate key 'jwks'",
        id="duplicate-key-in-list-item",
    ),
    pytest.param(
        edit("upstream:", f"upstream: &u [*u] {MARK}\nunused:"), "recursive YAML alias", id="recursive-alias"
    ),
]


@pytest.mark.parametrize(("text", "reason"), CONFIG_ERRORS)
def test_config_error_names_file_line_reason(folder, text, reason):
    """An invalid config is a ConfigError naming the file, the line and the reason."""
    error = load_error(folder, text)
    assert error.file == str(folder / "config.yaml")
    assert reason in error.reason
    assert error.line == marked_line(text)
    assert str(error).startswith(f"{folder / 'config.yaml'}:{error.line}: ")


# The model's refusals, whole: the label of the value (a list item, a claim), the line, the reason.
MODEL_ERRORS = [
    pytest.param(
        edit("server:\n", f"server:\n  jwks_first_fetch_wait: .nan {MARK}\n"),
        "config.server.jwks_first_fetch_wait: must be a positive number of seconds",
        id="seconds-nan",  # was accepted: a NaN timeout
    ),
    pytest.param(
        edit("server:\n", f"server:\n  jwks_first_fetch_wait: 1{'0' * 400} {MARK}\n"),
        "config.server.jwks_first_fetch_wait: must be a positive number of seconds",
        id="seconds-too-large",  # was an OverflowError out of load_config
    ),
    pytest.param(
        SPEC_CONFIG + f"tls: {MARK}\n  cert: tls/server.pem\n",
        "config.tls: missing required key 'key'",
        id="tls-without-key",  # was: cannot read the certificate (the files were read first)
    ),
    pytest.param(SPEC_CONFIG + f"http: {MARK}\n", "config.http must be a mapping", id="section-null"),
    pytest.param(
        edit("        methods: [GET, HEAD]", f"        methods:\n          - GET\n          - FETCH {MARK}"),
        "config.tenants[0].rules[1].methods[1]: unknown method 'FETCH'",
        id="method-item-line",
    ),
    pytest.param(
        edit("        methods: [GET, HEAD]", f'        methods: ["PO\\u017fT"] {MARK}'),
        "config.tenants[0].rules[1].methods[0]: unknown method 'PO\u017fT'",
        id="method-unicode-folding",  # was POST: str.upper() folds the long s
    ),
    pytest.param(
        edit("    hosts: [api.acme.test,", f'    hosts: ["\\u212a.acme.test", {MARK}\n      '),
        "config.tenants[0].hosts[0]: '\u212a.acme.test' is not a host name or *.suffix",
        id="host-unicode-folding",  # was k.acme.test: str.lower() folds the Kelvin sign
    ),
    pytest.param(
        edit("  - name: acme", f'  - name: "acme\\n" {MARK}'),
        "config.tenants[0].name: must be 1-63 letters, digits, '.', '_' or '-'",
        id="name-trailing-newline",
    ),
    pytest.param(
        edit("        methods: [GET, HEAD]", f'        methods: ["GET\\n"] {MARK}'),
        "config.tenants[0].rules[1].methods[0]: unknown method 'GET\\n'",
        id="method-trailing-newline",
    ),
    pytest.param(
        SPEC_CONFIG + f'http:\n  path_prefix: "\\n" {MARK}\n',
        "config.http.path_prefix: must start with / and not end with /",
        id="prefix-only-newline",
    ),
    pytest.param(
        edit(
            "        claims: {email_verified: true}",
            f"        claims:\n          email_verified: [true] {MARK}",
        ),
        "config.tenants[0].rules[2].claims.email_verified: claim values must be strings, numbers or booleans",
        id="claim-value-line",
    ),
    pytest.param(
        edit("        claims: {email_verified: true}", f"        claims: [email_verified] {MARK}"),
        "config.tenants[0].rules[2].claims: must be a mapping",
        id="claims-not-a-mapping",
    ),
    pytest.param(
        edit(
            "  keys: [keys/decrypt.jwks.json] ", f"  keys:\n    - keys/decrypt.jwks.json\n    - 7 {MARK}\n  #"
        ),
        "config.decryption.keys[1]: must be a string",
        id="key-file-item",
    ),
    pytest.param(
        edit("  keys: [keys/decrypt.jwks.json] ", f"  keys: [] {MARK}\n  #"),
        "config.decryption.keys: must be a file path or a non-empty list of file paths",
        id="key-files-empty",
    ),
    pytest.param(
        edit("    encrypt_only_keys: []", f"    encrypt_only_keys: [''] {MARK}"),
        "config.tenants[0].encrypt_only_keys[0]: must be a kid or a mapping {kid, issuers}",
        id="encrypt-only-empty-kid",
    ),
    pytest.param(
        edit("upstream:\n", f"upstream:\n  strip: true {MARK}\n"),
        "config.upstream.strip: unknown key",
        id="unknown-key-block",
    ),
]


@pytest.mark.parametrize(("text", "message"), MODEL_ERRORS)
def test_model_error_names_the_value_its_line_and_reason(folder, text, message):
    """A value the model refuses is named whole (list item, claim), with the line it is written on."""
    error = load_error(folder, text)
    assert (error.file, error.line, error.reason) == (str(folder / "config.yaml"), marked_line(text), message)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "config must be a mapping"),
        ("decryption: {keys: [keys/decrypt.jwks.json]}\n", "missing required key 'issuers'"),
    ],
)
def test_config_error_without_content(folder, text, reason):
    """An empty or shapeless config file is rejected with the reason."""
    error = load_error(folder, text)
    assert error.file == str(folder / "config.yaml")
    assert reason in error.reason


def test_config_not_utf8(folder):
    """A config file that is not UTF-8 is rejected."""
    path = folder / "config.yaml"
    path.write_bytes(b"listen: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_missing_config_file(tmp_path):
    """A config file that cannot be read is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.file == str(tmp_path / "nope.yaml")
    assert "cannot read config file" in info.value.reason


# -- errors in key files ------------------------------------------------------------------------


def decryption_file(folder: Path, name: str) -> str:
    return edit("  keys: [keys/decrypt.jwks.json] ", f"  keys: [keys/decrypt.jwks.json, keys/{name}] {MARK}")


def issuer_file(folder: Path, name: str) -> str:
    return edit("    jwks: keys/acme-idp.jwks.json ", f"    jwks: keys/{name} {MARK}")


def key_error(folder: Path, text: str, name: str) -> ConfigError:
    error = load_error(folder, text)
    assert error.file.startswith(str((folder / "keys" / name).resolve()))
    assert f"(referenced from {folder / 'config.yaml'}:{marked_line(text)})" in error.reason
    return error


def test_missing_key_file(folder):
    """A key file that does not exist names itself and the config line referencing it."""
    error = key_error(folder, decryption_file(folder, "missing.jwks.json"), "missing.jwks.json")
    assert "cannot read key file" in error.reason


def test_key_file_not_json(folder):
    """A key file that is not JSON is rejected with its line."""
    (folder / "keys" / "bad.jwks.json").write_text('{"keys": [\n  {,}\n]}\n', encoding="utf-8")
    error = key_error(folder, decryption_file(folder, "bad.jwks.json"), "bad.jwks.json")
    assert "not valid JSON" in error.reason
    assert error.line == 2


def test_key_without_alg(folder):
    """Every key must name its algorithm."""
    key = private(JWK.generate(kty="oct", size=256, kid="no-alg"))
    write_jwks(folder / "keys" / "k.jwks.json", key)
    error = key_error(folder, decryption_file(folder, "k.jwks.json"), "k.jwks.json")
    assert "no-alg" in error.file
    assert 'every key needs its "alg"' in error.reason


def test_key_with_rsa1_5(folder, world):
    """RSA1_5 cannot be configured."""
    key = private(world.decryption_keys["enc-rsa-oaep"])
    key.update(kid="old", alg="RSA1_5")
    write_jwks(folder / "keys" / "k.jwks.json", key)
    error = key_error(folder, decryption_file(folder, "k.jwks.json"), "k.jwks.json")
    assert "algorithm RSA1_5 is not accepted" in error.reason


def test_issuer_file_with_private_key(folder, world):
    """An issuer key file holding a private key is rejected."""
    write_jwks(folder / "keys" / "idp.jwks.json", private(world.signing_keys["acme-es256"]))
    error = key_error(folder, issuer_file(folder, "idp.jwks.json"), "idp.jwks.json")
    assert "public keys only" in error.reason


def test_rsa_key_too_small(folder):
    """RSA keys under 2048 bits are rejected."""
    small = JWK.generate(kty="RSA", size=1024, kid="small", alg="RS256", use="sig")
    write_jwks(folder / "keys" / "idp.jwks.json", public(small))
    error = key_error(folder, issuer_file(folder, "idp.jwks.json"), "idp.jwks.json")
    assert "at least 2048 bits" in error.reason


def test_decryption_key_without_private_part(folder, world):
    """A decryption key must include its private part."""
    write_jwks(
        folder / "keys" / "k.jwks.json", {**public(world.decryption_keys["enc-rsa-oaep"]), "kid": "pub"}
    )
    error = key_error(folder, decryption_file(folder, "k.jwks.json"), "k.jwks.json")
    assert "must include its private part" in error.reason


def test_kid_duplicated_across_files(folder, world):
    """A kid in two key files of one list is rejected at the config line that lists them."""
    write_jwks(folder / "keys" / "copy.jwks.json", private(world.decryption_keys["enc-a256kw"]))
    text = decryption_file(folder, "copy.jwks.json")
    error = load_error(folder, text)
    assert error.file == str(folder / "config.yaml")
    assert error.line == marked_line(text)
    assert "kid 'enc-a256kw' appears in more than one key file" in error.reason
