"""A do-nothing ext_authz server: the floor of a Python grpc.aio Check service.

Every ``envoy.service.auth.v3.Authorization/Check`` is answered with an OK
CheckResponse, serialized once at start-up; the request is not even parsed.
Whatever a real Python service does per check comes on top of this.

Prints one JSON line ``{"msg": "serving", "port": N, "pid": P}`` on stdout once
it listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse

SERVICE = "envoy.service.auth.v3.Authorization"
OK_RESPONSE = CheckResponse()
OK_RESPONSE.status.code = 0
OK_BYTES = OK_RESPONSE.SerializeToString()


async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Allow everything."""
    return OK_BYTES


def handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None
            )
        },
    )


async def serve(listen: str) -> int:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"msg": "serving", "port": port, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.listen))


if __name__ == "__main__":
    sys.exit(main())
