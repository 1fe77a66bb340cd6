"""The HTTP door: Envoy's HTTP ext_authz protocol (http_service) on asyncio and httptools."""
