"""Everything Ray is told, in one place: its environment, its pinned ports, its token.

Ray reaches out on its own even with usage stats off: it posts a "usage disabled" report, and
its dashboard side probes cloud metadata (169.254.169.254). The variables below switch off what
can be switched off and point the report at loopback; what Ray's C++ parts do is invisible to
pennello's Python network guard, so the OS firewall (docs/cluster.md) is the real wall. The
head's cloud-metadata probe stops when it finds a local-provider config (local_provider_config).

Token authentication (Ray 2.60, off by default) is always on: every Ray process of a pennello
cluster reads the same token file, and a node with another token is refused by the head.

    >>> env = ray_environment(Path("/srv/pennello/state/cluster-token"))
    >>> env["RAY_AUTH_MODE"], env["RAY_USAGE_STATS_ENABLED"]
    ('token', '0')
    >>> ports_from(7000)["--node-manager-port"]
    '7001'
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pennello.errors import ConfigError
from pennello.files import write_atomic

# The head's GCS port when none is given (Ray's own default, so firewall guides still apply).
DEFAULT_HEAD_PORT = 6379
# A node's own listening ports are pinned from this number up (see ports_from), so a firewall
# can allow exactly them; two nodes on one machine (tests) take different bases.
DEFAULT_PORT_BASE = 6400
WORKER_PORTS = 40  # worker processes, Serve replicas included, listen in this pinned range
TOKEN_FILE = "cluster-token"

# Only loopback hears the "usage disabled" report; the port is the discard service.
_QUIET = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_memory_monitor_refresh_ms": "0",  # no killing of busy replicas under memory pressure
}


def local_provider_config(home: Path) -> Path:
    """Make sure ``ray_bootstrap_config.yaml`` exists in ``home`` (Ray's ``~``); returns its path.

    Ray's head reads it to tell which cloud it runs on, usage stats off or not; without it, it
    asks the cloud metadata servers (169.254.169.254, metadata.google.internal; seen in
    tests/test_cluster_netns.py). A config naming the local provider answers the question.
    An existing file (Ray's cluster launcher writes one) is left as it is.
    """
    path = home / "ray_bootstrap_config.yaml"
    if not path.exists():
        write_atomic(path, b"# Written by pennello: Ray runs on this office's own boxes (docs/cluster.md)\n"
                           b"cluster_name: pennello\nprovider:\n  type: local\n")
    return path


# A stopping node shuts down at once rather than "draining" for up to 30 s: draining lets Serve
# move a node's replicas elsewhere, but a model has one replica per node that holds it, and the
# front resends a lost batch itself. (Stopping waited 10 s, then SIGKILLed the draining node.)
_STOP_AT_ONCE = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def ray_environment(token_file: Path) -> dict[str, str]:
    """The variables every Ray process of ours runs with (``ray start``, drivers, workers)."""
    return {**_QUIET, **_STOP_AT_ONCE, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def apply(token_file: Path) -> None:
    """Set :func:`ray_environment` in this process, before ``ray`` is imported or connects."""
    os.environ.pop("RAY_AUTH_TOKEN", None)  # a stray token in the shell would win over the file
    os.environ.update(ray_environment(token_file))


def ports_from(base: int) -> dict[str, str]:
    """``ray start`` options pinning every port a node listens on, from ``base`` up."""
    if not 1024 <= base <= 65535 - 10 - WORKER_PORTS:
        raise ConfigError(f"the cluster port base must be between 1024 and {65535 - 10 - WORKER_PORTS}; got {base}")
    return {"--object-manager-port": str(base), "--node-manager-port": str(base + 1),
            "--dashboard-agent-listen-port": str(base + 2), "--dashboard-agent-grpc-port": str(base + 3),
            "--runtime-env-agent-port": str(base + 4), "--metrics-export-port": str(base + 5),
            "--min-worker-port": str(base + 10), "--max-worker-port": str(base + 10 + WORKER_PORTS - 1)}


def new_token(path: Path) -> Path:
    """Write a fresh random cluster token to ``path`` (mode 0600) unless one is there; returns ``path``."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (secrets.token_hex(32) + "\n").encode(), mode=0o600)
    return path


def read_token(path: Path) -> Path:
    """``path`` when it holds a token, else a :class:`ConfigError` naming the file."""
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the cluster token file {path}: {e.strerror}") from None
    if len(token) < 32:
        raise ConfigError(f"the cluster token file {path} holds no token (32 characters or more)")
    return path
