"""Shared fixtures: one test world (keys, config) per session."""

from __future__ import annotations

import pytest

from authz.config import Config
from tests.helpers import World, build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Keys, key files and a config file, generated once per session."""
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def config(world: World) -> Config:
    """The world's configuration, loaded once."""
    return world.config()
