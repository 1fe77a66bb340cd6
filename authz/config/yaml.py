"""Line-aware YAML: mappings and lists that remember where each key and item was written.

Every configuration error names the file, the line and the reason; unknown keys are errors
(a typo must not silently drop a rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import yaml

from authz.errors import ConfigError

__all__ = ["LineList", "LineMap", "Section", "empty_map", "parse_yaml"]

_T = TypeVar("_T")


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


class Section:
    """Typed, line-aware reads from one mapping; unknown keys are errors."""

    def __init__(self, data: Any, source: str, where: str, line: int | None) -> None:
        if not isinstance(data, LineMap):
            raise ConfigError(source, f"{where} must be a mapping", line)
        self.data, self.source, self.where = data, source, where
        self.used: set[str] = set()

    def line(self, key: str | None = None) -> int:
        return self.data.lines.get(key, self.data.line) if key else self.data.line

    def error(self, key: str | None, reason: str) -> ConfigError:
        label = f"{self.where}.{key}" if key else self.where
        return ConfigError(self.source, f"{label}: {reason}", self.line(key))

    def get(self, key: str, kind: type[_T], default: _T | None = None) -> _T:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(None, f"missing required key {key!r}")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise self.error(key, f"must be {_kind_name(kind)}")
        return value  # type: ignore[no-any-return]

    def strings(self, key: str, *, required: bool = True) -> list[str]:
        value = self.get(key, list, None if required else LineList())
        if required and not value:
            raise self.error(key, "must not be empty")
        if not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "must be a list of non-empty strings")
        return list(value)

    def section(self, key: str) -> Section:
        self.used.add(key)
        value = self.data.get(key, empty_map(self.line()))
        return Section(value, self.source, f"{self.where}.{key}", self.line(key))

    def items(self, key: str) -> Iterator[tuple[Section, int]]:
        value = self.get(key, list)
        lines = value.lines if isinstance(value, LineList) else [self.line(key)] * len(value)
        for index, (item, line) in enumerate(zip(value, lines, strict=True)):
            yield Section(item, self.source, f"{self.where}.{key}[{index}]", line), line

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.error(key, "must be a positive integer")
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.error(key, "unknown key")


def empty_map(line: int) -> LineMap:
    empty = LineMap()
    empty.line, empty.lines = line, {}
    return empty


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def _kind_name(kind: type) -> str:
    return _KIND_NAMES.get(kind, kind.__name__)
