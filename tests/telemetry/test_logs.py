"""Structured logs: the decision log's direct path writes exactly the line logging would."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.telemetry.logs import JsonFormatter, JsonHandler, Throttle, direct_sink, render_line, setup_logging

_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40))
_names = st.text(min_size=1, max_size=12).filter(lambda k: k not in {"time", "level", "logger", "pid", "msg"})


@given(fields=st.dictionaries(_names, _values, max_size=6))
def test_render_line_is_the_formatter_line(fields: dict[str, object]) -> None:
    """For any fields, the direct line equals JsonFormatter's for a real record (time, ms and pid included)."""
    record = logging.LogRecord("authz.decision", logging.INFO, __file__, 1, "decision", None, None)
    record.fields = fields
    expected = JsonFormatter().format(record)
    fields_json = json.dumps(fields, separators=(",", ":"))
    assert render_line("authz.decision", "decision", fields_json, record.created) == expected + "\n"


class _Record(logging.LogRecord):
    """A record factory of an application's own."""


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = saved
    root.setLevel(level)


def test_direct_sink_is_the_handler_setup_logging_installs(root: logging.Logger) -> None:
    """After setup_logging, an INFO record of authz.decision reaches only its JsonHandler: direct path."""
    setup_logging()
    logger = logging.getLogger("authz.decision")
    sink = direct_sink(logger)
    assert sink is root.handlers[0]
    assert isinstance(sink, JsonHandler)
    assert direct_sink(logger, logging.DEBUG) is None  # below the root's level: dropped, not written


@pytest.mark.parametrize(
    "change", ["second-handler", "filter", "other-handler", "level", "formatter", "none"]
)
def test_direct_sink_steps_aside_for_any_other_logging_set_up(root: logging.Logger, change: str) -> None:
    """Another handler, a filter, a level or formatter change: records go through logging instead."""
    setup_logging()
    logger = logging.getLogger("authz.decision")
    handler = root.handlers[0]
    if change == "second-handler":
        logging.getLogger("authz").addHandler(logging.NullHandler())
    elif change == "filter":
        handler.addFilter(lambda record: True)
    elif change == "other-handler":
        root.handlers[:] = [logging.StreamHandler(io.StringIO())]
    elif change == "level":
        handler.setLevel(logging.WARNING)
    elif change == "formatter":
        handler.setFormatter(logging.Formatter())
    elif change == "no-pid":
        logging.logProcesses = False  # the formatter would write "pid": null
    elif change == "record-factory":
        logging.setLogRecordFactory(_Record)
    else:
        root.handlers[:] = []
    try:
        assert direct_sink(logger) is None
    finally:
        logging.getLogger("authz").handlers[:] = []
        logging.logProcesses = True
        logging.setLogRecordFactory(logging.LogRecord)


def _installed(root: logging.Logger, stream: io.StringIO) -> JsonHandler:
    """setup_logging's handler, writing to ``stream``."""
    setup_logging()
    handler = root.handlers[0]
    assert isinstance(handler, JsonHandler)
    handler.setStream(stream)
    return handler


def test_write_line_goes_to_the_handler_stream(root: logging.Logger) -> None:
    """A direct line lands on the handler's stream, whole, between logging's own lines."""
    stream = io.StringIO()
    handler = _installed(root, stream)
    logging.getLogger("authz.server").info("before", extra={"fields": {"n": 1}})
    handler.write_line(render_line("authz.decision", "decision", '{"reason":"ok"}', 1.5))
    logging.getLogger("authz.server").info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["before", "decision", "after"]
    assert lines[1] == {"time": "1970-01-01T00:00:01.500Z", "level": "info", "logger": "authz.decision",
                        "pid": lines[0]["pid"], "msg": "decision", "reason": "ok"}  # fmt: skip


async def test_lines_written_on_a_loop_go_out_together_shortly_after(root: logging.Logger) -> None:
    """On an event loop, direct lines of several iterations are gathered and written in one write,
    in order, shortly after the first (each write releases the GIL: on a busy server, a round trip
    through grpc's poller thread)."""
    import asyncio
    import time

    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    handler = _installed(root, Recording())
    for n in range(3):
        handler.write_line(render_line("authz.decision", "decision", f'{{"n":{n}}}', 1.0))
        await asyncio.sleep(0)  # another loop iteration
    assert writes == []  # not yet: gathered
    deadline = time.monotonic() + 10  # bounds the wait for the timed write on a busy machine
    while not writes and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert len(writes) == 1
    assert [json.loads(line)["n"] for line in writes[0].splitlines()] == [0, 1, 2]
    handler.write_line(render_line("authz.decision", "decision", '{"n":3}', 1.0))
    handler.flush()  # logging.shutdown() at exit: what is gathered is written
    assert json.loads(writes[-1])["n"] == 3


def test_lines_written_off_a_loop_go_out_at_once(root: logging.Logger) -> None:
    """Without a running event loop (library use, threads), each direct line is written at once."""
    stream = io.StringIO()
    handler = _installed(root, stream)
    handler.write_line(render_line("authz.decision", "decision", '{"n":1}', 1.0))
    assert json.loads(stream.getvalue())["n"] == 1


def test_loops_in_several_threads_lose_no_line(root: logging.Logger) -> None:
    """Event loops in several threads write through one handler: every line once, whole."""
    import asyncio
    import threading

    stream = io.StringIO()
    handler = _installed(root, stream)

    async def burst(thread: int) -> None:
        for n in range(300):
            handler.write_line(render_line("authz.decision", "decision", f'{{"t":{thread},"n":{n}}}', 1.0))
            if n % 7 == 0:
                await asyncio.sleep(0)

    threads = [threading.Thread(target=asyncio.run, args=(burst(t),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    handler.flush()
    seen = [(line["t"], line["n"]) for line in map(json.loads, stream.getvalue().splitlines())]
    assert sorted(seen) == [(t, n) for t in range(4) for n in range(300)]
    for t in range(4):
        assert [n for thread, n in seen if thread == t] == list(range(300))  # in order, per thread


async def test_gathered_lines_go_out_before_a_record_logged_after_them(root: logging.Logger) -> None:
    """A line gathered on the loop, then a logging record in the same iteration: the line comes first."""
    stream = io.StringIO()
    handler = _installed(root, stream)
    handler.write_line(render_line("authz.decision", "decision", '{"n":1}', 1.0))
    logging.getLogger("authz.server").info("after")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["decision", "after"]


def test_a_line_gathered_on_a_loop_that_never_ran_again_is_not_stranded(root: logging.Logger) -> None:
    """Gathered in a loop's last moments (stopped, closed): written, in order, by the thread's next write."""
    import asyncio

    stream = io.StringIO()
    handler = _installed(root, stream)
    loop = asyncio.new_event_loop()

    def last_callback() -> None:
        loop.stop()
        handler.write_line(render_line("authz.decision", "decision", '{"n":1}', 1.0))

    loop.call_soon(last_callback)
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == ""  # gathered; that loop will not run again

    async def later() -> None:
        handler.write_line(render_line("authz.decision", "decision", '{"n":2}', 1.0))

    asyncio.run(later())  # ends before its gathered line's write is due
    handler.write_line(render_line("authz.decision", "decision", '{"n":3}', 1.0))  # off any loop
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1, 2, 3]


def test_a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(10.0)
    assert throttle.admit("a", now=100.0) == 0
    assert [throttle.admit("a", now=100.0 + i) for i in range(1, 10)] == [None] * 9
    assert throttle.admit("b", now=105.0) == 0  # keys are apart
    assert throttle.admit("a", now=110.0) == 9  # the next line says how many were left out
    assert throttle.admit("a", now=110.5) is None


def test_asyncio_accept_errors_do_not_flood_the_log(root: logging.Logger) -> None:
    """Out of descriptors, asyncio logs a line per failed accept, up to a listener's backlog each
    time (thousands a second, attack-19 F): setup_logging lets one through per 10 s, with a count."""
    asyncio_log = logging.getLogger("asyncio")
    saved = asyncio_log.filters[:]
    asyncio_log.filters[:] = [f for f in saved if type(f).__name__ != "_AcceptErrors"]  # a fresh one
    try:
        _check_accept_errors_filter()
    finally:
        asyncio_log.filters[:] = saved


def _check_accept_errors_filter() -> None:
    setup_logging()
    (accept_errors,) = [
        f for f in logging.getLogger("asyncio").filters if type(f).__name__ == "_AcceptErrors"
    ]

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    flood = [record("socket.accept() out of system resource") for _ in range(1000)]
    passed = [r for r in flood if accept_errors.filter(r)]
    assert len(passed) == 1
    assert passed[0].fields == {"left_out": 0}  # type: ignore[attr-defined]
    assert all(accept_errors.filter(record(f"other {i}")) for i in range(3))
    setup_logging()  # idempotent: still one filter
    assert len([f for f in logging.getLogger("asyncio").filters if type(f).__name__ == "_AcceptErrors"]) == 1


def test_a_forked_child_renders_its_own_pid() -> None:
    """render_line keeps the pid (a system call each line otherwise): a forked worker must not
    write its parent's."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its line's pid, through the pipe, then out without cleanup
        try:
            line = render_line("authz.decision", "decision", "{}", 0.0)
            os.write(write_end, json.dumps([json.loads(line)["pid"], os.getpid()]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        rendered, actual = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert rendered == actual == child
    assert json.loads(render_line("authz.decision", "decision", "{}", 0.0))["pid"] == os.getpid()


async def _written(writes: list[str]) -> None:
    """Wait for the gathered lines' timed write."""
    import asyncio
    import time

    deadline = time.monotonic() + 10  # bounds the wait for the timed write on a busy machine
    while not writes and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


class _Recording(io.StringIO):
    def __init__(self, writes: list[str]) -> None:
        super().__init__()
        self.writes = writes

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_a_deferred_line_is_rendered_when_written_in_its_place(root: logging.Logger) -> None:
    """A Deferred line (a renderer and its arguments) goes out rendered, between the lines written
    before and after it; rendered only when the gathered lines are written."""
    writes: list[str] = []
    handler = _installed(root, _Recording(writes))
    rendered: list[int] = []

    def render(n: int) -> str:
        rendered.append(n)
        return render_line("authz.decision", "decision", f'{{"n":{n}}}', 1.0)

    handler.write_line(render(0))
    handler.write_line((render, 1))
    handler.write_line(render(2))
    assert rendered == [0, 2]  # the deferred one waits for the write
    await _written(writes)
    assert [json.loads(line)["n"] for line in writes[0].splitlines()] == [0, 1, 2]
    assert handler.write_line((render, 3)) is not None  # gathered again: returns the lines it joined


async def test_a_deferred_line_that_cannot_be_rendered_costs_no_other_line(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renderer that raises: reported as logging reports an unformattable record; the rest go out."""
    writes: list[str] = []
    handler = _installed(root, _Recording(writes))
    errors: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", errors.append)

    def broken() -> str:
        raise ValueError("cannot render")

    handler.write_line(render_line("authz.decision", "decision", '{"n":0}', 1.0))
    handler.write_line((broken,))
    handler.write_line(render_line("authz.decision", "decision", '{"n":2}', 1.0))
    await _written(writes)
    assert [json.loads(line)["n"] for line in writes[0].splitlines()] == [0, 2]
    assert len(errors) == 1


def test_off_a_loop_a_deferred_line_that_cannot_be_rendered_does_not_raise(
    root: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a running loop a deferred line is rendered at once, and a failure is reported, not raised."""
    stream = io.StringIO()
    handler = _installed(root, stream)
    errors: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", errors.append)

    def broken() -> str:
        raise ValueError("cannot render")

    handler.write_line((broken,))
    handler.write_line((render_line, "authz.decision", "decision", '{"n":1}', 1.0))
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1]
    assert len(errors) == 1
