"""authz.grpc._proto builds, from its descriptor set, the classes protoc's modules would give.

xds-protos' modules are protoc's output for the same files, so they are the oracle: class
names, modules and nesting, and the surface of top-level enums (protobuf's EnumTypeWrapper,
which our EnumType stands in for).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.type.v3 import http_status_pb2 as x_http_status_pb2
from google.protobuf import struct_pb2 as x_struct_pb2

from authz.grpc._proto import DESCRIPTOR_POOL, EnumType
from authz.grpc._proto.envoy.type.v3 import http_status_pb2
from authz.grpc._proto.google.protobuf import struct_pb2

REPO = Path(__file__).resolve().parents[2]

ENUM_PAIRS = [
    (http_status_pb2.StatusCode, x_http_status_pb2.StatusCode),
    (struct_pb2.NullValue, x_struct_pb2.NullValue),
]


@pytest.mark.parametrize(("ours", "theirs"), ENUM_PAIRS, ids=["StatusCode", "NullValue"])
def test_top_level_enum_has_protobufs_enum_surface(ours: EnumType, theirs: Any) -> None:
    """Name, Value, keys, values, items and attribute access answer as protobuf's wrapper does."""
    assert isinstance(ours, EnumType)
    assert ours.DESCRIPTOR.file.pool is DESCRIPTOR_POOL
    assert ours.DESCRIPTOR.full_name == theirs.DESCRIPTOR.full_name
    assert ours.keys() == list(theirs.keys())
    assert ours.values() == list(theirs.values())
    assert ours.items() == list(theirs.items())
    for name, number in theirs.items():
        assert getattr(ours, name) == number
        assert ours.Value(name) == number
        assert ours.Name(number) == theirs.Name(number)


@pytest.mark.parametrize(("ours", "theirs"), ENUM_PAIRS, ids=["StatusCode", "NullValue"])
def test_top_level_enum_rejects_what_protobufs_rejects(ours: EnumType, theirs: Any) -> None:
    """Unknown numbers and names, and a name given for a number, fail with upstream's error and message."""

    def failure(call: Callable[[], object]) -> tuple[type[BaseException], str]:
        """The exception type and message of ``call``."""
        with pytest.raises(Exception) as caught:  # noqa: PT011 (compared with upstream's below)
            call()
        return caught.type, str(caught.value)

    for call in (
        lambda enum: enum.Name(999_999),
        lambda enum: enum.Value("NoSuchValue"),
        lambda enum: enum.NoSuchValue,
    ):
        assert failure(lambda: call(ours)) == failure(lambda: call(theirs))  # noqa: B023 (called at once)
    assert failure(lambda: ours.Name("OK"))[0] is failure(lambda: theirs.Name("OK"))[0] is TypeError


def test_module_level_enum_values_are_the_enums_numbers() -> None:
    """protoc puts each top-level enum value in the module; so do our modules."""
    assert http_status_pb2.Unauthorized == http_status_pb2.StatusCode.Unauthorized == 401
    assert struct_pb2.NULL_VALUE == 0
    for name, number in http_status_pb2.StatusCode.items():
        assert getattr(http_status_pb2, name) == getattr(x_http_status_pb2, name) == number


# Run in a fresh interpreter per protobuf implementation: classes are built once per process.
_SHAPE_SCRIPT = """
import gc, importlib, pickle
from authz.grpc._proto.envoy.service.auth.v3 import external_auth_pb2
gc.collect()  # classes no module names yet must survive: one class per message, for good

MODULES = [
    "envoy.config.core.v3.address_pb2", "envoy.config.core.v3.base_pb2",
    "envoy.service.auth.v3.attribute_context_pb2", "envoy.service.auth.v3.external_auth_pb2",
    "envoy.type.v3.http_status_pb2", "google.rpc.status_pb2", "google.protobuf.any_pb2",
    "google.protobuf.struct_pb2", "google.protobuf.timestamp_pb2", "google.protobuf.wrappers_pb2",
]

def check(ours, theirs, path):
    assert ours.__qualname__ == theirs.__qualname__ == path, (ours.__qualname__, path)
    assert ours.__module__ == "authz.grpc._proto." + theirs.__module__, (ours.__module__, path)
    for nested in ours.DESCRIPTOR.nested_types:
        check(getattr(ours, nested.name), getattr(theirs, nested.name), path + "." + nested.name)

for name in MODULES:
    ours = importlib.import_module("authz.grpc._proto." + name)
    theirs = importlib.import_module(name)
    assert ours.DESCRIPTOR.name == theirs.DESCRIPTOR.name
    for message in ours.DESCRIPTOR.message_types_by_name:
        check(getattr(ours, message), getattr(theirs, message), message)

from authz.grpc._proto.envoy.service.auth.v3 import attribute_context_pb2
request = external_auth_pb2.CheckRequest()
assert type(request.attributes) is attribute_context_pb2.AttributeContext
request.attributes.source.labels["app"] = "web"
assert pickle.loads(pickle.dumps(request)) == request
print("ok")
"""


@pytest.mark.parametrize("implementation", ["upb", "python"])
def test_classes_are_named_and_nested_as_protocs(implementation: str) -> None:
    """Every class has protoc's __qualname__, __module__ (under authz.grpc._proto) and nested classes, once."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = implementation
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SHAPE_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
