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
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pennello.errors import ConfigError
from pennello.files import write_atomic

Device = Literal["auto", "cuda", "mps", "cpu"]
Isolation = Literal["auto", "namespace", "off"]  # offline.isolation
MemoryProfile = Literal["auto", "large", "16gb", "12gb", "8gb"]
# A speed-up's setting: auto leaves it to the device profile (daemon/engine/profiles.py PROFILE_SPEED_UPS).
Toggle = Literal["auto", "on", "off"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
OpenVINOWeights = Literal["fp32", "int8"]
DEFAULT_MODEL = "pennello-tiny"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback only unless `lan` is on
    port: int = 8420
    lan: bool = False  # bind all interfaces; non-loopback clients then need a paired token
    # Anything on loopback acts as the owner without the owner token: only for a computer nobody
    # else logs into (docs/threat-model.md); off, another account on this PC needs a paired token.
    trust_loopback: bool = False
    max_body_bytes: int = 16 * 1024 * 1024  # largest accepted request body
    cors_origins: tuple[str, ...] = ()  # CORS stays off unless origins are listed
    # Extra names (or addresses) the Host header may carry, e.g. ("pennello.home.arpa",) when a
    # local DNS name points here; loopback, this machine's names and addresses need no entry.
    allowed_hosts: tuple[str, ...] = ()
    # LAN mode: interfaces (names like "eth0", or addresses) to advertise on over mDNS and whose
    # private networks no-network mode lets the daemon reach; empty means every interface.
    interfaces: tuple[str, ...] = ()
    # Request threads of each HTTP server (loopback or LAN, and the isolated model worker's).
    threads: int = 48
    # How many of them calls may hold while their pictures are made ("wait", event streams, the
    # OpenAI and A1111 generate routes); more are answered 429 with Retry-After, so that
    # threads - max_waiting stay free for health, status, progress, cancel and the web page.
    # As many as engine.queue_size: the device's batches stay full while refused callers wait.
    max_waiting: int = 32
    # How much lower the isolated model worker's drawing threads run than the server (a nice
    # increment, 0-19; its HTTP threads keep the server's priority): drawing is batch work, and at
    # the same priority it took the cores the server needed to answer (bench/bench_load.py).
    worker_nice: int = 10

    def __post_init__(self) -> None:
        # The socket layer would take the port modulo 65536: 70000 silently served on 4464.
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server.port = {self.port}: must be from 0 to 65535 (0 picks a free port)")
        if not 2 <= self.threads <= 1024:
            raise ConfigError(f"server.threads = {self.threads}: must be from 2 to 1024")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"server.worker_nice = {self.worker_nice}: must be from 0 (the server's "
                              f"priority) to 19 (the lowest)")
        if not 1 <= self.max_waiting < self.threads:
            raise ConfigError(f"server.max_waiting = {self.max_waiting}: must be at least 1 and below "
                              f"server.threads ({self.threads}), which keeps threads free for health and status")


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
    memory_profile: MemoryProfile = "auto"  # GPU tier; auto picks it from free VRAM (daemon/engine/profiles.py)
    cpu_threads: int = 0  # torch threads on a CPU; 0: all cores but one (see bench/bench_threads.py)
    # Speed-ups applied when a model loads (docs/performance.md); each stays off on every device
    # class until bench/run_gpu.sh has measured it on a real card.
    # torch.compile of the denoiser, plus one small warm-up generation at load so the first request
    # does not pay for compiling (seconds to minutes per model; cached on disk for the next start).
    compile: Toggle = "auto"
    compile_mode: CompileMode = "default"  # torch.compile's mode when compile is on
    channels_last: Toggle = "auto"  # channels-last memory format for the denoiser and the VAE
    fuse_qkv: Toggle = "auto"  # fused attention projections, where the pipeline supports them
    # torch autocast to bf16 for pictures drawn on a CPU with AVX512-BF16 or AMX (the torch path;
    # OpenVINO picks its own precision)
    cpu_bf16: Toggle = "auto"
    # Weights of models converted for OpenVINO: int8 is NNCF's 8-bit weight compression (pip install
    # nncf): at 512² on the 2-core bench machine 2.6 s a picture against 2.75 s, and 6.6 GB peak
    # memory against 10.8 GB (docs/performance.md); fp32 until pictures of real weights are compared.
    openvino_weights: OpenVINOWeights = "fp32"


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
    enabled: bool = True  # no-network mode once setup is done (see docs/no-network.md)
    # Extra networks the daemon may reach in LAN mode, e.g. ("203.0.113.0/24",) for a LAN that
    # uses public addresses; private on-link networks of the served interfaces need no entry.
    allow: tuple[str, ...] = ()
    # Linux: run model loading and generation in a worker process in its own network namespace
    # (only loopback), the HTTP server in the parent. auto: when the OS allows it and no-network
    # mode is on, else the in-process guard alone; namespace: refuse to start without it.
    isolation: Isolation = "auto"


@dataclass(frozen=True)
class ImagesConfig:
    """Uploaded pictures (enhance, upscale, edit) and what may be made of them."""

    max_upload_bytes: int = 16 * 1024 * 1024  # one uploaded file; server.max_body_bytes caps the body
    max_upload_pixels: int = 4096 * 4096  # width x height of an upload, checked before decoding
    max_output_pixels: int = 8192 * 8192  # largest upscaled picture (8x of 1024x1024)
    upscale_tile: int = 256  # source pixels per tile side when upscaling (bounds peak memory)
    upscale_model: str = "sd-x4-upscaler"  # the AI upscaler's model name in the signed catalog


@dataclass(frozen=True)
class CopyrightConfig:
    """Perceptual-hash comparison of outputs with protected works (docs/copyright-check.md)."""

    reference_dir: str = ""  # folder of protected pictures; empty turns the check off
    max_distance: int = 10  # bits of 64 two hashes may differ by and still count as a match


@dataclass(frozen=True)
class InstallerConfig:
    """What ``pennello install`` may do without asking (see :mod:`pennello.consent`)."""

    # Ask before downloading more than this many megabytes (10^6 bytes) in one install; files
    # already in the store do not count. 0 asks before every download.
    confirm_over_mb: int = 500


@dataclass(frozen=True)
class ClusterConfig:
    """Several boxes behind one pennello (docs/cluster.md), as no-network mode and the OS see it.

    The cluster's boxes are the only hosts besides loopback and mDNS that no-network mode lets
    the daemon reach (:meth:`peer_networks`); ``pennello offline unit`` writes the same list into
    the systemd unit's IP allow-list.
    """

    head: str = ""  # HOST:PORT of the head, as `serve --cluster` takes it; empty: no cluster
    # The other boxes: IP addresses or networks (CIDR), e.g. ("192.168.1.21", "10.0.8.0/24").
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A bad entry is refused at load, not at the first connection; the head may be a name
        # until no-network mode asks for its address (peer_networks).
        self.head_host()
        _networks((entry, "cluster.peers") for entry in self.peers)

    def head_host(self) -> str:
        """The head's host without its port ("" when no head is set)."""
        host, _, port = self.head.rpartition(":")
        if self.head and not (host and port.isdigit()):
            raise ConfigError(f"cluster.head = {self.head!r}: expected HOST:PORT, e.g. \"192.168.1.20:6379\"")
        return host.strip("[]")

    def peer_networks(self) -> tuple[str, ...]:
        """The head's address and every peer, as networks (CIDR strings).

        Raises:
            ConfigError: a peer is not an address or network, or the head is a name (no-network
                mode looks up no names: give its address).
        """
        head = [(self.head_host(), "cluster.head")] if self.head else []
        return _networks([*head, *((entry, "cluster.peers") for entry in self.peers)])


def _networks(entries: Any) -> tuple[str, ...]:
    """(entry, setting) pairs as CIDR strings, in order, without repeats."""
    networks = []
    for entry, where in entries:
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ConfigError(f"{where}: {entry!r} is not an IP address or network; give addresses like "
                              f"\"192.168.1.21\" or \"192.168.1.0/24\" (no names: no-network mode looks "
                              f"none up)") from None
    return tuple(dict.fromkeys(networks))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    copyright: CopyrightConfig = field(default_factory=CopyrightConfig)
    installer: InstallerConfig = field(default_factory=InstallerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

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


def write_setting(path: Path, section: str, key: str, value: bool | int | str) -> None:
    """Set ``key = value`` in ``[section]`` of the config file, keeping the rest of the file as the
    user wrote it (comments included). The file is created when missing. Used by commands such as
    ``pennello offline on``.

    Raises:
        ConfigError: unknown section or key, or the file is not valid TOML (it is left unchanged).
    """
    import tomli_w

    sections = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
    if section not in sections or key not in {f.name for f in dataclasses.fields(sections[section])}:
        raise ConfigError(f"unknown setting {section}.{key}")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix it before changing settings") from e
    line = tomli_w.dumps({key: value}).strip()
    lines = text.splitlines()
    header = re.compile(rf"\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
    start = next((i for i, text_line in enumerate(lines) if header.match(text_line)), None)
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + [f"[{section}]", line]
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
        assignment = re.compile(rf"\s*{re.escape(key)}\s*=")
        found = next((i for i in range(start + 1, end) if assignment.match(lines[i])), None)
        if found is not None:
            lines[found] = line
        else:
            last = max((i for i in range(start, end) if lines[i].strip()), default=start)
            lines.insert(last + 1, line)
    new_text = "\n".join(lines) + "\n"
    if _setting_of(new_text, section, key) != value:  # a dotted key or inline table: rewrite whole
        data = tomllib.loads(text)
        data.setdefault(section, {})[key] = value
        new_text = tomli_w.dumps(data)
    write_atomic(path, new_text.encode("utf-8"))


def _setting_of(text: str, section: str, key: str) -> Any:
    try:
        return tomllib.loads(text).get(section, {}).get(key)
    except tomllib.TOMLDecodeError:
        return None
