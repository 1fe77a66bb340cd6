"""Overload is answered with a deny: a check past its deadline is shed without crypto."""

from __future__ import annotations

import json

from authz.config import Config, SnapshotHolder
from authz.grpc.servicer import AuthorizationService
from authz.telemetry.recorder import Telemetry
from testkit.fakes import ServicerContext
from testkit.world import NOW, World, check_request


async def _answer(config: Config, token: str, remaining: float | None) -> tuple[int, int, str]:
    telemetry = Telemetry()
    service = AuthorizationService(SnapshotHolder(config), lambda: float(NOW), telemetry)
    response = await service.check(
        check_request(token=token).SerializeToString(), ServicerContext(remaining=remaining)
    )  # type: ignore[arg-type]
    if response.HasField("ok_response"):
        return response.status.code, 200, "ok"
    body = json.loads(response.denied_response.body)
    return response.status.code, int(response.denied_response.status.code), body["reason"]


async def test_a_check_past_its_deadline_is_shed(world: World, config: Config) -> None:
    """No time left when the check starts: 503 overloaded (gRPC UNAVAILABLE), no token work."""
    fresh = world.config()
    assert await _answer(fresh, world.token(), 0.0) == (14, 503, "overloaded")
    assert (fresh.snapshot.cache.hits, fresh.snapshot.cache.misses) == (0, 0)  # the token was never looked at


async def test_a_check_with_time_left_is_decided(world: World, config: Config) -> None:
    """With time left (or no deadline at all) the check is decided as usual."""
    assert await _answer(config, world.token(), 1.0) == (0, 200, "ok")
    assert await _answer(config, world.token(), None) == (0, 200, "ok")
