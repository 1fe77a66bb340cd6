"""Fuzz target: the HTTP door's connection on arbitrary bytes from a client.

    python -m fuzz.fuzz_http [libFuzzer options] [corpus folders]   # or: make fuzz

The input is one mode byte and what a client sends on one connection (any
number of requests, pipelined, malformed or not), fed to a fresh connection of
one door in two chunks (the mode byte's upper bits say where the first ends;
its lowest bit starts a drain, ``close_when_idle``, between them). The door,
and so its answer memo, lives across inputs: a seed's repeated requests are
answered from the memo. Fixed world configuration with at most 3 requests per
connection, the tests' clock, no event loop (every answer is synchronous here:
no issuer has a jwks_uri). A finding is:

- an exception out of ``data_received`` or raised inside a parser callback
  (httptools would otherwise turn it into a 400), a write after close;
- a written answer that is not one well-formed HTTP/1.1 response with a known
  status and a content-length matching its body (an answer to HEAD: no body, and
  the length of the one it would have, 0 for an allow), that is not the answer
  recorded for its request, or that follows an answer saying ``connection: close``;
- an answer that differs, byte for byte, from the full decision of the same
  parsed request made at the same moment without the memo (``HttpDoor.answer``);
- an allow that none of these explains: acme's public ``/healthz`` by host (no
  subject or scopes passed, whatever token is sent), a dry-run deny of the dry
  tenant chosen by the host, or one of our issuers' tokens (the seeds'
  ``valid-*``) in the authorization header, for the tenant it names;
- a decision log line that is not a JSON object (the direct path is used: the
  log handler is setup_logging's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["authz", "httptools"]):
    from authz.config import SnapshotHolder
    from authz.core.request import normalize_path
    from authz.errors import Reason
    from authz.http.door import HttpDoor
    from authz.http.protocol import Connection, RawHeaders
    from authz.http.wire import closing
    from authz.telemetry.logs import JsonHandler
    from authz.telemetry.recorder import Telemetry
    from fuzz.harness import Finding, start
    from testkit.world import NOW

STATE = start()
# Small enough to reach in an input: the keep-alive bound, the soft header limits (a recorded
# deny) and the hard one (four times max_header_bytes: 431, closed).
SETTINGS = dataclasses.replace(
    STATE.config.http, max_requests_per_connection=3, max_header_bytes=2048, max_headers=16
)
DOOR = HttpDoor(SnapshotHolder(STATE.config), lambda: float(NOW), Telemetry(), SETTINGS)
TENANT_OF = {token: verified.claims.get("tenant") for token, verified in STATE.tokens.items()}
STATUSES = {200, 400, 401, 403, 408, 413, 414, 431, 500, 503}
ERROR_STATUSES = {400, 408, 413, 414, 431, 500, 503}  # answers the connection writes itself, then closes


class LogLines:
    """The decision log's stream: every line written must be a JSON object."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines += text.splitlines()
        return len(text)

    def flush(self) -> None:
        return None

    def check(self) -> None:
        for line in self.lines:
            if not isinstance(json.loads(line), dict):
                raise Finding("a decision log line is not a JSON object")
        self.lines.clear()


LOG = LogLines()
_handler = JsonHandler()
_handler.setStream(LOG)  # type: ignore[arg-type]
logging.getLogger().handlers[:] = [_handler]
logging.getLogger().setLevel(logging.INFO)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.late = 0  # writes after close (raising here would reach httptools, which makes it a 400)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self.closed:
            self.late += 1
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class Recording(Connection):
    """The door's connection, recording each completed request with the answer it got."""

    def __init__(self, door: HttpDoor) -> None:
        super().__init__(door)
        self.current: tuple[bytes, bytes, RawHeaders, Reason | None] | None = None
        self.answered: list[tuple[tuple[bytes, bytes, RawHeaders, Reason | None], bytes]] = []
        self.errors: list[BaseException] = []  # raised inside callbacks: httptools hides them

    def on_message_complete(self) -> None:
        # The method as sent (one llhttp does not parse is fed to it as GET), and the soft limit passed.
        method = self.method or self.parser.get_method() or b"GET"
        self.current = (method, self.url, list(self.headers), self.overflow)
        try:
            super().on_message_complete()
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.current = None

    def _send(self, answer: bytes | asyncio.Task[bytes], last: bool) -> None:
        if not isinstance(answer, bytes):
            self.errors.append(Finding("an answer waits for a refetch: no issuer here has a jwks_uri"))
        elif self.current is not None:
            self.answered.append((self.current, answer))
        super()._send(answer, last)


def decoded(raw: RawHeaders) -> dict[str, tuple[str, ...]]:
    headers: dict[str, list[str]] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {name: tuple(values) for name, values in headers.items()}


def parse_answer(data: bytes, *, to_head: bool = False) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) != 3 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
        raise Finding(f"not an HTTP/1.1 response: {data[:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        if not colon or name in fields:
            raise Finding(f"bad or repeated response header line {line[:60]!r}")
        fields[name] = value
    status = int(parts[1])
    if status not in STATUSES:
        raise Finding(f"unknown status {status}")
    if to_head:
        # No body after a HEAD (the client reads none: more bytes would be a protocol error);
        # the length is the body's the answer has: none for an allow, the JSON of a deny.
        length = fields.get("content-length", "")
        if body or not length.isdigit() or (length == "0") != (status == 200):
            raise Finding(f"answer to HEAD with a body or a wrong content-length ({length!r})")
    elif fields.get("content-length") != str(len(body)):
        raise Finding("content-length does not match the body")
    return status, fields, body


def explain_allow(request: tuple[bytes, bytes, RawHeaders, Reason | None], fields: dict[str, str]) -> None:
    method, target, raw, overflow = request
    if overflow is not None:
        raise Finding(f"allowed a request read past a soft limit ({overflow})")
    headers = decoded(raw)
    tenant = fields.get("x-authz-tenant")
    presented = [t for v in headers.get("authorization", ()) for t in TENANT_OF if t in v]
    if any(TENANT_OF[t] == tenant for t in presented) or (presented and tenant == "dry"):
        return
    # No token of this tenant: none, or another tenant's, which a public rule by host never reads.
    host = " ".join(headers.get("host", ()) + headers.get(":authority", ())).lower()
    if tenant == "dry" and "api.dry.test" in host:
        return  # a dry-run deny, answered 200 by design
    path = normalize_path(target.decode("latin-1"))
    if tenant != "acme" or path != "/healthz":
        token = "with a token of another tenant" if presented else "without one of our issuers' tokens"
        raise Finding(f"allowed {method!r} {path!r} for {tenant!r} {token}")
    if "x-authz-subject" in fields or "x-authz-scopes" in fields:
        raise Finding("identity header set on a public allow")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    rest = data[1:]
    split = (data[0] >> 1) * len(rest) // 127
    transport = Transport()
    connection = Recording(DOOR)
    connection.connection_made(transport)
    if rest[:split]:
        connection.data_received(rest[:split])
    if data[0] & 1:
        connection.close_when_idle()
    if rest[split:]:
        connection.data_received(rest[split:])
    connection.connection_lost(None)
    LOG.check()
    if connection.errors:
        raise connection.errors[0]
    if transport.late:
        raise Finding(f"{transport.late} write(s) after the connection was closed")

    answers = list(transport.written)
    expected = len(connection.answered)
    if len(answers) not in (expected, expected + 1):
        raise Finding(f"{len(answers)} answers written for {expected} answered requests")
    for index, written in enumerate(answers[:-1]):
        if b"\r\nconnection: close\r\n" in written.partition(b"\r\n\r\n")[0] + b"\r\n":
            raise Finding(f"answer {index + 1} of {len(answers)} said connection: close; more followed")
    for index, (request, answer) in enumerate(connection.answered):
        if answers[index] not in (answer, closing(answer)):
            raise Finding("the bytes written are not the answer given")
        method, target, raw, overflow = request
        status, fields, _ = parse_answer(answers[index], to_head=method == b"HEAD")
        if overflow is not None:
            reference = DOOR.refuse(method, raw, overflow)
        else:
            reference = DOOR.answer(method.decode("latin-1"), target.decode("latin-1"), decoded(raw))
        if reference != answer:
            raise Finding(f"answer differs from the full decision: {answer[:120]!r} vs {reference[:120]!r}")
        if status == 200:
            explain_allow(request, fields)
    if len(answers) == expected + 1:
        status, fields, _ = parse_answer(answers[-1])
        if status not in ERROR_STATUSES or fields.get("connection") != "close" or not transport.closed:
            raise Finding(f"an extra answer that is not a closing error ({status})")
    LOG.check()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
