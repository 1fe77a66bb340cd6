"""The configuration model, its JSON Schema and the docs' reference agree, and nothing drifts.

The schema is generated from the model (authz/config/model.py) that the loader converts with;
these tests pin the committed copy, the table and example of docs/configuration.md, the shipped configs'
modelines, and check that the schema and the model accept exactly the same documents.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.app.demo import setup_demo
from authz.cli import main
from authz.config.convert import to_model
from authz.config.schema import SCHEMA_ID, json_schema, reference_table, schema_text
from authz.config.yaml import parse_yaml
from authz.errors import ConfigError
from testkit.world import CONFIG as WORLD_CONFIG
from testkit.world import World
from tests.app import test_cli
from tests.config import test_config
from tests.core import test_path_parameters

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "docs" / "config.schema.json"
REFERENCE = REPO / "docs" / "configuration.md"  # the docs site's configuration reference
SHIPPED = [REPO / "deploy" / "kubernetes" / "base" / "policy" / "config.yaml"]
MODELINE = re.compile(r"# yaml-language-server: \$schema=(\S+)")
TABLE = re.compile(r"<!-- BEGIN settings table[^>]*-->\n(.*?)<!-- END settings table -->", re.S)
REGENERATE = (
    "regenerate: authz schema > docs/config.schema.json; authz schema --markdown (docs/configuration.md)"
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def reference_example() -> str:
    """The YAML block of the configuration reference (its first)."""
    section = REFERENCE.read_text(encoding="utf-8").split("# Configuration reference\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def model_accepts(text: str) -> bool:
    """Whether the model accepts the file's shape (the loader's first step; no file is read)."""
    try:
        to_model(parse_yaml(text, "config.yaml"), "config.yaml")
    except ConfigError:
        return False
    return True


# -- the schema is current, valid and described ---------------------------------------------------


def test_committed_schema_is_the_models() -> None:
    """docs/config.schema.json is what `authz schema` prints today."""
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), REGENERATE


def test_cli_prints_the_schema_and_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`authz schema` prints the schema; `--markdown` the reference's settings table."""
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out == reference_table()


def test_schema_is_a_described_2020_12_document() -> None:
    """A valid draft 2020-12 schema with $id and title; every setting described; every default valid."""
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (schema["$id"], schema["title"]) == (SCHEMA_ID, "envoy-jwe-authz configuration")
    for name, definition in [("config", schema), *schema["$defs"].items()]:
        assert definition.get("description"), name
        assert definition["additionalProperties"] is False, name
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{key}"
            if "default" in prop:
                check = jsonschema.Draft202012Validator({**prop, "$defs": schema["$defs"]})
                assert check.is_valid(prop["default"]), f"{name}.{key}"


# -- the docs' reference ----------------------------------------------------------------------------


def test_reference_settings_table_is_generated_from_the_model() -> None:
    """The reference's table of settings is `authz schema --markdown`, row for row."""
    match = TABLE.search(REFERENCE.read_text(encoding="utf-8"))
    assert match, f"{REFERENCE}: the settings table markers are missing"
    assert match[1] == reference_table(), REGENERATE


def _paths(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every setting of the schema by its dotted path (``tenants[].rules[].name``)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, prop in node["properties"].items():
            found[prefix + name] = prop
            ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
            if ref:
                inner = schema["$defs"][ref.rpartition("/")[2]]
                walk(inner, f"{prefix}{name}{'' if '$ref' in prop else '[]'}.")

    walk(schema, "")
    return found


def _written(value: Any, prefix: str, found: dict[str, Any]) -> None:
    """Every key written in a YAML document by its dotted path, with its value."""
    for name, item in value.items():
        found[prefix + name] = item
        if isinstance(item, dict) and name != "claims":
            _written(item, f"{prefix}{name}.", found)
        if isinstance(item, list):
            for entry in item:
                if isinstance(entry, dict):
                    _written(entry, f"{prefix}{name}[].", found)


def test_reference_example_shows_every_setting_and_its_default(validator) -> None:
    """The reference's example is a valid file naming every setting the model has, and no other;
    outside the tenants (whose values are examples) each setting with a default shows it."""
    text = reference_example()
    assert model_accepts(text)
    document = yaml.safe_load(text)
    assert validator.is_valid(document)
    written: dict[str, Any] = {}
    _written(document, "", written)
    settings_ = _paths(json_schema())
    assert set(written) == set(settings_)
    for path, prop in settings_.items():
        if "default" in prop and "$ref" not in prop and not path.startswith("tenants"):
            assert written[path] == prop["default"], path


# -- every config we ship or test validates, and carries the modeline where shipped --------------------


def _corpus(world: World, tmp_path: Path) -> dict[str, str]:
    from tests.app.test_jwks import write_config

    setup_demo(tmp_path / "demo", "127.0.0.1:9001")
    jwks = write_config(tmp_path, world, uri="https://127.0.0.1:1/jwks.json", ca_file=tmp_path / "ca.pem")
    corpus = {
        "world (testkit/world.py)": WORLD_CONFIG,
        "reference (tests/config/test_config.py)": test_config.SPEC_CONFIG,
        "shared issuer (tests/config/test_config.py)": test_config.SHARED_ISSUER_CONFIG,
        "two tenants (tests/config/test_config.py)": test_config.SPEC_CONFIG + test_config.GLOBEX,
        "cli (tests/app/test_cli.py)": test_cli.CONFIG,
        "jwks_uri (tests/app/test_jwks.py)": jwks.read_text(encoding="utf-8"),
        "demo (authz demo)": (tmp_path / "demo" / "config.yaml").read_text(encoding="utf-8"),
        "reference example": reference_example(),
    }
    for request in ("", "request:\n  path_parameters: strip\n"):
        corpus[f"policy {request!r} (tests/core/test_path_parameters.py)"] = (
            test_path_parameters.POLICY.format(keys="keys", request=request)
        )
    for path in SHIPPED:
        corpus[str(path.relative_to(REPO))] = path.read_text(encoding="utf-8")
    return corpus


def test_shipped_and_tested_configs_validate_against_the_schema(validator, world, tmp_path) -> None:
    """The demo, deploy, reference and test configs are valid for the model and the committed schema."""
    for name, text in _corpus(world, tmp_path).items():
        assert model_accepts(text), name
        errors = [error.message for error in validator.iter_errors(yaml.safe_load(text))]
        assert errors == [], name


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_name_the_schema_in_a_modeline(path: Path) -> None:
    """A shipped config starts with the yaml-language-server modeline; its path leads to the schema."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.fullmatch(first)
    assert match, f"{path}: first line must be '# yaml-language-server: $schema=...'"
    assert (path.parent / match[1]).resolve() == SCHEMA_FILE


# -- the schema accepts exactly what the model accepts --------------------------------------------------


def _yaml_loads(text: str) -> bool:
    try:
        parse_yaml(text, "config.yaml")
    except ConfigError:
        return False
    return True


# The cases the YAML loader itself refuses (syntax, duplicate key, alias) never reach the model.
MODEL_CASES = [case for case in test_config.CONFIG_ERRORS if _yaml_loads(case.values[0])]


@pytest.mark.parametrize(("text", "reason"), MODEL_CASES)
def test_schema_and_model_agree_on_each_refused_config(validator, text, reason) -> None:
    """Each refused config of test_config: refused by the schema iff by the model (the rest is the
    compile step's: names, hosts, issuers, keys and patterns across the file)."""
    assert validator.is_valid(yaml.safe_load(text)) == model_accepts(text), reason


# Values a mutation writes. JSON has no NaN and no float apart from the integer it equals (5.0 is the
# integer 5 to a JSON Schema, a float to the loader), so those are left out; everything else counts.
VALUES = [
    None, True, False, 0, 1, -1, 7, 2**40, 0.5, -0.25, 1.5, float("inf"),
    "", "x", "\n", "30", "0.5", "true", "acme", "a" * 64, "bad name", "GET", "get", "PoSt", "FETCH", "GET\n", "POST ",
    "/", "/a", "/a/", "a/", "/a\n", "https://idp.test", "http://idp.test", "api.acme.test", "*.acme.test",
    "API.Acme.Test", "a..b", "-a", "a:1", "A256GCM", "A512GCM", "enforce", "dry-run", "strip", "reject",
    [], [""], ["x"], [1], ["GET", "head"], ["/orders"], [{"kid": "k", "issuers": ["i"]}], [[]],
    {}, {"x": 1}, {"kid": "k", "issuers": ["i"]}, {"kid": "k"}, {"a": [1]}, {"a": {"b": 1}},
]  # fmt: skip


def _settings(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document, list items by index."""
    found: list[tuple[Any, ...]] = []
    items = document.items() if isinstance(document, dict) else enumerate(document)
    for key, value in items:
        found.append((*prefix, key))
        if isinstance(value, dict | list):
            found += _settings(value, (*prefix, key))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The reference example with one to three settings changed, removed or joined by an unknown key."""
    document = copy.deepcopy(yaml.safe_load(reference_example()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_settings(document)))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "set", "set", "remove", "add"]))
        if action == "set":
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(VALUES)))
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["x", "scope", "timeout"]))] = 1
    return document


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(mutated())
def test_schema_and_model_accept_the_same_documents(validator, document) -> None:
    """Changed settings anywhere: the schema and the model agree, and a refusal names a line."""
    text = yaml.safe_dump(document, sort_keys=False)
    refusal: ConfigError | None = None
    try:
        to_model(parse_yaml(text, "config.yaml"), "config.yaml")
    except ConfigError as error:
        refusal = error
    assert validator.is_valid(document) == (refusal is None), text
    if refusal is not None:
        assert refusal.line is not None
        assert 1 <= refusal.line <= len(text.splitlines())
        assert refusal.reason.startswith("config")
