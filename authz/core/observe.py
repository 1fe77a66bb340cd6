"""What the check sequence tells telemetry: small protocols the telemetry package implements."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from authz.core.decision import Decision
    from authz.core.request import AuthzRequest
    from authz.core.snapshot import RecordSettings

__all__ = ["NO_STEPS", "NO_TRACE", "Recorder", "Steps", "Trace"]


class Steps(Protocol):
    """Wraps the costly steps of a decision (decrypt, verify, policy): spans, timings."""

    def step(self, name: str) -> AbstractContextManager[None]: ...


class Trace(Protocol):
    """One check's trace (a span, or none) as telemetry keeps it; opaque to the core."""

    def active(self) -> AbstractContextManager[object]: ...


class Recorder(Steps, Protocol):
    """Records one answered check: metrics, span, decision log line."""

    def finish(
        self,
        trace: Trace,
        decision: Decision,
        request: AuthzRequest | None,
        *,
        request_id: str,
        elapsed: float,
        settings: RecordSettings | None,
    ) -> None: ...


class _Nothing:
    def step(self, name: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def active(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


NO_STEPS: Steps = _Nothing()
NO_TRACE: Trace = _Nothing()
