"""Tracing, metrics and the decision log: set-up, propagation, attribute names.

Tracing is configured from the standard ``OTEL_*`` environment variables and
is on only when an exporter is asked for (an OTLP endpoint, or
``OTEL_TRACES_EXPORTER``); off, a check pays for no span at all.

Envoy's gRPC client injects the context of its own ext_authz client span into
the **gRPC metadata** of the Check call (W3C ``traceparent``/``tracestate``, or
B3 with Zipkin-style tracing). The request's HTTP headers hold the downstream
client's context, one level up. So the parent is taken from the metadata
first, and from the request headers only when the metadata has none.

Nothing from a token reaches telemetry: attributes are the decision's fields
(tenant, rule, reason: names from the configuration and closed code sets), the
method, the normalized path without query, and key ids of configured keys. The
subject only when the configuration enables it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz.config import Config, TelemetrySettings
from authz.decision import Decision, Verdict
from authz.errors import AuthzError
from authz.logs import direct_sink, render_line
from authz.metrics import Histogram, Registry, Sample
from authz.reload import RESTART_SETTINGS, ReloadStatus
from authz.request import AuthzRequest

__all__ = [
    "CHECK_SPAN",
    "RepeatedAnswer",
    "Telemetry",
    "config_metrics",
    "decision_fields",
    "exporter_from_env",
    "extract_parent",
    "trace_id_of",
    "tracer_provider_from_env",
]

CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
_DEFAULT_SETTINGS = TelemetrySettings(log_subject=False, allow_log_sample_rate=1.0)
_LOGGER, _MSG = "authz.decision", "decision"
_log = logging.getLogger(_LOGGER)

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
    return Context()


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


def decision_fields(
    decision: Decision, request: AuthzRequest | None, settings: TelemetrySettings
) -> dict[str, Any]:
    """The decision log fields after request and trace id: the same for every repeat of a decision."""
    fields: dict[str, Any] = {
        "tenant": decision.tenant,
        "decision": decision.verdict.value,
        "reason": decision.reason,
        "rule": decision.rule,
        "method": request.method if request else None,
        "path": request.path if request else None,
        "kid": decision.key_id,
    }
    if settings.log_subject:
        fields["subject"] = decision.subject
    if decision.detail:
        fields["detail"] = decision.detail
    return fields


@dataclass(frozen=True, slots=True)
class RepeatedAnswer:
    """What recording a repeat of one decision needs, computed when it was first made."""

    labels: tuple[str, str, str]  # authz_checks_total's tenant, decision, reason
    verdict_label: tuple[str]  # authz_check_duration_seconds' decision
    sample_rate: float  # 1.0 for anything but an allow (denies are always logged)
    log_fields: Mapping[str, Any]  # decision_fields()
    log_tail: str  # those fields as JSON, after the opening brace and request/trace ids

    @classmethod
    def of(
        cls, decision: Decision, request: AuthzRequest | None, settings: TelemetrySettings | None
    ) -> RepeatedAnswer:
        settings = settings or _DEFAULT_SETTINGS
        fields = decision_fields(decision, request, settings)
        verdict = decision.verdict.value
        rate = settings.allow_log_sample_rate if decision.verdict is Verdict.ALLOW else 1.0
        tail = _json(fields)
        return cls(
            labels=(decision.tenant or "", verdict, decision.reason),
            verdict_label=(verdict,),
            sample_rate=rate,
            log_fields=MappingProxyType(fields),
            log_tail="}" if tail == "{}" else "," + tail[1:],
        )


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # what json.dumps does to a str


class _Timer:
    """Times a block into a histogram; a class, not a generator, for speed."""

    __slots__ = ("_histogram", "_labels", "_start")

    def __init__(self, labels: tuple[str, ...], histogram: Histogram) -> None:
        self._labels = labels
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(self._labels, time.perf_counter() - self._start)


class Telemetry:
    """Spans, metrics and the decision log of the Check path."""

    def __init__(
        self,
        provider: TracerProvider | None = None,
        *,
        registry: Registry | None = None,
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("envoy-jwe-authz") if provider is not None else None
        self.registry = registry or Registry()
        self.checks = self.registry.counter(
            "authz_checks_total",
            "Checks answered, by tenant, decision and reason.",
            ("tenant", "decision", "reason"),
        )
        self.latency = self.registry.histogram(
            "authz_check_duration_seconds", "Time to decide a check, by decision.", ("decision",)
        )
        self.memo_hits = self.registry.counter(
            "authz_http_memo_hits_total", "HTTP door checks answered from the answer memo (repeats).", ()
        )
        self._timers: dict[str, _Timer] = {}
        self.step_latency = self.registry.histogram(
            "authz_token_step_duration_seconds",
            "Time of the token steps: decrypt, verify, policy.",
            ("step",),
        )

    # -- spans -----------------------------------------------------------------

    @contextlib.contextmanager
    def check_span(self, parent: Context) -> Iterator[trace.Span | None]:
        """The SERVER span of one Check (None when tracing is off)."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(
            CHECK_SPAN,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "envoy.service.auth.v3.Authorization",
                "rpc.method": "Check",
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                # The handler failed instead of answering: an internal error (a
                # cancellation is not). The type name only: a message may quote input.
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def open_span(self, parent: Context, name: str) -> trace.Span | None:
        """A SERVER span that is not made current (the HTTP door may finish it in a task).

        Activate it around the decision with :meth:`active`; end it with ``span.end()``.
        """
        if self.tracer is None:
            return None
        return self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"network.protocol.name": "http"},
            record_exception=False,
            set_status_on_exception=False,
        )

    def active(self, span: trace.Span | None) -> contextlib.AbstractContextManager[Any]:
        """Make ``span`` the current span for a block (so that steps become its children)."""
        if span is None:
            return contextlib.nullcontext()
        return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A step of the decision: timed for metrics, a child span when tracing."""
        if self.tracer is None:
            # One reusable timer per step name: steps never nest or interleave
            # (the decision is synchronous), and this path must cost next to nothing.
            timer = self._timers.get(name)
            if timer is None:
                timer = self._timers[name] = _Timer((name,), self.step_latency)
            return timer
        return self._traced_step(name)

    @contextlib.contextmanager
    def _traced_step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with self.tracer.start_as_current_span(  # type: ignore[union-attr]
                name, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    yield
                except AuthzError:
                    raise  # a deny (bad token, failed check) is not an error of this service
                except Exception as exc:
                    # The type name only: the SDK's default status would quote the message.
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
        finally:
            self.step_latency.observe((name,), time.perf_counter() - start)

    def finish(
        self,
        span: trace.Span | None,
        decision: Decision,
        request: AuthzRequest | None,
        *,
        request_id: str,
        parent: Context,
        elapsed: float,
        settings: TelemetrySettings | None,
    ) -> None:
        """Record the decision: span attributes and status, metrics, decision log line."""
        settings = settings or _DEFAULT_SETTINGS
        self.checks.inc((decision.tenant or "", decision.verdict.value, decision.reason))
        self.latency.observe((decision.verdict.value,), elapsed)
        attributes = self._attributes(decision, request, settings)
        if span is not None:
            span.set_attributes(attributes)
            span.set_attribute("rpc.grpc.status_code", 0)  # every answer is a CheckResponse
            if decision.reason == "internal_error":
                span.set_status(Status(StatusCode.ERROR, "internal_error"))
        self._log(decision, request, request_id=request_id, span=span, parent=parent, settings=settings)

    def _attributes(
        self, decision: Decision, request: AuthzRequest | None, settings: TelemetrySettings
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "authz.decision": decision.verdict.value,
            "authz.reason": decision.reason,
        }
        if decision.token_present:
            attributes["authz.cache_hit"] = decision.cache_hit
        for key, value in (
            ("authz.tenant", decision.tenant),
            ("authz.rule", decision.rule),
            ("authz.key_id", decision.key_id),
            ("authz.decryption_key_id", decision.decryption_key_id),
            ("http.request.method", request.method if request else None),
            ("url.path", request.path if request else None),
            ("authz.subject", decision.subject if settings.log_subject else None),
        ):
            if value:
                attributes[key] = value
        return attributes

    def _log(
        self,
        decision: Decision,
        request: AuthzRequest | None,
        *,
        request_id: str,
        span: trace.Span | None,
        parent: Context,
        settings: TelemetrySettings,
    ) -> None:
        rate = settings.allow_log_sample_rate
        # Denies are always logged; allows may be sampled.
        if decision.verdict is Verdict.ALLOW and rate < 1.0 and random.random() >= rate:  # noqa: S311
            return
        sink = direct_sink(_log)
        if sink is None and not _log.isEnabledFor(logging.INFO):
            return
        context = (span or trace.get_current_span(parent)).get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else None
        fields = {
            "request_id": request_id,
            "trace_id": trace_id,
            **decision_fields(decision, request, settings),
        }
        if sink is not None:
            sink.write_line(render_line(_LOGGER, _MSG, _json(fields), time.time()))
        else:
            _log.info(_MSG, extra={"fields": fields})

    def repeat(
        self, answer: RepeatedAnswer, *, request_id: str, trace_id: str | None, elapsed: float
    ) -> None:
        """Record a check answered from an earlier identical one: metrics and the decision log line.

        Exactly what :meth:`finish` records for that decision (no span: the
        answer memo is used only with tracing off), with the fields that do not
        change from one repeat to the next rendered once.
        """
        self.checks.inc(answer.labels)
        self.latency.observe(answer.verdict_label, elapsed)
        if answer.sample_rate < 1.0 and random.random() >= answer.sample_rate:  # noqa: S311
            return
        sink = direct_sink(_log)
        if sink is not None:
            traced = "null" if trace_id is None else _json_str(trace_id)
            ids = f'{{"request_id":{_json_str(request_id)},"trace_id":{traced}'
            sink.write_line(render_line(_LOGGER, _MSG, ids + answer.log_tail, time.time()))
        elif _log.isEnabledFor(logging.INFO):
            fields = {"request_id": request_id, "trace_id": trace_id, **answer.log_fields}
            _log.info(_MSG, extra={"fields": fields})

    def shutdown(self) -> None:
        """Flush and stop the exporter (on server shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()


class _Holder(Protocol):
    current: Config | None
    generation: int


def config_metrics(
    holder: _Holder, reload_status: Callable[[], ReloadStatus | None]
) -> Callable[[], list[Sample]]:
    """A scrape-time collector for the loaded configuration, its reloads, keys and JWKS fetches."""

    def collect() -> list[Sample]:
        config = holder.current
        generation = [((), float(holder.generation))]
        samples = [
            Sample("authz_config_generation", "gauge", "Generation of the loaded config.", (), generation)
        ]
        status = reload_status()
        if status is not None:
            results = sorted(((r,), float(n)) for r, n in status.results.items())
            samples.append(
                Sample(
                    "authz_config_reloads_total", "counter", "Config reloads by result.", ("result",), results
                )
            )
            loaded = [((), status.loaded_at)]
            samples.append(
                Sample(
                    "authz_config_last_success_timestamp_seconds",
                    "gauge",
                    "Last good config load.",
                    (),
                    loaded,
                )
            )
            pending = {deferred.setting for deferred in status.restart_required}
            samples.append(
                Sample(
                    "authz_config_restart_required",
                    "gauge",
                    "1 while the loaded config changes a setting that only a restart applies.",
                    ("setting",),
                    [((setting,), float(setting in pending)) for setting in RESTART_SETTINGS],
                )
            )
        if config is None:
            return samples
        sizes: list[tuple[tuple[str, ...], float]] = [
            (("decryption", ""), float(len(config.token_keys.decryption)))
        ]
        for issuer, keys in sorted(config.token_keys.issuers.items()):
            sizes.append((("issuer", issuer), float(keys.size())))
        samples.append(Sample("authz_keys", "gauge", "Keys loaded, by key set.", ("set", "issuer"), sizes))
        fetches = [
            ((remote.settings.uri, result), float(count))
            for remote in config.remote_jwks
            for result, count in sorted(remote.results.items())
        ]
        samples.append(
            Sample(
                "authz_jwks_fetches_total",
                "counter",
                "JWKS fetches by result.",
                ("jwks_uri", "result"),
                fetches,
            )
        )
        cache = config.cache
        lookups = [(("hit",), float(cache.hits)), (("miss",), float(cache.misses))]
        samples += [
            Sample(
                "authz_token_cache_lookups_total", "counter", "Token cache lookups.", ("result",), lookups
            ),
            Sample(
                "authz_token_cache_entries", "gauge", "Tokens in the cache.", (), [((), float(len(cache)))]
            ),
            Sample(
                "authz_token_cache_capacity",
                "gauge",
                "Bound of the cache.",
                (),
                [((), float(cache.max_entries))],
            ),
        ]
        return samples

    return collect
