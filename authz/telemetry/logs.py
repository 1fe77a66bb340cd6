"""Structured logging: one JSON object per line on stderr, with exactly the fields given.

The decision log has a direct path: when a logger's records would reach exactly the handler
:func:`setup_logging` installed, :func:`direct_sink` hands it out and :func:`render_line`
writes the very line :class:`JsonFormatter` would, at a fraction of ``logging``'s cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import Any

__all__ = [
    "Deferred",
    "JsonFormatter",
    "JsonHandler",
    "Throttle",
    "direct_sink",
    "render_line",
    "setup_logging",
]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: library messages may quote input.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, separators=(",", ":"), default=str)


class JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler of :func:`setup_logging`: JSON lines, and the decision log's direct path.

    Direct lines written on an event loop are gathered and written together, at
    most ``_GATHER_SECONDS`` after the first of them: one write for every check
    answered meanwhile, instead of one each (a write releases the GIL, which on
    a busy gRPC server hands it to grpc's poller thread and back: two context
    switches). Elsewhere they are written at once, after what was gathered. Each
    thread gathers its own (one running loop per thread), so threads never share
    a list; what a thread gathered is written before any record it logs, on
    ``flush`` (``logging.shutdown``), by its next line when its loop is gone, and
    when the thread ends.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(JsonFormatter())
        self._local = threading.local()

    def write_line(self, line: str | Deferred) -> list[str | Deferred] | None:
        """Write one line, as ``emit`` would, under the handler's lock: rendered (ending in a
        newline), or a ``Deferred`` one, rendered when the gathered lines are written (on an
        event loop, up to ``_GATHER_SECONDS`` later: a burst of lines is rendered in one go).
        Returns the gathered lines it joined, None when it was written at once."""
        gathered: _Gathered | None = getattr(self._local, "gathered", None)
        if gathered is None:
            gathered = self._local.gathered = _Gathered(self)
        lines = gathered.lines
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if lines:
                self._write_pending(lines)  # gathered on a loop that is gone: first, in order
            self._write(line if type(line) is str else self._render(line))  # type: ignore[arg-type]
            return None
        if lines and gathered.loop is not loop:
            self._write_pending(lines)  # gathered on a loop that is gone: out now, in order
        if not lines:
            gathered.loop = loop
            loop.call_later(_GATHER_SECONDS, self._write_pending, lines)
        lines.append(line)
        if len(lines) >= _MAX_GATHERED:
            self._write_pending(lines)
        return lines

    def emit(self, record: logging.LogRecord) -> None:
        # This thread's gathered lines were written first: they go out before the record.
        self._write_gathered()
        super().emit(record)

    def flush(self) -> None:
        # logging.shutdown() flushes: this thread's gathered lines go out.
        self._write_gathered()
        super().flush()

    def _write_gathered(self) -> None:
        gathered: _Gathered | None = getattr(self._local, "gathered", None)
        if gathered is not None and gathered.lines:
            self._write_pending(gathered.lines)

    def _write_pending(self, pending: list[str | Deferred]) -> None:
        if pending:
            text = "".join([line if type(line) is str else self._render(line) for line in pending])  # type: ignore[arg-type]
            pending.clear()
            self._write(text)

    def _render(self, line: Deferred) -> str:
        """A deferred line, rendered; one that cannot be is reported as logging reports a record it
        cannot format (``handleError``), and the other lines go out."""
        try:
            return _rendered(line)
        except Exception:  # noqa: BLE001 - one bad line must not cost the lines gathered with it
            self.handleError(logging.LogRecord("authz", logging.INFO, "", 0, "", None, None))
            return ""

    def _write(self, text: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # noqa: BLE001 - as logging does: a full disk must not fail the check
                self.handleError(logging.LogRecord("authz", logging.INFO, "", 0, "", None, None))


class _Gathered:
    """One thread's gathered lines and the loop whose timer writes them; what is left is
    written when the thread ends (its thread-local data, this, is then let go)."""

    __slots__ = ("handler", "lines", "loop")

    def __init__(self, handler: JsonHandler) -> None:
        self.handler = handler
        self.lines: list[str | Deferred] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def __del__(self) -> None:
        if self.lines:
            self.handler._write_pending(self.lines)


_MAX_GATHERED = 256  # lines gathered before they are written, whatever the loop does
_GATHER_SECONDS = 0.01  # the longest a gathered line waits for its write


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers[:] = [JsonHandler()]
    root.setLevel(level)
    # asyncio logs "socket.accept() out of system resource" for every failed accept, up to the
    # listener's backlog each time (1024 for the HTTP door): thousands of lines a second while
    # the process is out of file descriptors. One line per interval says it, with the count.
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _AcceptErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AcceptErrors())


class Throttle:
    """At most one line per ``interval`` seconds per key; the lines left out are counted."""

    __slots__ = ("_interval", "_last", "_left_out")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def admit(self, key: str, now: float | None = None) -> int | None:
        """The number of lines left out since the last one of ``key`` if this one may go, else None."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._left_out.pop(key, 0)


class _AcceptErrors(logging.Filter):
    """Lets one "out of system resource" record through per 10 s, saying how many were left out."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle(10.0)

    def filter(self, record: logging.LogRecord) -> bool:
        if "out of system resource" not in str(record.msg):
            return True
        left_out = self._throttle.admit("accept")
        if left_out is None:
            return False
        fields = getattr(record, "fields", None)
        record.fields = {**(fields if isinstance(fields, dict) else {}), "left_out": left_out}
        return True


def direct_sink(logger: logging.Logger, level: int = logging.INFO) -> JsonHandler | None:
    """The one handler a record of ``logger`` at ``level`` would reach, if it is a plain JsonHandler.

    None when the record would be dropped, filtered, or reach any other handler:
    then the caller logs through ``logging`` as usual.
    """
    if not logger.isEnabledFor(level):
        return None
    if (
        logging.getLogRecordFactory() is not logging.LogRecord
        or not logging.logProcesses  # the formatter would write "pid": null
        or logging.getLevelName(level) != "INFO"
    ):
        return None
    found: JsonHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if type(handler) is not JsonHandler or found is not None or handler.filters:
                return None
            if level < handler.level or type(handler.formatter) is not JsonFormatter:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


_second: tuple[int, str] = (-1, "")  # the last second rendered, swapped whole (threads may share it)
_pid = os.getpid()  # a system call each time otherwise; a forked child renews it


def _forked() -> None:
    global _pid  # noqa: PLW0603 - the process's own pid, renewed in a forked child
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


# A line rendered when it is written: (a function that renders it, its arguments...).
Deferred = tuple[Any, ...]


def _rendered(line: Deferred) -> str:
    text: str = line[0](*line[1:])
    return text


def render_line(logger: str, msg: str, fields_json: str, when: float) -> str:
    """The JsonFormatter line of an INFO record created at ``when`` whose fields render to ``fields_json``.

    (Milliseconds as ``LogRecord`` computes them on Python 3.11/3.12.)

    ``fields_json`` is a JSON object (``"{...}"``) whose keys are not the
    formatter's own (time, level, logger, pid, msg); ``logger`` and ``msg``
    must need no JSON escaping.
    """
    global _second  # noqa: PLW0603 - one cached second: strftime is the slow part
    whole = int(when)
    cached, text = _second
    if whole != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    millis = int((when - whole) * 1000)
    head = f'{{"time":"{text}.{millis:03d}Z","level":"info","logger":"{logger}","pid":{_pid},"msg":"{msg}"'
    if fields_json == "{}":
        return head + "}\n"
    return f"{head},{fields_json[1:]}\n"
