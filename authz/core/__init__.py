"""The core: request model, claims, policy, the decision, the one check sequence, answers as data.

It imports no door, no grpc, httptools or OpenTelemetry: telemetry implements its protocols.
"""
