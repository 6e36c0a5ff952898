"""``pennello stop``, ``ps``, ``load``, ``unload``, ``queue``, per-request ``keep_alive``, ``generate``
starting the daemon, progress bars on a terminal, and ``--json`` output parsed as scripts do.

The daemon runs as a real ``pennello serve`` process (or a real waitress server over a started
engine, for the tools), and every command runs as its user would run it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from pennello.cli import cli
from pennello.config import Config
from pennello.paths import Paths
from pennello.runtime import read_daemon_info
from test_cli_daemon import _env, daemon, pennello  # noqa: F401  (daemon: a fixture)
from test_consent import run_on_terminal

DAEMON_EXIT = 8


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout.strip(), f"no JSON on stdout; stderr: {result.stderr}"
    return json.loads(result.stdout)


def _process_ended(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# --- stop ----------------------------------------------------------------------------------------

def test_stop_asks_the_daemon_over_the_api_and_waits_for_it(home, daemon):
    result = pennello(home, "stop")
    assert result.returncode == 0, result.stderr
    assert "over the API" in result.stderr and "pennello stopped" in result.stdout
    assert daemon.process.wait(timeout=10) == 0  # a clean exit, as on SIGTERM
    assert not (home.runtime_dir / "daemon.json").exists()
    again = pennello(home, "stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_stop_falls_back_to_sigterm_when_the_api_does_not_answer(home, daemon):
    # daemon.json now points at a port nobody listens on: the API cannot be asked.
    info = json.loads((home.runtime_dir / "daemon.json").read_text())
    info["url"] = "http://127.0.0.1:9"
    (home.runtime_dir / "daemon.json").write_text(json.dumps(info))
    result = pennello(home, "stop")
    assert result.returncode == 0, result.stderr
    assert f"sending SIGTERM to pid {daemon.process.pid}" in result.stderr
    assert daemon.process.wait(timeout=10) == 0


def test_stop_with_a_stale_daemon_file_says_so(home):
    (home.runtime_dir / "daemon.json").write_text(json.dumps({"pid": 999999, "url": "http://127.0.0.1:9"}))
    result = pennello(home, "stop")
    assert result.returncode == 0 and "not running (its daemon.json was stale)" in result.stdout


def test_shutdown_route_is_for_the_owner_and_refused_outside_a_daemon(server):
    # A server without daemon.json (a test's, a benchmark's) has no process to stop: 404, not a kill.
    response = requests.post(f"{server.url}/api/shutdown", timeout=10)
    assert response.status_code == 404 and "daemon.json" in response.json()["error"]["message"]


# --- ps, load, unload, keep_alive ----------------------------------------------------------------

def test_load_with_keep_alive_ps_and_unload(home, daemon):
    loaded = pennello(home, "load", "pennello-tiny", "--keep-alive", "10m", "--json")
    assert loaded.returncode == 0, loaded.stderr
    assert 590 < _json(loaded)["expires_in_s"] <= 600
    report = _json(pennello(home, "ps", "--json"))
    assert report["device"] == "cpu" and report["backend"]["torch"] and report["queue_depth"] == 0
    assert report["memory"]["weights_bytes"] > 0 and report["running"] == 0
    (model,) = report["models"]
    assert model["name"] == "pennello-tiny" and 590 < model["expires_in_s"] <= 600
    table = pennello(home, "ps")
    assert table.returncode == 0 and re.search(r"pennello-tiny\s+\d+\.\d MB\s+cpu\s+\d+ s", table.stdout)
    # which backend computes it, on which device (the embedded model is too small for OpenVINO)
    assert re.search(r"^pennello-tiny .* torch on cpu$", table.stdout, re.M), table.stdout
    unloaded = pennello(home, "unload", "pennello-tiny")
    assert unloaded.returncode == 0 and "unloaded pennello-tiny" in unloaded.stdout
    assert _json(pennello(home, "ps", "--json"))["models"] == []
    missing = pennello(home, "load", "no-such-model", "--json")
    assert missing.returncode != 0 and "no-such-model" in _json(missing)["error"]


def test_keep_alive_zero_unloads_after_the_request_and_minus_one_keeps(daemon):
    # The default model used to stay loaded whatever the request said.
    done = requests.post(f"{daemon.url}/api/generate", json={
        "prompt": "a kite", "steps": 2, "width": 64, "height": 64, "wait": True, "keep_alive": 0}, timeout=120)
    assert done.status_code == 200, done.text
    deadline = time.monotonic() + 20
    while requests.get(f"{daemon.url}/api/ps", timeout=10).json()["models"]:
        assert time.monotonic() < deadline, "keep_alive 0 left the model loaded"
        time.sleep(0.1)
    kept = requests.post(f"{daemon.url}/api/generate", json={
        "prompt": "a kite", "steps": 2, "width": 64, "height": 64, "wait": True, "keep_alive": "-1"}, timeout=120)
    assert kept.status_code == 200
    (model,) = requests.get(f"{daemon.url}/api/ps", timeout=10).json()["models"]
    assert model["expires_in_s"] is None


@pytest.mark.parametrize("value", ["soon", "10x", "", "nan", True, [5]])
def test_a_bad_keep_alive_is_a_400_naming_it(server, value):
    response = requests.post(f"{server.url}/api/generate", json={"prompt": "a kite", "keep_alive": value},
                             timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "keep_alive"
    assert server.engine.jobs() == []  # refused before anything was queued


# --- queue ---------------------------------------------------------------------------------------

def test_queue_lists_and_cancels_all_of_mine(home, daemon):
    ids = [requests.post(f"{daemon.url}/api/generate", json={"prompt": f"slow {i}", "steps": 100,
                                                              "width": 64, "height": 64}, timeout=10).json()["id"]
           for i in range(3)]
    listed = _json(pennello(home, "queue", "--json"))["jobs"]
    assert [job["id"] for job in listed] == ids
    assert "slow 0" in pennello(home, "queue").stdout
    result = pennello(home, "queue", "cancel", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(job["id"] for job in _json(result)["cancelled"]) == sorted(ids)
    deadline = time.monotonic() + 30
    while any(job["status"] not in ("cancelled", "done")
              for job in requests.get(f"{daemon.url}/api/jobs", timeout=10).json()["jobs"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    wrong = pennello(home, "queue", "cancel", "no-such-job", "--json")
    assert wrong.returncode == 6 and _json(wrong)["type"] == "not_found"
    assert requests.get(f"{daemon.url}/api/jobs?mine=perhaps", timeout=10).status_code == 400


# --- generate starts the daemon ------------------------------------------------------------------

def test_generate_starts_the_daemon_and_leaves_it_running(home, tmp_path):
    env = {**_env(home), "PENNELLO_SERVER_PORT": "0"}
    try:
        result = subprocess.run([sys.executable, "-m", "pennello", "generate", "a kite", "--steps", "2",
                                 "--size", "64x64", "--seed", "3", "--out", str(tmp_path), "--json"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        assert "pennello was not running; starting it" in result.stderr
        (image,) = _json(result)["images"]
        assert image["seed"] == 3 and Path(image["path"]).is_file() and "bytes" not in image
        info = read_daemon_info(home)
        assert info is not None and requests.get(info["url"] + "/api/health", timeout=10).json()["ready"]
        second = subprocess.run([sys.executable, "-m", "pennello", "generate", "a kite", "--steps", "2",
                                 "--size", "64x64", "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 0 and "starting" not in second.stderr  # the same daemon, reused
        assert pennello(home, "stop").returncode == 0
        assert _process_ended(info["pid"])
    finally:
        info = read_daemon_info(home)
        if info is not None:
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- --json --------------------------------------------------------------------------------------

def test_status_json_and_errors_as_json(home, daemon):
    status = _json(pennello(home, "status", "--json"))
    assert status["url"] == daemon.url and status["ready"] and status["default_model"] == "pennello-tiny"
    daemon.terminate()
    down = pennello(home, "status", "--json")
    assert down.returncode == DAEMON_EXIT
    assert _json(down) == {**_json(down), "code": DAEMON_EXIT, "type": "daemon"}
    assert "not running" in _json(down)["error"]
    bad = pennello(home, "generate", "a kite", "--json", "--url", "http://127.0.0.1:9")
    assert bad.returncode == DAEMON_EXIT and _json(bad)["code"] == DAEMON_EXIT


def _picture(path: Path, side: int = 64) -> Path:
    Image.new("RGB", (side, side), (200, 80, 40)).save(path)
    return path


def test_batch_pipeline_and_copyright_json(make_server, tmp_path):
    references = tmp_path / "protected"
    references.mkdir()
    reference = _picture(references / "work.png")
    server = make_server(Config().replace("copyright", reference_dir=str(references)))
    runner = CliRunner()
    batch = runner.invoke(cli, ["batch", "a fox", "--styles", "2", "--seed", "4", "--out", str(tmp_path / "b"),
                                "--url", server.url, "--json"])
    assert batch.exit_code == 0, batch.output
    shape = json.loads(batch.stdout)
    assert shape["seed"] == 4 and len(shape["styles"]) == 2 and Path(shape["contact_sheet"]).is_file()
    assert all(Path(image["path"]).is_file() for style in shape["styles"] for image in style["images"])
    saved = runner.invoke(cli, ["pipeline", "save", "tiny", "--prompt", "{subject}", "--steps", "2",
                                "--url", server.url])
    assert saved.exit_code == 0, saved.output
    run = runner.invoke(cli, ["pipeline", "run", "tiny", "a fox", "--out", str(tmp_path / "p"),
                              "--url", server.url, "--json"])
    assert run.exit_code == 0, run.output
    ran = json.loads(run.stdout)
    assert ran["pipeline"] == "tiny" and Path(ran["images"][0]["path"]).is_file()
    assert ran["images"][0]["flagged"] is False
    check = runner.invoke(cli, ["copyright", str(reference), "--url", server.url, "--json"])
    assert check.exit_code == 10  # flagged, as without --json
    note = json.loads(check.stdout)
    assert note["flagged"] == 1 and note["files"][0]["path"] == str(reference)
    assert note["files"][0]["matches"][0]["reference"] == "work.png"
    missing = runner.invoke(cli, ["pipeline", "run", "nope", "--url", server.url, "--json"])
    assert missing.exit_code == 6 and json.loads(missing.stdout)["type"] == "not_found"


# --- progress bars -------------------------------------------------------------------------------

def _on_a_terminal(home: Paths, *args: str) -> tuple[int, str]:
    """``pennello ARGS`` on a pseudo-terminal sized as a shell's (a new one is 0 columns wide,
    where tqdm draws nothing); returns the exit status and what the terminal showed."""
    command = shlex.join([sys.executable, "-m", "pennello", *args])
    return run_on_terminal(["sh", "-c", f"stty cols 100 rows 24 && exec {command}"], _env(home), answer=None)


def test_edit_shows_the_daemons_progress_on_a_terminal_only(home, server, tmp_path):
    source = _picture(tmp_path / "photo.png", 128)  # 75 steps of 128²: long enough to be followed
    args = ["edit", str(source), "a watercolour", "--out", str(tmp_path / "out"), "--url", server.url]
    code, terminal = _on_a_terminal(home, *args, "--steps", "100")
    assert code == 0, terminal
    percents = {int(p) for p in re.findall(r"editing:\s+(\d+)%", terminal)}
    assert percents & set(range(1, 100)), f"no progress from the daemon was shown: {terminal!r}"
    piped = subprocess.run([sys.executable, "-m", "pennello", *args, "--steps", "4"], capture_output=True,
                           text=True, timeout=300, env=_env(home))
    assert piped.returncode == 0 and "editing" not in piped.stderr and "%|" not in piped.stderr
