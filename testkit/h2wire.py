"""A minimal HTTP/2 client for gRPC calls, written frame by frame.

Real gRPC clients stop opening streams once they see a GOAWAY; this one opens
them whenever it is told to, so a test can send a Check at an exact moment of a
server's drain (after its first GOAWAY). Headers are HPACK literals without
indexing, so no table state is shared with the server. Loopback only.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

__all__ = ["Frame", "H2Connection"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
# HPACK static table entries 8-14 (RFC 7541 Appendix A), as an indexed header field's first byte.
_STATIC_STATUS = {0x88: 200, 0x89: 204, 0x8A: 206, 0x8B: 304, 0x8C: 400, 0x8D: 404, 0x8E: 500}


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's prefixed integer (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + _integer(len(raw_name), 7) + raw_name + _integer(len(raw_value), 7) + raw_value


class H2Connection:
    """One plaintext HTTP/2 connection (prior knowledge), driven by the test."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.next_stream = 1
        self.sock.sendall(PREFACE + self._frame(SETTINGS, 0, 0, b""))

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
        )

    def unary(self, path: str, message: bytes, authority: str = "localhost") -> int:
        """Send one unary gRPC request on a new stream; returns the stream id."""
        stream = self.next_stream
        self.next_stream += 2
        block = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        body = b"\x00" + struct.pack(">I", len(message)) + message
        self.sock.sendall(
            self._frame(HEADERS, END_HEADERS, stream, block) + self._frame(DATA, END_STREAM, stream, body)
        )
        return stream

    def request(self, headers: list[tuple[str, str]]) -> int:
        """Send a request without a body (any pseudo-header values, e.g. a ``get`` method); its stream id."""
        stream = self.next_stream
        self.next_stream += 2
        block = b"".join(_literal(name, value) for name, value in headers)
        self.sock.sendall(self._frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
        return stream

    def response(self, stream: int, deadline: float) -> tuple[int | None, bytes]:
        """(status, body) of ``stream``: the status when the server indexes it in HPACK's static table
        (200, 204, 206, 304, 400, 404, 500), else None; the body is the DATA frames' payload."""
        status: int | None = None
        body = b""
        while True:
            frame = self.read_frame(deadline)
            if frame is None:
                raise ConnectionError("connection closed before the response ended")
            if frame.stream != stream:
                continue
            if frame.kind == RST_STREAM:
                raise ConnectionError("stream reset")
            if frame.kind == HEADERS and status is None and frame.payload:
                status = _STATIC_STATUS.get(frame.payload[0])
            elif frame.kind == DATA:
                body += frame.payload
            if frame.kind in (HEADERS, DATA) and frame.flags & END_STREAM:
                return status, body

    def read_frame(self, deadline: float) -> Frame | None:
        """The next frame (PINGs and SETTINGS are acknowledged on the way); None on EOF."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload = self.buffer[9 : 9 + length]
                    self.buffer = self.buffer[9 + length :]
                    frame = Frame(kind, flags, stream, payload)
                    if kind == PING and not flags & ACK:
                        self.sock.sendall(self._frame(PING, ACK, 0, payload))
                    elif kind == SETTINGS and not flags & ACK:
                        self.sock.sendall(self._frame(SETTINGS, ACK, 0, b""))
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no HTTP/2 frame before the deadline")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk

    def outcome(self, stream: int, deadline: float) -> str:
        """How ``stream`` ended: "answered" (trailers), "rst_stream", or "connection closed".

        (The server's HPACK may index or Huffman-code the trailers: they are not decoded.)
        """
        while True:
            frame = self.read_frame(deadline)
            if frame is None:
                return "connection closed"
            if frame.stream != stream:
                continue
            if frame.kind == RST_STREAM:
                return "rst_stream"
            if frame.kind == HEADERS and frame.flags & END_STREAM:
                return "answered"

    def until(self, kind: int, deadline: float) -> Frame | None:
        """Read frames until one of ``kind`` (returned) or EOF (None)."""
        while True:
            frame = self.read_frame(deadline)
            if frame is None or frame.kind == kind:
                return frame
