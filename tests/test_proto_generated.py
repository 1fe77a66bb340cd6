"""The committed generated code in authz/_proto is exactly what protos/generate.py produces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "authz" / "_proto"
GENERATOR = REPO / "protos" / "generate.py"


def _tree(root: Path) -> dict[str, bytes]:
    """Map each file under ``root`` (bytecode caches excluded) to its bytes."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _generate(out: Path) -> subprocess.CompletedProcess[str]:
    """Run protos/generate.py --out ``out`` in a fresh interpreter."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Regenerate the code into a temporary directory and return its files."""
    out = tmp_path_factory.mktemp("regen") / "_proto"
    result = _generate(out)
    assert result.returncode == 0, result.stderr
    return _tree(out)


def test_regeneration_produces_the_committed_file_set(regenerated: dict[str, bytes]) -> None:
    """Regenerating yields exactly the files committed under authz/_proto (none missing or extra)."""
    committed = _tree(COMMITTED)
    assert sorted(regenerated) == sorted(committed), "authz/_proto is stale: run `python protos/generate.py`"


def test_regeneration_is_byte_identical_to_the_committed_code(
    regenerated: dict[str, bytes],
) -> None:
    """Every regenerated file is byte-identical to its committed counterpart."""
    committed = _tree(COMMITTED)
    changed = sorted(name for name in regenerated if committed.get(name) != regenerated[name])
    assert not changed, f"authz/_proto is stale ({changed}): run `python protos/generate.py`"


def test_regeneration_is_deterministic(tmp_path: Path, regenerated: dict[str, bytes]) -> None:
    """Two regenerations give byte-identical trees."""
    result = _generate(tmp_path / "_proto")
    assert result.returncode == 0, result.stderr
    assert _tree(tmp_path / "_proto") == regenerated


def test_generated_modules_use_the_private_pool_and_package_imports(
    regenerated: dict[str, bytes],
) -> None:
    """No generated module uses the default descriptor pool or imports envoy/google.rpc top-level."""
    for name, data in regenerated.items():
        text = data.decode("utf-8")
        assert "_descriptor_pool.Default()" not in text, name
        if name.endswith("_pb2.py"):
            assert "from authz._proto import _builder as _builder\n" in text, name
            assert "DESCRIPTOR = _PRIVATE_POOL.AddSerializedFile(" in text, name
            assert "google.protobuf.internal import builder" not in text, name
        for line in text.splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("from envoy", "import envoy")), (name, line)
            assert not stripped.startswith(("from google.rpc", "import google.rpc")), (name, line)
            if stripped.startswith("from google.protobuf import "):
                assert not stripped.split()[3].endswith("_pb2"), (name, line)


def test_generator_refuses_to_wipe_a_foreign_directory(tmp_path: Path) -> None:
    """The generator leaves a non-empty directory it did not generate untouched and fails."""
    foreign = tmp_path / "not_generated"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious\n", encoding="utf-8")
    result = _generate(foreign)
    assert result.returncode == 1
    assert "refusing to wipe" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
