"""A strict reader of the Prometheus text exposition format, for tests of /metrics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from authz.telemetry.metrics import DEFAULT_BUCKETS

__all__ = ["Exposition", "Labels", "assert_histogram_consistent", "parse_exposition"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    """A parsed text exposition (format 0.0.4)."""

    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)


def _unescape(text: str, escapes: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            assert text[i + 1 : i + 2] in escapes, f"bad escape in {text!r}"
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _label_set(line: str, pos: int) -> tuple[Labels, int]:
    """Parse ``{a="x",b="y"}`` from ``line[pos]`` ('{'); return the labels and the position after '}'."""
    labels: dict[str, str] = {}
    pos += 1
    while line[pos] != "}":
        match = _LABEL.match(line, pos)
        assert match, f"bad label at {pos}: {line!r}"
        name, pos = match.group(1), match.end()
        chars: list[str] = []
        while line[pos] != '"':
            if line[pos] == "\\":
                assert line[pos + 1] in _ESCAPES, f"bad escape: {line!r}"
                chars.append(_ESCAPES[line[pos + 1]])
                pos += 2
            else:
                assert line[pos] != "\n"
                chars.append(line[pos])
                pos += 1
        assert name not in labels, f"duplicate label {name}: {line!r}"
        labels[name] = "".join(chars)
        pos += 1
        if line[pos] == ",":
            pos += 1
    return frozenset(labels.items()), pos + 1


def parse_exposition(text: str) -> Exposition:
    """Parse the Prometheus text format strictly enough to catch malformed output."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    result = Exposition()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in result.helps, f"second HELP for {name}"
            result.helps[name] = _unescape(help_text, {"\\": "\\", "n": "\n"})
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            assert name not in result.types, f"second TYPE for {name}"
            result.types[name] = kind
            continue
        assert line, "empty line"
        assert not line.startswith("#"), f"unexpected comment {line!r}"
        match = _NAME.match(line)
        assert match, line
        name, pos = match.group(), match.end()
        labels: Labels = frozenset()
        if line[pos] == "{":
            labels, pos = _label_set(line, pos)
        assert line[pos] == " ", line
        value_text = line[pos + 1 :].split(" ")[0]
        assert re.fullmatch(r"[+-]?(Inf|NaN|[0-9.eE+-]+)", value_text), line
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in result.types or family in result.types, f"sample before its TYPE: {line!r}"
        assert (name, labels) not in result.samples, f"duplicate sample {line!r}"
        result.samples[(name, labels)] = float(value_text)
    return result


def assert_histogram_consistent(exposition: Exposition, name: str) -> None:
    """Each series: cumulative buckets non-decreasing, +Inf == _count, le bounds as configured."""
    assert exposition.types[name] == "histogram"
    counts = {frozenset(s.items()) for s in exposition.series(f"{name}_count")}
    assert counts
    for labels in counts:
        buckets = sorted(
            (float(dict(bl)["le"]), v)
            for (n, bl), v in exposition.samples.items()
            if n == f"{name}_bucket" and bl - {("le", dict(bl)["le"])} == labels
        )
        assert [b for b, _ in buckets] == [*DEFAULT_BUCKETS, math.inf]
        values = [v for _, v in buckets]
        assert values == sorted(values)
        assert values[-1] == exposition.samples[(f"{name}_count", labels)]
        assert exposition.samples[(f"{name}_sum", labels)] >= 0
