"""Shared fixtures. Every test gets its own PENNELLO_HOME so nothing touches the user's state."""

from __future__ import annotations

import pytest

from pennello.paths import HOME_ENV, Paths, get_paths

# The fixture modules, registered for every test (helpers they also define are imported by name).
# _fixtures_owner comes first: it wraps start_background_server before any fixture starts a server;
# _fixtures_hub comes after _fixtures_installer, whose helpers it imports.
pytest_plugins = ("_fixtures_owner", "_fixtures_api", "_fixtures_daemon", "_fixtures_installer", "_fixtures_hub",
                  "_fixtures_lan",
                  "_fixtures_netns", "_fixtures_trust")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Paths:
    """A fresh pennello home, with every directory created, set as PENNELLO_HOME."""
    root = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(root))
    return get_paths(root).ensure()
