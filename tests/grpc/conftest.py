"""The gRPC door reads a repeat from the wire (authz/grpc/_wire.c) when that extension is built,
and through protobuf (repeat.read_repeat) when not, or when the wire reading declines: the
servicer's tests that ask ``reader`` run once with each."""

from __future__ import annotations

import pytest

import authz.grpc.servicer
from authz.grpc.wire import read_wire


@pytest.fixture(params=["wire", "protobuf"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "wire":
        if read_wire is None:
            pytest.skip("the C extension authz.grpc._wire is not built here")
    else:
        monkeypatch.setattr(authz.grpc.servicer, "read_wire", None)
    return str(request.param)
