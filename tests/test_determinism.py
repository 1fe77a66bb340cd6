"""Property tests generate the same examples whatever else a run has imported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st


def _examples() -> list[str]:
    drawn: list[str] = []

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(st.text(max_size=12))
    def record(value: str) -> None:
        drawn.append(value)

    record()
    return drawn


def test_loading_another_module_changes_no_example(tmp_path: Path) -> None:
    """A project module loaded between two runs (as a later test would) changes nothing drawn."""
    before = _examples()
    source = "\n".join(
        f"CONSTANT_{i} = {text!r}" for i, text in enumerate(["api :", "..;", "x_authz", "é"] * 8)
    )
    module_file = tmp_path / "strings_module.py"
    module_file.write_text(source + "\n")
    spec = importlib.util.spec_from_file_location("strings_module_for_determinism", module_file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        after = _examples()
    finally:
        del sys.modules[spec.name]
    assert after == before
