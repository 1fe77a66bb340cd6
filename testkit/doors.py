"""The same request through both doors, in process: the answer each gives (parity tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from authz.config import Config, SnapshotHolder
from authz.grpc.servicer import check
from authz.http.door import HttpDoor
from authz.telemetry.recorder import Telemetry
from testkit.world import NOW, check_request

__all__ = ["Answer", "via_grpc", "via_http"]


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    identity: dict[str, str]
    removed: frozenset[str]
    challenge: str | None


def via_grpc(
    config: Config, *, method: str, path: str, host: str, headers: dict[str, str], now: float = NOW
) -> Answer:
    response = check(
        SnapshotHolder(config),
        check_request(method=method, path=path, host=host, headers=headers),
        lambda: float(now),
    )
    reason = response.dynamic_metadata.fields["reason"].string_value
    if response.HasField("ok_response"):
        ok = response.ok_response
        identity = {h.header.key: h.header.value for h in ok.headers}
        return Answer(200, reason, identity, frozenset(ok.headers_to_remove), None)
    denied = response.denied_response
    found = {h.header.key: h.header.value for h in denied.headers}
    assert json.loads(denied.body)["reason"] == reason
    return Answer(int(denied.status.code), reason, {}, frozenset(), found.get("www-authenticate"))


def via_http(
    config: Config,
    *,
    method: str,
    path: str,
    host: str,
    headers: dict[str, str],
    door: HttpDoor | None = None,
    now: float = NOW,
) -> Answer:
    """The HTTP door's answer; given a door, through its raw entry point (memo included)."""
    plain = {"host": (host,), "x-request-id": ("req-1",), **{k: (v,) for k, v in headers.items()}}
    if door is None:
        answer = HttpDoor(SnapshotHolder(config), lambda: float(now), Telemetry(), config.http).answer(
            method, path, plain
        )
    else:
        raw = [(k.encode(), v.encode("latin-1")) for k, values in plain.items() for v in values]
        answer = door.answer_raw(method.encode(), path.encode(), raw)
    assert isinstance(answer, bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    found = dict(line.split(": ", 1) for line in lines[1:])
    if status == 200:
        removed = frozenset(filter(None, found.get("x-envoy-auth-headers-to-remove", "").split(",")))
        identity = {k: v for k, v in found.items() if k.startswith("x-authz-")}
        return Answer(
            200, _reason_of_allow(config, method, path, host, headers, now), identity, removed, None
        )
    reason = json.loads(body)["reason"]
    return Answer(status, reason, {}, frozenset(), found.get("www-authenticate"))


def _reason_of_allow(
    config: Config, method: str, path: str, host: str, headers: dict[str, str], now: float
) -> str:
    # An allowed HTTP answer carries no reason (its body is empty); the decision log
    # has it. Allow and dry-run-deny both answer 200: take the reason from the decision.
    from authz.core.decision import decide
    from authz.http.wire import from_http

    plain = {"host": (host,), **{k: (v,) for k, v in headers.items()}}
    return decide(config.snapshot, from_http(method, path, plain), now).reason
