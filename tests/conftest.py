"""Shared fixtures. Every test gets its own PENNELLO_HOME so nothing touches the user's state."""

from __future__ import annotations

import pytest

from pennello.paths import HOME_ENV, Paths, get_paths


@pytest.fixture
def home(tmp_path, monkeypatch) -> Paths:
    """A fresh pennello home, with every directory created, set as PENNELLO_HOME."""
    root = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(root))
    return get_paths(root).ensure()
