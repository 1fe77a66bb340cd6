"""A real ``authz serve`` process for tests: started, its JSON log lines collected, stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEADLINE = 20.0
# `python -m authz` under an RLIMIT_NOFILE of (argv[1], argv[2]), set before anything runs.
_UNDER_NOFILE = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "sys.argv = ['authz', *sys.argv[3:]]; "
    "runpy.run_module('authz', run_name='__main__', alter_sys=True)"
)

Record = dict[str, object]


@dataclass
class ServeProcess:
    """``python -m authz serve --config CONFIG ARGS``: every stderr line as written lands in ``raw``,
    every JSON one, parsed, in ``lines``."""

    process: subprocess.Popen[str]
    lines: list[Record] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        config: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        nofile: tuple[int, int] | None = None,
    ) -> ServeProcess:
        """``nofile``: the process's (soft, hard) RLIMIT_NOFILE at start."""
        command = ["-m", "authz"] if nofile is None else ["-c", _UNDER_NOFILE, *map(str, nofile)]
        process = subprocess.Popen(
            [sys.executable, *command, "serve", "--config", str(config), *args],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=dict(env) if env is not None else None,
        )
        running = cls(process)

        def read() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                running.raw.append(line)
                if line.startswith("{"):
                    running.lines.append(json.loads(line))

        running.reader = threading.Thread(target=read, daemon=True)
        running.reader.start()
        return running

    def wait_for(self, predicate: Callable[[Record], bool], what: str, timeout: float = DEADLINE) -> Record:
        """The first log record matching ``predicate`` (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.process.poll() is not None and not any(predicate(x) for x in self.lines):
                raise AssertionError(f"server exited ({self.process.returncode}) before {what}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def ports(self) -> tuple[int, int | None]:
        """(gRPC port, admin port) from the "serving" (or, with workers, "supervising") line."""
        line = self.wait_for(lambda r: r["msg"] in ("serving", "supervising"), "serving")
        admin = line.get("admin_port")
        return int(line["port"]), (int(admin) if admin is not None else None)  # type: ignore[call-overload]

    def stop(self) -> None:
        """Kill if still running, then reap the process and close the pipe."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()
