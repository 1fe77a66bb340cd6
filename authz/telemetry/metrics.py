"""Prometheus metrics: cheap counters and histograms for the request path, exposed by prometheus-client.

Counters and histograms on the request path are plain dict updates on the event loop
thread (no lock, no allocation beyond the first sample of a label set): prometheus-client's
own metric objects take a lock per update and cost a warm HTTP-door answer 9 %, 30 % in
multi-process mode (docs/observability.md, "Metrics"). They are read at scrape time, as are
the collectors of state that lives elsewhere (reload results, key set sizes, JWKS fetches),
by prometheus-client's registry, which also brings the process and Python collectors and both
exposition formats.

Label values come only from bounded sets: reason codes, decisions, and names from the
configuration (tenants, issuers). Never paths, subjects or tokens.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DEFAULT_BUCKETS", "Collector", "Counter", "Histogram", "Registry", "bound_label"]

Labels = tuple[str, ...]

# Latency buckets in seconds: 100 µs .. 2.5 s.
DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)


class Counter:
    """A counter family: ``values`` maps a label-value tuple to its count."""

    def __init__(self, name: str, help_text: str, label_names: Labels) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.label_names)
        values = self.values.copy()  # a snapshot: a scrape in a thread may meet a new label set
        if not self.label_names and not values:
            values[()] = 0.0  # as prometheus-client's own counters: there from the start
        for labels, value in sorted(values.items()):
            family.add_metric(labels, value)
        return family


class Histogram:
    """A histogram family: ``series`` maps a label-value tuple to [bucket counts..., sum, count]."""

    def __init__(
        self, name: str, help_text: str, label_names: Labels, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, label_names
        self.buckets = tuple(buckets)
        self._bounds = [bound_label(bound) for bound in self.buckets]
        self.series: dict[Labels, list[float]] = {}  # per label set: bucket counts..., sum, count

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        buckets = self.buckets
        index = bisect_left(buckets, value)  # the first bound at or above value
        if index < len(buckets) and value <= buckets[index]:  # (NaN is in no bucket, as before)
            series[index] += 1
        series[-2] += value
        series[-1] += 1

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.label_names)
        for labels, series in sorted((labels, list(s)) for labels, s in self.series.copy().items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(self._bounds, series, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", series[-1]))
            family.add_metric(labels, buckets, series[-2])
        return family


class Registry:
    """Metrics of one process. ``render()`` is the body of ``GET /metrics``; ``collect()`` the
    families of this service alone (what a worker hands its supervisor)."""

    def __init__(self, *, standard: bool = True) -> None:
        """``standard``: with prometheus-client's process_* and python_* collectors."""
        self._metrics: list[Counter | Histogram] = []
        self._collectors: list[Collector] = []
        # auto_describe off: registering never calls collect() (collectors read live state).
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(self)  # collect(), below
        if standard:
            ProcessCollector(registry=self.prometheus)
            PlatformCollector(registry=self.prometheus)
            GCCollector(registry=self.prometheus)

    def counter(self, name: str, help_text: str, label_names: Labels = ()) -> Counter:
        metric = Counter(name, help_text, label_names)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, label_names: Labels = ()) -> Histogram:
        metric = Histogram(name, help_text, label_names)
        self._metrics.append(metric)
        return metric

    def collector(self, collector: Collector) -> None:
        """A custom collector, run at each scrape (prometheus-client's ``Collector``: ``collect()``)."""
        self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        """This service's families: the counters and histograms, then the collectors' (no process_*)."""
        for metric in self._metrics:
            yield metric.family()
        for collector in self._collectors:
            yield from collector.collect()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of a scrape: OpenMetrics when ``accept`` (the request's Accept
        header) asks for it, else the Prometheus text format 0.0.4, as prometheus-client chooses."""
        encode, content_type = choose_encoder(accept)
        return encode(self.prometheus), content_type


def bound_label(bound: float) -> str:
    """A bucket bound as its ``le`` label: the shortest form, ``1`` rather than ``1.0`` (the spelling
    this service has always exposed: a dashboard's ``le="1"`` keeps matching)."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    return repr(int(bound)) if bound == int(bound) and abs(bound) < 1e15 else repr(bound)
