"""``pennello serve`` / ``status`` / ``generate`` as real processes on a real pennello home."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

from pennello.paths import Paths, get_paths

from _fixtures_owner import SERVED

DAEMON_EXIT = 8
START_TIMEOUT_S = 120


def pennello(home: Paths, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(home))


def _env(home: Paths) -> dict[str, str]:
    return {**os.environ, "PENNELLO_HOME": str(home.runtime_dir.parent)}


class Daemon:
    """``pennello serve --port 0`` in a subprocess, with the URL it printed."""

    def __init__(self, home: Paths) -> None:
        self.log = home.runtime_dir.parent / "serve.log"
        self.process = subprocess.Popen([sys.executable, "-m", "pennello", "serve", "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,
                                        env=_env(home))
        line = self.process.stdout.readline()  # blocks until serving, or EOF if it died
        match = re.match(r"pennello is serving on (http://\S+)", line)
        assert match, f"serve did not start: {line!r}\n{self.log.read_text()}"
        self.url = match.group(1)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def daemon(home: Paths) -> Iterator[Daemon]:
    running = Daemon(home)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[tuple[Paths, Daemon]]:
    """(home, daemon): one ``pennello serve`` for the tests here that only ask it things and leave
    it running (each start costs seconds of CI)."""
    home = get_paths(tmp_path_factory.mktemp("shared") / "home").ensure()
    running = Daemon(home)
    SERVED[running.url] = home  # plain requests to it carry its owner's session
    yield home, running
    SERVED.pop(running.url, None)
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_serve_publishes_where_it_runs_and_status_reads_it(shared):
    home, daemon = shared
    info = json.loads((home.runtime_dir / "daemon.json").read_text())
    assert info["url"] == daemon.url and info["pid"] == daemon.process.pid
    assert requests.get(daemon.url + "/api/health", timeout=10).json()["ready"]
    result = pennello(home, "status")
    assert result.returncode == 0, result.stderr
    assert daemon.url in result.stdout and "pennello-tiny" in result.stdout and "cpu" in result.stdout


def test_generate_through_the_cli_saves_pictures(shared, tmp_path):
    home, _ = shared
    out = tmp_path / "pictures"
    result = pennello(home, "generate", "a red kite", "-n", "2", "--seed", "5", "--steps", "3",
                      "--size", "64x64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = sorted(out.iterdir())
    assert len(saved) == 2
    assert "seed=5" in result.stdout and "seed=6" in result.stdout
    for path in saved:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)


def test_generate_reports_bad_input_with_the_request_exit_code(shared, tmp_path):
    home, _ = shared
    result = pennello(home, "generate", "a kite", "--size", "65x64", "--out", str(tmp_path))
    assert result.returncode == 6
    assert "width" in result.stderr and "multiple of 8" in result.stderr


def test_a_second_serve_on_the_same_home_is_refused(shared):
    home, daemon = shared
    result = pennello(home, "serve", "--port", "0")
    assert result.returncode == DAEMON_EXIT
    assert f"already running at {daemon.url} (pid {daemon.process.pid})" in result.stderr


def test_sigterm_stops_cleanly_and_status_then_says_not_running(home, daemon):
    assert daemon.terminate() == 0, Path(daemon.log).read_text()
    assert not (home.runtime_dir / "daemon.json").exists()
    result = pennello(home, "status")
    assert result.returncode == DAEMON_EXIT and "not running" in result.stderr


def test_status_and_generate_without_a_daemon(home, tmp_path):
    # Without --url, generate now starts the local daemon (tests/test_cli_verbs.py); a daemon
    # named by address is never started, so it still says what to do.
    for args in (["status"], ["generate", "a kite", "--out", str(tmp_path), "--url", "http://127.0.0.1:9"]):
        result = pennello(home, *args)
        assert result.returncode == DAEMON_EXIT and "pennello serve" in result.stderr


def test_sigterm_lets_a_running_job_finish(home, daemon):
    response = requests.post(daemon.url + "/api/generate", json={"prompt": "finish", "steps": 50},
                             timeout=10)
    job_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while requests.get(f"{daemon.url}/api/jobs/{job_id}", timeout=10).json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert daemon.terminate() == 0
    saved = list(home.outputs_dir.rglob("*.png"))
    assert len(saved) == 1


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_port_out_of_range_in_the_config(home: Paths, port: str):
    # It used to wrap around: server.port = 70000 served on 4464 without a word.
    result = subprocess.run([sys.executable, "-m", "pennello", "serve"], capture_output=True, text=True,
                            timeout=120, env={**_env(home), "PENNELLO_SERVER_PORT": port})
    assert result.returncode != 0
    assert f"server.port = {port}: must be from 0 to 65535" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home.runtime_dir / "daemon.json").exists()
