"""Config files as operators and Kubernetes change them: in place, by rename, by a ConfigMap's ..data swap."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from testkit.world import CONFIG

__all__ = ["AtomicDir", "config_text", "rename_over", "write_in_place"]

# The policy change of these tests: acme's read-orders rule asks for another scope.
READ_RULE = "scopes: [orders:read]"

WRITE_RULE = "scopes: [orders:write]"


def config_text(keys: Path, *, scope: str = "orders:read", decrypt: Path | None = None) -> str:
    """The world's config with absolute key paths (acme's read-orders rule needing ``scope``)."""
    text = CONFIG.replace(READ_RULE, f"scopes: [{scope}]", 1).replace("keys/", f"{keys}/")
    if decrypt is not None:
        text = text.replace(f"{keys}/decrypt.jwks.json", str(decrypt))
    return text


def write_in_place(path: Path, data: str | bytes) -> None:
    """Truncate and rewrite the same inode (``>`` in a shell, most editors' "save")."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def rename_over(path: Path, data: str | bytes) -> None:
    """Write a temporary file beside ``path``, then rename it over (atomic replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


class AtomicDir:
    """A Kubernetes ConfigMap/Secret volume, updated the way the kubelet's AtomicWriter does it.

    ``DIR/..<timestamp>/<files>``, ``DIR/..data -> ..<timestamp>`` (relative) and
    ``DIR/<name> -> ..data/<name>``. An update writes a new timestamped folder,
    points ``..data_tmp`` at it, renames ``..data_tmp`` over ``..data`` (atomic),
    then removes the old folder.
    """

    def __init__(self, root: Path, files: Mapping[str, str | bytes]) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self._serial = 0
        self.write(files)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: Mapping[str, str | bytes]) -> None:
        self._serial += 1
        stamp = f"..2026_11_29_18_00_00.{self._serial:09d}"
        new = self.root / stamp
        new.mkdir()
        for name, data in files.items():
            (new / name).write_bytes(data.encode() if isinstance(data, str) else data)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        os.symlink(stamp, tmp_link)
        os.rename(tmp_link, data_link)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            shutil.rmtree(self.root / old)
