"""The ``--workers`` merge: workers' metrics files (prometheus-client's format) read by the supervisor.

Two or three "workers" here are registries in this process, each writing its files under a
pid of its own into a real folder; the supervisor's view is rendered by prometheus-client
and read back by the strict parser of testkit/exposition.py. tests/integration/test_workers.py
does the same with real worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from authz.app.eviction import EvictionReading
from authz.app.jwks import JwksRegistry
from authz.app.reload import Reloader
from authz.app.revocation import RevocationService
from authz.app.serve import GAUGE_MODES, config_metrics
from authz.app.store import StoreClient, StoreHolder, StoreMetrics
from authz.app.subscriptions import SubscriptionService
from authz.config import SnapshotHolder, load_config
from authz.config.settings import StoreSettings
from authz.telemetry.metrics import Registry
from authz.telemetry.multiprocess import MergedWorkers, WorkerFiles
from testkit.exposition import Exposition, assert_histogram_consistent, parse_exposition
from testkit.world import World

MODES = {"gen": "livemax", "loaded_at": "livemin", "entries": "livesum", "keys": "livemax"}


@dataclass
class FakeWorker:
    """A worker's registry: the checks counter, the latency histogram and a collector of gauges."""

    pid: int
    folder: Path
    generation: float = 1
    loaded_at: float = 1000.0
    entries: float = 0
    keys: dict[str, float] = field(default_factory=lambda: {"https://idp.test": 2})

    def __post_init__(self) -> None:
        self.registry = Registry(standard=False)
        self.checks = self.registry.counter("authz_checks_total", "Checks.", ("tenant", "decision", "reason"))
        self.latency = self.registry.histogram("authz_check_duration_seconds", "Latency.", ("decision",))
        self.registry.collector(self)
        self.files = WorkerFiles(self.folder, self.registry, MODES, pid=self.pid)

    def collect(self) -> list[Metric]:
        keys = GaugeMetricFamily("keys", "Keys.", labels=["issuer"])
        for issuer, count in self.keys.items():
            keys.add_metric([issuer], count)
        return [
            GaugeMetricFamily("gen", "Generation.", self.generation),
            GaugeMetricFamily("loaded_at", "Last load.", self.loaded_at),
            GaugeMetricFamily("entries", "Entries.", self.entries),
            keys,
        ]

    def answer(self, count: int, decision: str = "allow", seconds: float = 0.003) -> None:
        for _ in range(count):
            self.checks.inc(("acme", decision, "ok" if decision == "allow" else "scope_missing"))
            self.latency.observe((decision,), seconds)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[int], FakeWorker]]:
    """Starts a fake worker with a pid of its own in ``tmp_path``; closes its files at the end."""
    made: list[FakeWorker] = []

    def make(pid: int) -> FakeWorker:
        made.append(FakeWorker(pid, tmp_path))
        return made[-1]

    yield make
    for worker in made:
        worker.files.close()


def supervisor_view(folder: Path, *workers: FakeWorker) -> tuple[MergedWorkers, Registry]:
    """The supervisor's registry over ``folder``; a scrape first has ``workers`` write (as the real
    supervisor asks its live workers through their private /metrics)."""
    merged = MergedWorkers(folder, lambda: [w.files.write() for w in workers])
    view = Registry(standard=False)
    view.collector(merged)
    return merged, view


def scrape(view: Registry) -> Exposition:
    return parse_exposition(view.render()[0].decode())


def test_counters_and_histograms_are_summed_and_gauges_merged_as_declared(
    tmp_path: Path, start: Callable[[int], FakeWorker]
) -> None:
    one, two = start(101), start(102)
    one.answer(3)
    one.answer(1, "deny")
    two.answer(5, seconds=0.2)
    one.generation, two.generation = 4, 1  # two was replaced: it counts its own loads from 1
    one.loaded_at, two.loaded_at = 1000.0, 2000.0
    one.entries, two.entries = 7, 5
    _, view = supervisor_view(tmp_path, one, two)
    metrics = scrape(view)

    assert metrics.types["authz_checks_total"] == "counter"
    assert metrics.value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 8
    assert metrics.value("authz_checks_total", tenant="acme", decision="deny", reason="scope_missing") == 1
    latency = "authz_check_duration_seconds"
    assert_histogram_consistent(metrics, latency)  # also: the bounds as configured, le="1" spelled so
    assert metrics.value(f"{latency}_count", decision="allow") == 8
    assert metrics.value(f"{latency}_bucket", decision="allow", le="0.005") == 3
    assert metrics.value(f"{latency}_bucket", decision="allow", le="0.25") == 8
    assert metrics.value(f"{latency}_bucket", decision="allow", le="1") == 8
    assert metrics.value(f"{latency}_sum", decision="allow") == pytest.approx(3 * 0.003 + 5 * 0.2)
    assert metrics.value("gen") == 4  # livemax
    assert metrics.value("loaded_at") == 1000.0  # livemin
    assert metrics.value("entries") == 12  # livesum
    assert metrics.value("keys", issuer="https://idp.test") == 2
    # No pid label anywhere: the merge adds no series per worker.
    assert all("pid" not in dict(labels) for _, labels in metrics.samples)

    # A scrape reads what the workers have now.
    two.answer(2)
    assert scrape(view).value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 10


def test_a_dead_workers_counts_are_kept_and_its_gauges_dropped(
    tmp_path: Path, start: Callable[[int], FakeWorker]
) -> None:
    """retire(): counters and histograms of a dead worker stay in the sums (folded into one
    file per kind, so replacements add no files); its live gauges are gone."""
    one, two = start(101), start(102)
    one.answer(3)
    two.answer(4)
    one.entries, two.entries, one.generation = 7, 5, 3
    merged, view = supervisor_view(tmp_path, one, two)
    assert scrape(view).value("entries") == 12

    one.files.close()  # one dies: the supervisor retires its pid
    merged.retire(101)
    three = start(103)  # its replacement
    three.answer(1)
    _, view = supervisor_view(tmp_path, two, three)
    metrics = scrape(view)
    assert metrics.value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 8
    assert metrics.value("authz_check_duration_seconds_count", decision="allow") == 8
    assert_histogram_consistent(metrics, "authz_check_duration_seconds")
    assert metrics.value("entries") == 5  # two's and three's (0), not the dead one's 7
    assert metrics.value("gen") == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "101" in p.name) == []

    two.files.close()  # and another: the retired files fold again, nothing counted twice
    merged.retire(102)
    _, view = supervisor_view(tmp_path, three)
    three.answer(2)
    metrics = scrape(view)
    assert metrics.value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 10
    assert metrics.value("authz_check_duration_seconds_count", decision="allow") == 10
    assert metrics.value("authz_check_duration_seconds_bucket", decision="allow", le="0.0025") == 0
    assert metrics.value("entries") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_103.db",
        "counter_retired.db",
        "gauge_livemax_103.db",
        "gauge_livemin_103.db",
        "gauge_livesum_103.db",
        "histogram_103.db",
        "histogram_retired.db",
    ]
    merged.retire(102)  # retiring twice (or a pid with no files) changes nothing
    merged.retire(999)
    assert scrape(view).value("authz_checks_total", tenant="acme", decision="allow", reason="ok") == 10


def test_a_gauge_series_a_worker_no_longer_has_leaves_the_merge(
    tmp_path: Path, start: Callable[[int], FakeWorker]
) -> None:
    """An issuer removed by a reload: its authz_keys series goes, not kept at its last value."""
    worker = start(101)
    worker.keys = {"https://a.test": 2, "https://b.test": 1}
    _, view = supervisor_view(tmp_path, worker)
    assert len(scrape(view).series("keys")) == 2
    worker.keys = {"https://a.test": 3}
    metrics = scrape(view)
    assert metrics.series("keys") == [{"issuer": "https://a.test"}]
    assert metrics.value("keys", issuer="https://a.test") == 3
    assert not list(tmp_path.glob("*.new"))


def test_gauge_modes_are_live_and_without_a_pid_label(tmp_path: Path) -> None:
    """A dead worker's gauge must go (live*), and liveall would add a pid label per worker ever run."""
    for mode in ("liveall", "all", "max", "sum", "mostrecent"):
        with pytest.raises(ValueError, match="gauge modes"):
            WorkerFiles(tmp_path, Registry(standard=False), {"g": mode})


async def test_every_gauge_of_the_service_has_a_declared_merge(world: World) -> None:
    """Each gauge the service exposes is in GAUGE_MODES, and nothing else is."""
    holder = SnapshotHolder(load_config(world.config_path))
    reloader = Reloader(holder, str(world.config_path))
    revocations = RevocationService(StoreMetrics(Registry(standard=False)))
    subscriptions = SubscriptionService(StoreMetrics(Registry(standard=False)))
    # A store client that has read the store's INFO (no connection is made: none is used).
    stores = StoreHolder()
    stores.client = StoreClient(
        StoreSettings(
            url="redis://127.0.0.1:6379/0",
            hosts=(("127.0.0.1", 6379),),
            sentinel_service=None,
            db=0,
            username=None,
            tls=False,
            password=None,
            ca_file=None,
            key_prefix="authz:",
            timeout=0.1,
            local_fallback=False,
            max_connections=1,
        )
    )
    stores.client.eviction = EvictionReading(policy="noeviction", maxmemory=0, evicted_keys=0, answered=True)
    try:
        families = [
            *config_metrics(holder, JwksRegistry(), lambda: reloader.status).collect(),
            *revocations.collector().collect(),
            *subscriptions.collector().collect(),
            *stores.collector().collect(),
        ]
    finally:
        await stores.close()
    gauges = {family.name for family in families if family.type == "gauge"}
    assert gauges == set(GAUGE_MODES)


def test_an_unreadable_file_of_a_dead_worker_is_set_aside(
    tmp_path: Path, start: Callable[[int], FakeWorker]
) -> None:
    """retire() of a worker whose file cannot be read: the error is raised (the supervisor logs
    it), the file leaves the folder's scrapes, and the other workers' counts go on being served."""
    one, two = start(101), start(102)
    one.answer(3)
    two.answer(4)
    merged, view = supervisor_view(tmp_path, one, two)
    assert scrape(view).total("authz_checks_total") == 7
    one.files.close()
    with (tmp_path / "counter_101.db").open("r+b") as broken:
        broken.write(b"\xff\xff\xff\x7f")  # "used": far past the file's end
    with pytest.raises((RuntimeError, ValueError)):  # as the bytes fall: a bound or a key
        scrape(view)  # what every scrape would meet
    with pytest.raises((RuntimeError, ValueError)):  # as the bytes fall: a bound or a key
        merged.retire(101)
    assert (tmp_path / "counter_101.db.unreadable").exists()
    _, view = supervisor_view(tmp_path, two)
    assert scrape(view).total("authz_checks_total") == 4
