"""LAN mode as real processes: ``pennello serve --lan`` in a subprocess, optionally inside a network
namespace, and the client commands (discover, pair, generate) run against it.

    daemon = ServeProcess(home)                       # or ServeProcess(home, netns="pn-1-d")
    code = host_pairing_code(home)                   # `pennello pair` on the daemon's side
    run_cli(client_home, "pair", daemon_name, "--code", code)
    daemon.terminate()
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pennello.paths import Paths

from _fixtures_owner import SERVED

START_TIMEOUT_S = 180


def _root(home: Paths) -> str:
    return str(home.runtime_dir.parent)


def _command(netns: str | None, argv: Sequence[str]) -> list[str]:
    return [*(["ip", "netns", "exec", netns] if netns else []), *argv]


def cli_env(home: Paths, **extra: str) -> dict[str, str]:
    return {**os.environ, "PENNELLO_HOME": _root(home), **extra}


def run_cli(home: Paths, *args: str, netns: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``pennello ARGS`` with ``home`` as PENNELLO_HOME (inside ``netns`` when given)."""
    return subprocess.run(_command(netns, [sys.executable, "-m", "pennello", *args]), capture_output=True,
                          text=True, timeout=timeout, env=env or cli_env(home))


class ServedProcess:
    """A ``pennello serve`` subprocess (``process``) of ``home`` and its log file (``log``)."""

    process: subprocess.Popen
    log: Path
    home: Paths
    url: str | None = None

    def serving(self, url: str) -> None:
        """It serves at ``url``: loopback requests there carry its owner's session (_fixtures_owner)."""
        self.url = url
        SERVED[url] = self.home

    def terminate(self, timeout: float = 90) -> int:
        SERVED.pop(self.url or "", None)  # the port may serve another home later
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        SERVED.pop(self.url or "", None)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text()


class ServeProcess(ServedProcess):
    """``pennello serve --lan --port 0`` in a subprocess; knows its URL, fingerprint and instance id.

    Args:
        script: run this Python file instead of ``-m pennello`` (it must behave like the CLI).
    """

    def __init__(self, home: Paths, netns: str | None = None, env: dict[str, str] | None = None,
                 script: Path | None = None) -> None:
        self.home = home
        self.log = home.runtime_dir.parent / "serve.log"
        program = [sys.executable, str(script)] if script else [sys.executable, "-m", "pennello"]
        self.process = subprocess.Popen(_command(netns, [*program, "serve", "--lan", "--port", "0"]),
                                        stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,
                                        env={**cli_env(home), **(env or {})})
        line = self.process.stdout.readline()  # blocks until serving, or EOF if it died
        match = re.match(r"pennello is serving on (https://\S+)", line)
        assert match, f"serve --lan did not start: {line!r}\n{self.log.read_text()}"
        self.serving(match.group(1))
        info = json.loads((home.runtime_dir / "daemon.json").read_text())
        self.fingerprint: str = info["fingerprint"]
        self.instance_id = (home.state_dir / "instance-id").read_text().strip()


def host_pairing_code(home: Paths, netns: str | None = None) -> str:
    """Run ``pennello pair`` on the daemon's side and return the code it shows."""
    result = run_cli(home, "pair", "--no-qr", netns=netns)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Pairing code: ([2-9A-Z]{8})", result.stdout)
    assert match, result.stdout
    return match.group(1)
