"""A FIFO (or any file that is not a regular one) named as the config or a key file is refused at once.

Review of subscriptions, finding 8: reading a FIFO blocks until a writer comes, so a reload
that met one never finished and no later edit applied (in file mode: no revocation until a
restart). Each load runs in a thread bounded by WAIT, so a regression fails instead of hanging.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

import pytest

from authz.config import load_config
from authz.errors import ConfigError
from tests.config.test_config import SPEC_CONFIG

WAIT = 20.0  # a load takes milliseconds; the bound only turns a blocked read into a failure


def _load(path: Path) -> ConfigError:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(load_config, path)
    try:
        with pytest.raises(ConfigError) as info:
            future.result(timeout=WAIT)
        return info.value
    finally:
        if not future.done():  # unblock the reader so the test process can exit
            for fifo in path.parent.rglob("*"):
                if fifo.is_fifo():
                    with open(fifo, "wb", opener=_nonblocking):
                        pass
        pool.shutdown(wait=False)


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_NONBLOCK)


@pytest.fixture
def folder(world, tmp_path) -> Path:
    shutil.copytree(world.root / "keys", tmp_path / "keys")
    return tmp_path


def test_a_fifo_as_a_key_file_is_refused_with_file_and_reason(folder: Path) -> None:
    key = folder / "keys" / "acme-idp.jwks.json"
    key.unlink()
    os.mkfifo(key)
    (folder / "config.yaml").write_text(SPEC_CONFIG, encoding="utf-8")
    error = _load(folder / "config.yaml")
    assert error.file == str(key)
    assert "not a regular file" in error.reason
    assert "referenced from" in error.reason


def test_a_fifo_as_the_config_file_is_refused(folder: Path) -> None:
    path = folder / "config.yaml"
    os.mkfifo(path)
    error = _load(path)
    assert error.file == str(path)
    assert "not a regular file" in error.reason
