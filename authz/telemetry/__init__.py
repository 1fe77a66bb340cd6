"""Telemetry: tracing (OpenTelemetry), metrics (Prometheus), the decision log, JSON logging."""
