"""Shared fixtures: one test world (keys, config) per session; deterministic property tests."""

from __future__ import annotations

import pytest
from hypothesis.internal.conjecture import providers

from authz.config import Config
from testkit.world import World, build_world


def _draw_only_from_the_test() -> None:
    """Same commit, same examples.

    Hypothesis (6.131 and later) now and then draws a constant found in the source of any
    project module loaded so far, so a property test generates other examples alone than
    in the full suite, where more modules are loaded. There is no setting for it: the
    collector is replaced by an empty set (the pinned version is in constraints.txt;
    tests/test_determinism.py fails if an upgrade brings the dependence back).
    """
    empty = providers.Constants()
    providers._get_local_constants = lambda: empty  # see the docstring


_draw_only_from_the_test()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Keys, key files and a config file, generated once per session."""
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def config(world: World) -> Config:
    """The world's configuration, loaded once."""
    return world.config()
