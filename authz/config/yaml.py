"""Line-aware YAML: mappings and lists that remember where each key and item was written.

Every configuration error names the file, the line and the reason (``Place``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from authz.errors import ConfigError

__all__ = ["LineList", "LineMap", "Place", "parse_yaml"]


class LineMap(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int
    lines: dict[str, int]


class LineList(list[Any]):
    line: int
    lines: list[int]


def parse_yaml(text: str, source: str) -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            source, f"YAML error: {exc.problem or exc.context}", mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"YAML error: {type(exc).__name__}") from None
    except RecursionError:
        raise ConfigError(source, "YAML error: nested too deeply") from None
    if node is None:
        raise ConfigError(source, "the file is empty")
    try:
        return _Converter(source).convert(node)
    except RecursionError:
        raise ConfigError(source, "YAML error: nested too deeply") from None


class _Converter:
    """YAML nodes -> LineMap/LineList/scalars. An alias is converted once (``&a`` reused by
    ``*a`` shares the value, so nested aliases cannot blow up), and an alias inside
    its own anchor is an error instead of endless recursion."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.loader = yaml.SafeLoader("")
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def convert(self, node: yaml.Node) -> Any:
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise ConfigError(self.source, "recursive YAML alias", node.start_mark.line + 1)
        self.active.add(key)
        try:
            value = self._convert(node)
        finally:
            self.active.discard(key)
        self.done[key] = value
        return value

    def _convert(self, node: yaml.Node) -> Any:
        source, line = self.source, node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            mapping = LineMap()
            mapping.line, mapping.lines = line, {}
            for key_node, value_node in node.value:
                key = self.convert(key_node)
                key_line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise ConfigError(source, "mapping keys must be strings", key_line)
                if key in mapping:
                    raise ConfigError(source, f"duplicate key {key!r}", key_line)
                mapping[key] = self.convert(value_node)
                mapping.lines[key] = key_line
            return mapping
        if isinstance(node, yaml.SequenceNode):
            items = LineList(self.convert(item) for item in node.value)
            items.line = line
            items.lines = [item.start_mark.line + 1 for item in node.value]
            return items
        return self._scalar(node, line)

    def _scalar(self, node: yaml.Node, line: int) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise ConfigError(self.source, "invalid scalar value", line) from None


@dataclass(frozen=True, slots=True)
class Place:
    """Where a value was written, for errors: its label (``config.tenants[0].hosts``), the line of
    its key or list item, and the YAML node; a value left out (a default) has its mapping's line."""

    source: str
    label: str
    line: int
    node: Any = None  # the YAML value written here; None for a default

    @classmethod
    def root(cls, data: LineMap, source: str) -> Place:
        return cls(source, "config", data.line, data)

    def key(self, name: str) -> Place:
        label = f"{self.label}.{name}"
        if not isinstance(self.node, LineMap) or name not in self.node:
            return Place(self.source, label, self.line)
        return Place(self.source, label, self.node.lines[name], self.node[name])

    def item(self, index: int) -> Place:
        label = f"{self.label}[{index}]"
        if not isinstance(self.node, LineList) or index >= len(self.node):
            return Place(self.source, label, self.line)
        return Place(self.source, label, self.node.lines[index], self.node[index])

    def has(self, name: str) -> bool:
        return isinstance(self.node, LineMap) and name in self.node

    def error(self, reason: str) -> ConfigError:
        return ConfigError(self.source, f"{self.label}: {reason}", self.line)
