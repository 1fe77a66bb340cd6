"""The configuration's JSON Schema (draft 2020-12), made from the model, and the docs' settings table.

``authz schema`` prints the schema (committed as docs/config.schema.json); ``authz schema
--markdown`` prints the table of every setting that docs/configuration.md holds.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from authz.config.model import ConfigFile

__all__ = ["SCHEMA_ID", "json_schema", "reference_table", "schema_text"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Names the schema, not a place to fetch it from: the project has no published home yet.
SCHEMA_ID = "urn:envoy-jwe-authz:config"


def json_schema() -> dict[str, Any]:
    """msgspec's schema of the model, with the root inlined and named as a 2020-12 document."""
    generated = msgspec.json.schema(ConfigFile)
    definitions = generated["$defs"]
    root = definitions.pop(ConfigFile.__name__)
    root.pop("title", None)
    document = {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "envoy-jwe-authz configuration",
        **root,
        "$defs": definitions,
    }
    normalized: dict[str, Any] = json.loads(
        json.dumps(document)
    )  # defaults as JSON has them (tuples: arrays)
    return normalized


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def reference_table() -> str:
    """Every setting as a Markdown table row: its key, type, default and description."""
    schema = json_schema()
    rows = ["| Setting | Type | Default | Description |", "|---|---|---|---|"]
    _rows(schema, "", schema["$defs"], rows)
    return "\n".join(rows) + "\n"


def _rows(node: dict[str, Any], prefix: str, definitions: dict[str, Any], rows: list[str]) -> None:
    required = set(node.get("required", ()))
    for name, prop in node["properties"].items():
        key = f"{prefix}{name}"
        default = "required" if name in required else _default(prop)
        rows.append(f"| `{key}` | {_type(prop)} | {default} | {_escape(prop.get('description', ''))} |")
        section = _section(prop, definitions)
        if section is not None:
            inner, many = section
            _rows(inner, f"{key}[]." if many else f"{key}.", definitions, rows)


def _section(prop: dict[str, Any], definitions: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """The mapping a setting holds (a section, or each item of a list of mappings), if any."""
    if "$ref" in prop:
        return definitions[prop["$ref"].rpartition("/")[2]], False
    items = prop.get("items", {})
    if "$ref" in items:
        return definitions[items["$ref"].rpartition("/")[2]], True
    return None


def _type(node: dict[str, Any], plural: bool = False) -> str:
    if "$ref" in node:
        return "mappings" if plural else "mapping"
    if "anyOf" in node:
        return _either([_type(member, plural) for member in node["anyOf"]])
    if "enum" in node:
        values = [f"`{value}`" for value in node["enum"]]
        return f"any of {', '.join(values)}" if plural else _either(values)
    kind = node["type"]
    if kind == "array":
        text = f"list of {_type(node['items'], plural=True)}"
        return f"non-empty {text}" if node.get("minItems") else text
    if kind == "object":
        return f"mapping of names to {_type(node['additionalProperties'], plural=True)}"
    words = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}[kind]
    if node.get("minLength"):
        words = f"non-empty {words}"
    limits = [
        f"{sign} {node[name]}"
        for name, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"))
        if name in node
    ]
    words += "s" if plural else ""
    return f"{words} {', '.join(limits)}" if limits else words


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return "not set"
    if "$ref" in prop:  # a section: its settings' defaults are in their own rows
        return ""
    return f"`{_yaml(prop['default'])}`"


def _yaml(value: Any) -> str:
    """A default as one would write it in the YAML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return f"[{', '.join(_yaml(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
