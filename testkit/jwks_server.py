"""A real local JWKS endpoint for tests: a private CA, and an HTTPS server in a thread.

The CA and the server certificate (SAN 127.0.0.1 and localhost) are made with
``cryptography``. The server is stdlib ``ThreadingHTTPServer`` on 127.0.0.1 port 0;
TLS is negotiated in each connection's own thread, so a client that hangs or fails
the handshake never blocks the others. Its behaviour is switched by ``mode``:

- ``ok``: the current ``document`` (200, application/json)
- ``error``: HTTP 500 with a body containing ``BODY_MARKER``
- ``garbage``: HTTP 200 with a non-JSON body containing ``BODY_MARKER``
- ``hang``: read the request, never answer (until the server stops)
- ``trickle``: send the document a few bytes at a time, slowly
- ``redirect``: 302 to ``redirect_to``

``stop()`` takes it down: the port then refuses connections.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwcrypto.jwk import JWK

from authz.jose.mint import public_jwks

__all__ = ["BODY_MARKER", "CertificateAuthority", "JwksServer"]

BODY_MARKER = "BODY-MARKER-must-never-be-logged"
JWKS_PATH = "/.well-known/jwks.json"
TRICKLE_CHUNK = 8  # bytes per write
TRICKLE_PAUSE = 0.1  # seconds between writes


@dataclass(frozen=True)
class CertificateAuthority:
    """A private CA (EC P-256) whose certificate is written to ``ca_file``."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_file: Path

    @classmethod
    def create(cls, folder: Path, name: str) -> CertificateAuthority:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_file = folder / f"{name}-ca.pem"
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, ca_file)

    def client_files(self, folder: Path, name: str) -> tuple[Path, Path]:
        """A client certificate (for mTLS): (cert file, key file)."""
        return self.server_files(folder, name, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def server_files(
        self, folder: Path, name: str, *, usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH
    ) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 and localhost: (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 (HTTPS, or plain HTTP without ``cert_files``)."""

    def __init__(self, cert_files: tuple[Path, Path] | None = None) -> None:
        self.mode = "ok"
        self.document = b'{"keys": []}'
        self.redirect_to = ""
        self.requests: Counter[str] = Counter()  # by path
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop: hanging handlers return
        tls = None
        if cert_files is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(*cert_files)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._httpd.tls = tls
        self.port: int = self._httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="jwks-server", daemon=True
        )  # a short poll interval: stop() returns quickly
        self._thread.start()
        self._stopped = False

    def url(self, path: str = JWKS_PATH) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def serve_keys(self, keys: Iterable[JWK]) -> None:
        """Answer (mode ``ok``) with the public JWKS of ``keys``."""
        self.document = json.dumps(public_jwks(list(keys))).encode()

    def stop(self) -> None:
        """Take the server down: hanging answers end, the port refuses connections."""
        if self._stopped:
            return
        self._stopped = True
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _count(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: JwksServer
    tls: ssl.SSLContext | None

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except OSError:  # the client did not trust us, or went away
                return
        try:
            super().finish_request(request, client_address)
        except OSError:  # the client gave up (timeout) while we were answering
            pass
        finally:
            request.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._count(self.path)
        mode = owner.mode
        if mode == "hang":
            owner._release.wait(60)
            self.close_connection = True
            return
        if mode == "error":
            self._answer(500, f"internal error {BODY_MARKER}".encode(), "text/plain")
        elif mode == "garbage":
            self._answer(200, f"<html><body>{BODY_MARKER}</body></html>".encode(), "application/json")
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", owner.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "trickle":
            body = owner.document
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), TRICKLE_CHUNK):
                if owner._release.wait(TRICKLE_PAUSE):
                    return
                self.wfile.write(body[start : start + TRICKLE_CHUNK])
        else:
            self._answer(200, owner.document, "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
