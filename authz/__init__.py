"""envoy-jwe-authz: an Envoy ext_authz service for encrypted (JWE) access tokens."""

__all__ = ["__version__"]

__version__ = "0.1.0"
