"""The README's quick start as a user runs it: `authz demo`, `authz serve`, the demo issuer's tokens."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["demo_proof", "demo_token", "wait_serving"]


def wait_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"authz exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.05)
    raise TimeoutError("authz did not become SERVING")


def demo_token(folder: Path, *args: str) -> str:
    return _script(folder, "issue-token", *args)


def demo_proof(folder: Path, *args: str) -> str:
    """A DPoP proof by the demo client's key (``dpop-proof --method M --url U --token T``)."""
    return _script(folder, "dpop-proof", *args)


def _script(folder: Path, name: str, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(folder / name), *args], check=True, capture_output=True, text=True, timeout=30, env=env
    )
    return done.stdout.strip()
