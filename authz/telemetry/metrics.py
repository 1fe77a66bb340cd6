"""Prometheus metrics: a small registry and the text exposition format.

Counters and histograms on the request path are plain dict updates on the
event loop thread (no locks, no allocation beyond the first sample of a label
set). State that lives elsewhere (reload results, key set sizes, JWKS fetches)
is read at scrape time by collectors, so nothing else needs to push.

Label values come only from bounded sets: reason codes, decisions, and names
from the configuration (tenants, issuers). Never paths, subjects or tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Counter", "Histogram", "Registry", "Sample"]

Labels = tuple[str, ...]

# Latency buckets in seconds: 100 µs .. 2.5 s.
DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class Sample:
    """One metric family as collected at scrape time."""

    name: str
    kind: str  # counter | gauge
    help: str
    label_names: Labels
    values: Sequence[tuple[Labels, float]]


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Labels) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield from _header(self.name, "counter", self.help)
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(
        self, name: str, help_text: str, label_names: Labels, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.buckets = tuple(buckets)
        self.series: dict[Labels, list[float]] = {}  # per label set: bucket counts..., sum, count

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                series[index] += 1
                break
        series[-2] += value
        series[-1] += 1

    def render(self) -> Iterable[str]:
        yield from _header(self.name, "histogram", self.help)
        names = (*self.label_names, "le")
        for labels, series in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip(self.buckets, series, strict=False):
                cumulative += count
                yield f"{self.name}_bucket{_labels(names, (*labels, _number(bound)))} {_number(cumulative)}"
            yield f"{self.name}_bucket{_labels(names, (*labels, '+Inf'))} {_number(series[-1])}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-2])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {_number(series[-1])}"


class Registry:
    """Metrics of one process; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Histogram] = []
        self._collectors: list[Callable[[], Iterable[Sample]]] = []

    def counter(self, name: str, help_text: str, label_names: Labels = ()) -> Counter:
        metric = Counter(name, help_text, label_names)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, label_names: Labels = ()) -> Histogram:
        metric = Histogram(name, help_text, label_names)
        self._metrics.append(metric)
        return metric

    def collector(self, collect: Callable[[], Iterable[Sample]]) -> None:
        self._collectors.append(collect)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        for collect in self._collectors:
            for sample in collect():
                lines.extend(_header(sample.name, sample.kind, sample.help))
                for labels, value in sample.values:
                    lines.append(f"{sample.name}{_labels(sample.label_names, labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, help_text: str) -> Iterable[str]:
    help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")  # the format escapes HELP too
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


def _labels(names: Labels, values: Labels) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"  # int(nan) would raise and take the whole scrape down
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)
