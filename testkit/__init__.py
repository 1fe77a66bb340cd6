"""Shared test fixtures of tests/, fuzz/ and bench/: a keyed world, real servers (Envoy, JWKS, OTLP), fakes.

Not part of the authz package (the wheel holds only authz/).
"""
