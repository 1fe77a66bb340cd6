"""A do-nothing HTTP ext_authz server: the floor of a Python asyncio + httptools door.

Every request is answered ``200`` with no body, without looking at it beyond
what the parser must do. Whatever the real HTTP door does per check comes on
top of this. Prints ``{"msg": "serving", "port": N, "pid": P}`` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

import httptools

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(_OK)


async def serve(listen: str) -> int:
    host, _, port = listen.rpartition(":")
    server = await asyncio.get_running_loop().create_server(Connection, host, int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"msg": "serving", "port": bound, "pid": os.getpid()}), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(serve(args.listen))
    return asyncio.run(serve(args.listen))


if __name__ == "__main__":
    sys.exit(main())
