"""Tracing: the exporter and provider from OTEL_* variables, trace-context extraction, the check's span.

Envoy's gRPC client puts its ext_authz span's context in the call's metadata; the request's
own headers hold the downstream client's, one level up: metadata first, then headers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "CHECK_SPAN",
    "EMPTY_CONTEXT",
    "HTTP_SPAN",
    "TRACE_HEADERS",
    "CheckTrace",
    "exporter_from_env",
    "extract_parent",
    "trace_id_from",
    "trace_id_of",
    "tracer_provider_from_env",
]

CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
HTTP_SPAN = "envoy ext_authz http check"
EMPTY_CONTEXT = Context()  # no trace context was sent (shared: a Context is immutable)

# W3C wins over B3 when both are sent.
_FORMATS: tuple[tuple[str, TextMapPropagator], ...] = (
    ("traceparent", TraceContextTextMapPropagator()),
    ("b3", B3SingleFormat()),
    ("x-b3-traceid", B3MultiFormat()),
)

_TRACE_KEYS = frozenset({"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                         "x-b3-flags", "x-b3-parentspanid"})  # fmt: skip


def exporter_from_env(environ: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP span exporter the environment asks for, or None: tracing off.

    On when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or an OTLP endpoint is set;
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off.
    The protocol is ``grpc`` (default) or ``http/protobuf``; endpoint, headers,
    timeout and compression are read by the exporters from the standard variables.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter == "none" or (not exporter and not endpoint):
        return None
    if exporter and exporter != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported (use otlp or none)")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTLP protocol {protocol!r} is not supported (use grpc or http/protobuf)")


def tracer_provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider with a batch processor, or None when tracing is off.

    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource
    (default service name: envoy-jwe-authz); ``OTEL_TRACES_SAMPLER`` and its
    argument choose the sampler; ``OTEL_BSP_*`` tune the batch processor.
    """
    environ = os.environ if environ is None else environ
    exporter = exporter_from_env(environ)
    if exporter is None:
        return None
    # Precedence (OTel spec): OTEL_SERVICE_NAME, then service.name in OTEL_RESOURCE_ATTRIBUTES
    # (read by Resource.create), then our default instead of the SDK's "unknown_service".
    resource = Resource.create()
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        resource = resource.merge(Resource({"service.name": service_name}))
    elif str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "envoy-jwe-authz"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def extract_parent(
    metadata: Iterable[tuple[str, Any]], headers: Mapping[str, Sequence[str]] | None
) -> Context:
    """The parent context: from the gRPC metadata, else from the request's headers."""
    carrier = {k.lower(): v for k, v in metadata if isinstance(v, str) and k.lower() in _TRACE_KEYS}
    context = _extract(carrier)
    if context is not None:
        return context
    if headers:
        carrier = {k: v[0] for k, v in headers.items() if k in _TRACE_KEYS and v}
        context = _extract(carrier)
        if context is not None:
            return context
    return EMPTY_CONTEXT


def trace_id_from(
    metadata: Iterable[tuple[str, Any]], headers: Mapping[str, Sequence[str]] | None
) -> str | None:
    """The trace id a check's decision log line has with tracing off: its parent's (see extract_parent)."""
    return CheckTrace(None, extract_parent(metadata, headers)).trace_id()


def trace_id_of(carrier: Mapping[str, str]) -> str | None:
    """The trace id (32 hex digits) of the context in these headers (lower-case names), if any."""
    context = _extract(carrier)
    if context is None:
        return None
    return format(trace.get_current_span(context).get_span_context().trace_id, "032x")


def _extract(carrier: Mapping[str, str]) -> Context | None:
    """W3C first, then B3 single, then B3 multi: only a format that was sent is parsed."""
    for key, propagator in _FORMATS:
        if key in carrier:
            context = propagator.extract(carrier)
            if trace.get_current_span(context).get_span_context().is_valid:
                return context
    return None


TRACE_HEADERS = _TRACE_KEYS  # header names that may carry a trace context


class CheckTrace:
    """One check's trace: its span (None with tracing off) and the parent context it continues."""

    __slots__ = ("parent", "span")

    def __init__(self, span: trace.Span | None, parent: Context) -> None:
        self.span = span
        self.parent = parent

    def active(self) -> contextlib.AbstractContextManager[Any]:
        """The span made current for a block, so that the decision's steps become its children."""
        if self.span is None:
            return contextlib.nullcontext()
        return trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    def trace_id(self) -> str | None:
        """32 hex digits of the span's trace, else of the parent's, else None."""
        context = (self.span or trace.get_current_span(self.parent)).get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None


UNTRACED = CheckTrace(None, EMPTY_CONTEXT)  # tracing off, no context sent: shared
