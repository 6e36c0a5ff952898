"""Pennello's one typed configuration, read once from ``config.toml`` and ``PENNELLO_*`` variables.

Precedence: built-in defaults < ``config.toml`` < environment variables < explicit overrides
(CLI flags). The TOML file has one table per section; each key is a field below, e.g.::

    [server]
    port = 8420
    lan = true

    [engine]
    max_batch = 4

An environment variable is ``PENNELLO_<SECTION>_<FIELD>`` in upper case, e.g.
``PENNELLO_SERVER_PORT=9000``.

    >>> from pennello.config import Config
    >>> Config().server.port
    8420
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pennello.errors import ConfigError

Device = Literal["auto", "cuda", "mps", "cpu"]
DEFAULT_MODEL = "pennello-tiny"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback only unless `lan` is on
    port: int = 8420
    lan: bool = False  # bind all interfaces; non-loopback clients then need a paired token
    max_body_bytes: int = 16 * 1024 * 1024  # largest accepted request body
    cors_origins: tuple[str, ...] = ()  # CORS stays off unless origins are listed


@dataclass(frozen=True)
class EngineConfig:
    device: Device = "auto"  # auto: CUDA, else MPS, else CPU
    default_model: str = DEFAULT_MODEL
    keep_alive_s: int = 300  # seconds a non-default model stays loaded after its last use
    queue_size: int = 32  # waiting jobs; more are answered 429
    max_batch: int = 8  # images per pipeline call when compatible jobs are batched
    max_n: int = 16  # images per request
    max_steps: int = 100
    max_prompt_chars: int = 2000
    log_prompts: bool = False  # prompts stay out of logs unless this is on


@dataclass(frozen=True)
class TrustConfig:
    threshold: int = 1  # distinct trusted signatures a manifest needs
    max_file_bytes: int = 64 * 1024**3  # cap on any one file a manifest may describe (endless data)


@dataclass(frozen=True)
class OutputsConfig:
    retention_days: int = 0  # 0 keeps outputs forever
    png_compress_level: int = 1  # 0-9; 1 is ~4x faster than Pillow's default 6 for ~10% bigger files


@dataclass(frozen=True)
class OfflineConfig:
    enabled: bool = True  # no-network mode once setup is done


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)

    def replace(self, section: str, **changes: Any) -> "Config":
        """Return a copy with fields of one section changed (used for CLI overrides)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (missing is fine) and ``PENNELLO_*`` variables.

    Raises:
        ConfigError: unknown section or key, a value of the wrong type, or unreadable TOML.
    """
    from pennello.paths import get_paths

    path = path if path is not None else get_paths().config_file
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    sections = {}
    for f in dataclasses.fields(Config):
        section_cls = typing.get_type_hints(Config)[f.name]
        values = dict(_section(data, f.name, path))
        values.update(_env_values(section_cls, f.name, environ))
        sections[f.name] = _build(section_cls, f.name, values)
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    return Config(**sections)


def _section(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _env_values(section_cls: type, section: str, environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(section_cls):
        name = f"PENNELLO_{section}_{f.name}".upper()
        if name in environ:
            values[f.name] = _parse_env(environ[name], typing.get_type_hints(section_cls)[f.name], name)
    return values


def _parse_env(raw: str, hint: Any, name: str) -> Any:
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false")
    if hint is int:
        try:
            return int(raw)
        except ValueError as e:
            raise ConfigError(f"{name}={raw!r}: expected an integer") from e
    if typing.get_origin(hint) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _build(section_cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(section_cls)
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    for key, value in list(values.items()):
        values[key] = _check_type(value, hints[key], f"{section}.{key}")
    return section_cls(**values)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r}: must be one of {', '.join(map(repr, allowed))}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    # bool is a subclass of int: refuse `port = true`.
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r}: expected {hint.__name__}")
    return value
