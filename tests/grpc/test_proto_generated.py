"""The committed generated code in authz/grpc/_proto is exactly what protos/generate.py produces."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "authz" / "grpc" / "_proto"
GENERATOR = REPO / "protos" / "generate.py"
# authz/grpc/_proto's files that are written by hand (protos/generate.py HAND_WRITTEN): the loader.
HAND_WRITTEN = {"__init__.py"}


def _tree(root: Path) -> dict[str, bytes]:
    """Map each generated file under ``root`` (hand-written ones and bytecode excluded) to its bytes."""
    return {
        name: path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix != ".pyc"
        and (name := path.relative_to(root).as_posix()) not in HAND_WRITTEN
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
    """Regenerating yields exactly the files committed under authz/grpc/_proto (none missing or extra)."""
    committed = _tree(COMMITTED)
    assert sorted(regenerated) == sorted(committed), (
        "authz/grpc/_proto is stale: run `python protos/generate.py`"
    )


def test_regeneration_is_byte_identical_to_the_committed_code(
    regenerated: dict[str, bytes],
) -> None:
    """Every regenerated file is byte-identical to its committed counterpart."""
    committed = _tree(COMMITTED)
    changed = sorted(name for name in regenerated if committed.get(name) != regenerated[name])
    assert not changed, f"authz/grpc/_proto is stale ({changed}): run `python protos/generate.py`"


def test_regeneration_is_deterministic(tmp_path: Path, regenerated: dict[str, bytes]) -> None:
    """Two regenerations give byte-identical trees."""
    result = _generate(tmp_path / "_proto")
    assert result.returncode == 0, result.stderr
    assert _tree(tmp_path / "_proto") == regenerated


def _imports(text: str) -> list[str]:
    """Dotted names a module's import statements bind (``from a import b`` gives ``a.b``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_generated_modules_take_their_classes_from_the_private_pool(
    regenerated: dict[str, bytes],
) -> None:
    """Each *_pb2.py only names classes of authz.grpc._proto's pool: no descriptors of its own, no builder."""
    modules = [name for name in regenerated if name.endswith("_pb2.py")]
    assert len(modules) == 10
    for name in modules:
        text = regenerated[name].decode("utf-8")
        assert _imports(text) == ["authz.grpc._proto"], name
        assert "DESCRIPTOR = _proto.file_descriptor(" in text, name
        for forbidden in ("AddSerializedFile", "_descriptor_pool", "_builder", "_sym_db"):
            assert forbidden not in text, (name, forbidden)


def test_generated_code_imports_our_modules_never_the_top_level_ones(
    regenerated: dict[str, bytes],
) -> None:
    """Stubs and gRPC modules import envoy/google.rpc/google.protobuf *_pb2 modules under authz.grpc._proto."""
    for name, data in regenerated.items():
        if not name.endswith((".py", ".pyi")):
            continue
        for imported in _imports(data.decode("utf-8")):
            assert not imported.startswith(("envoy.", "google.rpc.")), (name, imported)
            if imported.startswith("google.protobuf."):
                assert not imported.endswith("_pb2"), (name, imported)


def test_no_runtime_module_of_authz_imports_protobuf_internals() -> None:
    """No .py file of authz/ (generated or not) imports google.protobuf.internal (stubs may name its types)."""
    offenders = [
        (path.relative_to(REPO).as_posix(), imported)
        for path in sorted((REPO / "authz").rglob("*.py"))
        for imported in _imports(path.read_text(encoding="utf-8"))
        if imported == "google.protobuf.internal" or imported.startswith("google.protobuf.internal.")
    ]
    assert not offenders


def test_descriptor_set_holds_our_protos_and_the_well_known_types_they_import(
    regenerated: dict[str, bytes],
) -> None:
    """descriptors.binpb is a FileDescriptorSet of protos/ plus imports, under Envoy's file names."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(regenerated["descriptors.binpb"])
    names = [file.name for file in fds.file]
    ours = sorted(p.relative_to(REPO / "protos").as_posix() for p in (REPO / "protos").rglob("*.proto"))
    assert sorted(set(names) - set(ours)) == [
        "google/protobuf/any.proto",
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    ]
    assert set(ours) <= set(names)
    assert len(names) == len(set(names))
    # Dependencies come first (protoc's --include_imports order), so the set loads in one pass.
    for index, file in enumerate(fds.file):
        assert set(file.dependency) <= set(names[:index]), file.name
    assert not any(file.HasField("source_code_info") for file in fds.file)
    for name in names:
        module = name.removesuffix(".proto") + "_pb2"
        assert f"{module}.py" in regenerated
        assert f"{module}.pyi" in regenerated


def test_generator_refuses_to_wipe_a_foreign_directory(tmp_path: Path) -> None:
    """The generator leaves a non-empty directory it did not generate untouched and fails."""
    foreign = tmp_path / "not_generated"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious\n", encoding="utf-8")
    result = _generate(foreign)
    assert result.returncode == 1
    assert "refusing to wipe" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
