"""``--workers``: the workers' metrics in prometheus-client's multi-process files, merged by the supervisor.

A worker writes the values of its own families (not process_* or python_*) into its files
in the folder the supervisor names (``PROMETHEUS_MULTIPROC_DIR``): once a second, when the
supervisor's scrape asks, and on its way out. Its request path still only updates dicts.
The supervisor reads the folder with prometheus-client's ``MultiProcessCollector``:
counters and histograms are summed over every worker that ever ran (a dead worker's files
are folded into one ``*_retired.db``, so restarts add no files), and each gauge is merged
over the live workers as ``gauge_modes`` says (``mark_process_dead`` drops a dead one's).
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.samples import Sample

from authz.telemetry.metrics import Registry, bound_label

__all__ = ["ENV", "GAUGE_MODES", "MergedWorkers", "WorkerFiles"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client's multiprocess modes for a gauge, the live ones only: a dead worker's
# value is dropped. Not ``liveall``: its pid label would make a series per worker ever started.
GAUGE_MODES = frozenset({"livemax", "livemin", "livesum", "livemostrecent"})
_DEFAULT_MODE = "livemax"


class _File:
    """One of a worker's files: prometheus-client's mmap'ed dict, and what was last written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = MmapedDict(str(path))  # type: ignore[no-untyped-call]
        self.written: dict[str, float] = {}

    def write(self, entries: Mapping[str, float]) -> None:
        for key, value in entries.items():
            if self.written.get(key) != value:
                self.data.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
                self.written[key] = value

    def close(self) -> None:
        self.data.close()  # type: ignore[no-untyped-call]


class WorkerFiles:
    """This worker's families in its multi-process files (``write``), for the supervisor to merge."""

    def __init__(
        self, folder: Path, registry: Registry, gauge_modes: Mapping[str, str], pid: int | None = None
    ) -> None:
        unknown = set(gauge_modes.values()) - GAUGE_MODES
        if unknown:
            raise ValueError(f"gauge modes must be among {sorted(GAUGE_MODES)}: {sorted(unknown)}")
        self._folder = folder
        self._registry = registry
        self._modes = gauge_modes
        self._pid = os.getpid() if pid is None else pid
        self._files: dict[str, _File] = {}
        self._keys: dict[
            tuple[str, str, tuple[tuple[str, str], ...]], str
        ] = {}  # json.dumps is most of a write
        self._closed = False
        self._lock = threading.Lock()  # the loop's timer and an admin scrape in a thread

    def write(self) -> None:
        """Write every family's current values (only those that changed reach the file)."""
        with self._lock:
            if self._closed:
                return  # the last values are written: the supervisor may be folding the files away
            wanted = self._entries()
            for prefix in list(self._files):
                if prefix.startswith("gauge_") and prefix not in wanted:
                    self._replace(prefix, {})
            for prefix, entries in wanted.items():
                file = self._files.get(prefix)
                if file is None:
                    file = self._files[prefix] = _File(self._folder / f"{prefix}_{self._pid}.db")
                elif prefix.startswith("gauge_") and file.written.keys() - entries.keys():
                    # A gauge's series is gone (an issuer removed by a reload): a file cannot
                    # forget a key, so a new one replaces it, else the series would stay at its
                    # last value. Counters keep theirs: what was counted was counted.
                    self._replace(prefix, entries)
                    continue
                file.write(entries)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for file in self._files.values():
                file.close()
            self._files.clear()

    def _replace(self, prefix: str, entries: Mapping[str, float]) -> None:
        old = self._files.pop(prefix)
        fresh = old.path.with_name(old.path.name + ".new")  # not *.db: the supervisor's glob skips it
        fresh.unlink(missing_ok=True)
        file = _File(fresh)
        file.write(entries)
        os.replace(fresh, old.path)  # a scrape reads the old file or the new one, whole
        file.path = old.path
        old.close()
        self._files[prefix] = file

    def _entries(self) -> dict[str, dict[str, float]]:
        """File prefix (``counter``, ``histogram``, ``gauge_<mode>``) -> mmap key -> value."""
        entries: dict[str, dict[str, float]] = defaultdict(dict)
        for family in self._registry.collect():
            if family.type == "gauge":
                prefix = "gauge_" + self._modes.get(family.name, _DEFAULT_MODE)
            elif family.type in ("counter", "histogram"):
                prefix = family.type
            else:
                continue
            into = entries[prefix]
            for sample in _stored_samples(family):
                series = (family.name, sample.name, tuple(sample.labels.items()))
                key = self._keys.get(series)
                if key is None:
                    labels = sample.labels
                    key = mmap_key(
                        family.name, sample.name, list(labels), list(labels.values()), family.documentation
                    )
                    self._keys[series] = key
                into[key] = sample.value
        return entries


def _stored_samples(family: Metric) -> Iterable[Sample]:
    """A family's samples as the files hold them: a histogram's buckets each on its own (the
    collector adds them up and derives ``_count``), no ``_created``."""
    if family.type == "counter":
        return [s for s in family.samples if s.name == family.name + "_total"]
    if family.type != "histogram":
        return family.samples
    stored: list[Sample] = []
    below: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        if sample.name == family.name + "_sum":
            stored.append(sample)
        elif sample.name == family.name + "_bucket":
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            stored.append(sample._replace(value=sample.value - below.get(series, 0.0)))
            below[series] = sample.value
    return stored


class MergedWorkers:
    """The supervisor's collector of the workers' files; ``retire`` a worker once it has died."""

    def __init__(self, folder: Path, refresh: Callable[[], None]) -> None:
        """``refresh``: asks the live workers to write their files now (blocking, bounded)."""
        self._folder = folder
        self._refresh = refresh
        self._lock = threading.Lock()  # a scrape never reads a file that retire() is folding away

    def collect(self) -> Iterable[Metric]:
        self._refresh()
        with self._lock:
            files = MultiProcessCollector(None, str(self._folder))  # type: ignore[no-untyped-call]
            families = list(files.collect())  # type: ignore[no-untyped-call]
        for family in families:
            if family.type == "histogram":
                # The collector spells bounds as floats (le="1.0"); this service writes "1".
                family.samples = [
                    s._replace(labels={**s.labels, "le": bound_label(float(s.labels["le"]))})
                    if "le" in s.labels
                    else s
                    for s in family.samples
                ]
        return families

    def retire(self, pid: int) -> None:
        """A worker died: drop its live gauges, fold its counters and histograms into the retired files.

        A file that cannot be read is renamed ``*.unreadable`` (out of every scrape, which it
        would fail) and the error raised: that worker's counts are lost, the rest go on.
        """
        with self._lock:
            mark_process_dead(pid, str(self._folder))  # type: ignore[no-untyped-call]
            for kind in ("counter", "histogram"):
                dead = self._folder / f"{kind}_{pid}.db"
                if dead.exists():
                    try:
                        self._fold(dead, self._folder / f"{kind}_retired.db")
                    except Exception:
                        dead.replace(dead.with_name(dead.name + ".unreadable"))
                        raise

    @staticmethod
    def _fold(dead: Path, kept: Path) -> None:
        """``kept`` (if any) plus ``dead`` into a new ``kept``; then ``dead`` goes."""
        sources = [str(path) for path in (kept, dead) if path.exists()]
        merged = MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
        fresh = kept.with_name(kept.name + ".new")
        fresh.unlink(missing_ok=True)
        out = MmapedDict(str(fresh))  # type: ignore[no-untyped-call]
        try:
            for family in merged:
                for sample in family.samples:
                    labels = sample.labels
                    key = mmap_key(
                        family.name, sample.name, list(labels), list(labels.values()), family.documentation
                    )
                    out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            out.close()  # type: ignore[no-untyped-call]
        os.replace(fresh, kept)
        dead.unlink()
