"""The gRPC door's handler in a bare grpc.aio server: the ablation between the floor and ``authz serve``.

``--answer ours``: our ``AuthorizationService`` (memo, decision log to stdout as ``authz
serve`` writes it) registered as ``authz serve`` registers it, in a server with no
options, no concurrency limit, no health, reflection, admin or HTTP door.
``--answer canned``: the same server answering every check with the bytes ours answers
the given CheckRequest with (decided once at start-up): the floor plus the response's size.
The steps between, each answering canned after doing part of a repeat's work: ``parse`` (the
message parsed), ``read`` (and the memo key read, authz.grpc.repeat), ``wire`` (the memo key
read from the bytes instead, authz.grpc.wire, without the parse: what a repeat pays where the
extension is built), ``unrecorded`` (our handler whole, but a repeat's metrics and log line left out).

Prints ``{"msg": "serving", "port": N, "pid": P}`` like bench/noop_authz.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.config import SnapshotHolder, load_config
from authz.grpc._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from authz.grpc.messages import parse
from authz.grpc.repeat import read_repeat
from authz.grpc.servicer import AUTHORIZATION_SERVICE, AuthorizationService
from authz.grpc.wire import read_wire
from authz.telemetry.logs import setup_logging
from authz.telemetry.recorder import Telemetry


async def serve(listen: str, config: Path, message: Path, answer: str) -> int:
    setup_logging()
    holder = SnapshotHolder(load_config(config))
    service = AuthorizationService(holder, telemetry=Telemetry())
    canned = await service.answer(message.read_bytes(), None)
    steps: dict[str, Callable[[bytes], object]] = {
        "canned": lambda _data: None,
        "parse": parse,
        "read": lambda data: read_repeat(CheckRequest.FromString(data)),
    }
    if read_wire is not None:  # the reading from the wire (authz/grpc/_wire.c), where it is built
        steps["wire"] = read_wire
    if answer == "wire" and read_wire is None:
        raise SystemExit("--answer wire: the extension authz.grpc._wire is not built here")
    if answer in steps:
        step = steps[answer]

        async def check(data: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            step(data)
            return canned

        handler = grpc.method_handlers_generic_handler(
            AUTHORIZATION_SERVICE,
            {"Check": grpc.unary_unary_rpc_method_handler(check)},
        )
    else:
        if answer == "unrecorded":
            service._telemetry.repeat = lambda *_args, **_kwargs: None  # type: ignore[method-assign]
        handler = service.handler()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
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
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--message", type=Path, required=True, help="a serialized CheckRequest")
    parser.add_argument(
        "--answer", choices=("ours", "canned", "parse", "read", "wire", "unrecorded"), default="ours"
    )
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.listen, args.config, args.message, args.answer))


if __name__ == "__main__":
    sys.exit(main())
