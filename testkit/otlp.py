"""A real OTLP/gRPC trace receiver for tests: what a collector would get, span by span.

Built on opentelemetry-proto's generated ``TraceServiceServicer``: a plain
grpc server on 127.0.0.1 (port 0) answering ``Export`` and storing every span
of every ``ResourceSpans``/``ScopeSpans`` it receives (the field is
``scope_spans``, field 2, as sent by the Python SDK and by Envoy). Waits are
bounded.

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, ...}
        ...
        spans = receiver.wait_for_trace(trace_id, names={"envoy.service.auth.v3.Authorization/Check"})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpReceiver", "ReceivedSpan", "attribute_value"]

LOOPBACK = "127.0.0.1"
SpanKind = trace_pb2.Span.SpanKind


def attribute_value(value: common_pb2.AnyValue) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [attribute_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: attribute_value(kv.value) for kv in pairs}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One received span, ids as lower-case hex ("" for no parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # trace_pb2.Span.SpanKind
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    scope: str
    status_code: int  # trace_pb2.Status.StatusCode
    status_message: str
    raw: trace_pb2.Span

    @property
    def service_name(self) -> str | None:
        name = self.resource.get("service.name")
        return name if isinstance(name, str) else None


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # noqa: N802 - the generated method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._store(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC collector stand-in on 127.0.0.1:<ephemeral port>."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests = 0
        self._server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve (idempotent)."""
        if self._server is None:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp"))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
            self.port = server.add_insecure_port(f"{LOOPBACK}:0")
            server.start()
            self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=1).wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the OTLP endpoint (plain text gRPC) for exporters."""
        return f"http://{LOOPBACK}:{self.port}"

    # -- storage -------------------------------------------------------------------

    def _store(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = scope_spans.scope.name
                received.extend(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        raw=span,
                    )
                    for span in scope_spans.spans
                )
        with self._changed:
            self._requests += 1
            self._spans.extend(received)
            self._changed.notify_all()

    @property
    def requests(self) -> int:
        """Export calls received so far."""
        with self._changed:
            return self._requests

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        """A copy of the spans received so far (of one trace, when given), oldest first."""
        with self._changed:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    # -- waiting -------------------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[list[ReceivedSpan]], bool], *, timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Wait (bounded) until ``predicate(all spans)`` holds; return the spans, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(s.trace_id, s.name) for s in self._spans})
                    msg = f"no matching spans within {timeout}s; received (trace, name): {names}"
                    raise TimeoutError(msg)
                self._changed.wait(remaining)
            return list(self._spans)

    def wait_for_trace(
        self,
        trace_id: str,
        *,
        names: Collection[str] = (),
        services: Collection[str] = (),
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Wait until trace ``trace_id`` has a span of each name and of each service.name; its spans."""

        def complete(spans: list[ReceivedSpan]) -> bool:
            mine = [s for s in spans if s.trace_id == trace_id]
            have_names = {s.name for s in mine}
            have_services = {s.service_name for s in mine}
            return bool(mine) and set(names) <= have_names and set(services) <= have_services

        self.wait_until(complete, timeout=timeout)
        return self.spans(trace_id)
