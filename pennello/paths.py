"""Where pennello keeps its state.

Every file pennello writes lives under one of these directories. They come from platformdirs
(``~/.config/pennello``, ``~/.local/share/pennello``… on Linux; the platform's own places
elsewhere). Setting ``PENNELLO_HOME`` puts all of them under that one directory, which is how
tests, portable installs and air-gapped fleets relocate everything.

    >>> from pennello.paths import get_paths
    >>> paths = get_paths()
    >>> paths.store_dir.name
    'store'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "pennello"
HOME_ENV = "PENNELLO_HOME"


@dataclass(frozen=True)
class Paths:
    """The directories pennello uses. None is created until :meth:`ensure` is called."""

    config_dir: Path  # config.toml, trusted public keys
    data_dir: Path  # the model store, private keys, tokens, trust state
    cache_dir: Path  # partial downloads (resumable), compile caches
    log_dir: Path
    outputs_dir: Path  # generated pictures
    runtime_dir: Path  # daemon lock and address file

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def trusted_keys_dir(self) -> Path:
        """Public keys the user or office added to the trusted set (``pennello keys trust``)."""
        return self.config_dir / "keys"

    @property
    def private_keys_dir(self) -> Path:
        """Signing keys made by ``pennello keys generate``; never leave this machine."""
        return self.data_dir / "private-keys"

    @property
    def state_dir(self) -> Path:
        """Small JSON state files: highest manifest versions seen, revoked keys, tokens."""
        return self.data_dir / "state"

    @property
    def downloads_dir(self) -> Path:
        return self.cache_dir / "downloads"

    def ensure(self) -> "Paths":
        """Create every directory (private ones with mode 0700) and return self."""
        for directory in (self.config_dir, self.data_dir, self.cache_dir, self.log_dir,
                          self.outputs_dir, self.runtime_dir, self.store_dir, self.state_dir,
                          self.downloads_dir, self.trusted_keys_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.private_keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def get_paths(home: str | os.PathLike[str] | None = None) -> Paths:
    """Return pennello's directories.

    Args:
        home: one directory to hold everything; defaults to ``$PENNELLO_HOME`` when set,
            else the platform's usual per-user places.
    """
    home = home if home is not None else os.environ.get(HOME_ENV)
    if home:
        root = Path(home).expanduser().resolve()
        return Paths(
            config_dir=root / "config",
            data_dir=root / "data",
            cache_dir=root / "cache",
            log_dir=root / "logs",
            outputs_dir=root / "outputs",
            runtime_dir=root / "run",
        )
    dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
    return Paths(
        config_dir=Path(dirs.user_config_dir),
        data_dir=Path(dirs.user_data_dir),
        cache_dir=Path(dirs.user_cache_dir),
        log_dir=Path(dirs.user_log_dir),
        outputs_dir=Path(platformdirs.user_pictures_dir()) / "Pennello",
        # Not XDG_RUNTIME_DIR: it is unset for services started outside a login session.
        runtime_dir=Path(dirs.user_state_dir) / "run",
    )
