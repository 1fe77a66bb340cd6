"""The gRPC door: Envoy's ext_authz v3 Check over grpc.aio, health, reflection, drain."""
