"""A full disk gives a message and an exit code, never a traceback, and changes nothing.

Each test mounts a small tmpfs as the pennello home (root only), installs the embedded model,
fills what is left, and runs the command the way a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

EXIT_STORE = 4  # StoreError's exit code, which DiskSpaceError shares


def _tmpfs_unavailable(where: Path) -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True,
                            text=True)
    return None if result.returncode == 0 else f"mount -t tmpfs failed: {result.stderr.strip()}"


@pytest.fixture
def full_home(tmp_path: Path) -> Iterator[Path]:
    """A pennello home on an 8 MB tmpfs with the embedded model installed and no byte left."""
    mount = tmp_path / "small-disk"
    why = _tmpfs_unavailable(mount)
    if why:
        pytest.skip(why)
    try:
        home = mount / "home"
        installed = pennello(home, "install", "pennello-tiny")
        assert installed.returncode == 0, installed.stderr
        with open(mount / "filler", "wb") as filler:  # take every byte that is left
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        yield home
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def pennello(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "pennello", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PENNELLO_HOME": str(home)}, cwd=home.parent)


def test_verify_on_a_full_disk_says_the_disk_is_full(full_home: Path):
    # It used to end in "OSError: [Errno 28] No space left on device" and a traceback.
    result = pennello(full_home, "verify")
    assert result.returncode == EXIT_STORE, result.stderr
    assert "is full" in result.stderr and "free some space" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_full_disk_leaves_the_installed_model_intact(full_home: Path):
    pennello(full_home, "verify")
    (full_home.parent / "filler").unlink()  # space again: the store must still verify
    result = pennello(full_home, "verify")
    assert result.returncode == 0, result.stderr
    assert not list(full_home.rglob(".verified.*")), "a temp file was left behind"


def test_install_on_a_full_disk_warns_once_instead_of_a_logging_traceback(full_home: Path):
    # Every log line used to print "--- Logging error ---" and a traceback once the log file could
    # not grow; the command itself went on.
    result = pennello(full_home, "install", "pennello-tiny")
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("warning: the disk is full; no longer writing") == 1
