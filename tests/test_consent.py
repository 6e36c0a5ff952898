"""Consent: pennello asks before a big download and before leaving no-network mode, and never
updates anything in the background.

Every command runs as a real process. "On a terminal" means a real pseudo-terminal
(:func:`on_terminal` types the answer at the ``[y/N]`` prompt); otherwise stdin is
``/dev/null``, as under cron or in a script. Downloads come from the real HTTP mirror of
``_fixtures_installer`` on 127.0.0.1, whose request log proves what was (not) fetched.
"""

from __future__ import annotations

import html
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _fixtures_installer import make_manifest
from pennello.config import load_config
from pennello.consent import assumed_yes, confirm
from pennello.errors import ConsentError
from pennello.installer.catalog import Catalog
from pennello.installer.manifest import Source
from pennello.paths import Paths

OFFICE = {"model_index.json": b'{"office": 1}', "unet/w.bin": b"office weights " * 1000}  # 15.0 KB
EXTRA = {"unet/extra.bin": b"more weights " * 500}  # 6.5 KB
PROMPT = "[y/N]"


def _env(home: Paths, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENNELLO_")}
    return {**env, "PENNELLO_HOME": str(home.runtime_dir.parent), **extra}


def pennello(home: Paths, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``pennello ARGS`` with no terminal: stdin is /dev/null."""
    result = subprocess.run([sys.executable, "-m", "pennello", *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, env=_env(home, **env), timeout=120)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def on_terminal(home: Paths, *args: str, answer: str | None, **env: str) -> tuple[int, str]:
    """``pennello ARGS`` on a pseudo-terminal, typing ``answer`` at the first ``[y/N]`` prompt."""
    return run_on_terminal([sys.executable, "-m", "pennello", *args], _env(home, **env), answer)


def run_on_terminal(command: list[str], env: dict[str, str], answer: str | None, prompt: str = PROMPT,
                    timeout: float = 120) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as stdin, stdout and stderr, typing ``answer`` and
    Return at the first ``prompt`` it shows (also used by test_packaging for install.sh).

    Returns:
        the exit status and everything the terminal showed.
    """
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    shown, typed, deadline = b"", False, time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"no end; the terminal shows: {shown.decode()[-3000:]}"
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and not typed and prompt.encode() in shown:
                os.write(master, answer.encode() + b"\n")
                typed = True
    finally:
        os.close(master)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=60), shown.decode(errors="replace").replace("\r\n", "\n")


# --- the helper -------------------------------------------------------------------------------------

def test_confirm_without_a_terminal_refuses_and_names_the_flag(tmp_path):
    with open(os.devnull) as devnull, pytest.raises(ConsentError, match="Run again with --yes") as refused:
        confirm("Download 2.1 GB for sd-turbo v1?", ["1 file"], stdin=devnull, environ={})
    assert refused.value.exit_code == 10 and "PENNELLO_ASSUME_YES=1" in str(refused.value)
    with open(os.devnull) as devnull:  # a yes given in advance needs no terminal
        confirm("Download?", stdin=devnull, assume_yes=True, environ={})
        confirm("Download?", stdin=devnull, environ={"PENNELLO_ASSUME_YES": "1"})
        with pytest.raises(ConsentError):
            confirm("Download?", stdin=devnull, environ={"PENNELLO_ASSUME_YES": "0"})
    assert [assumed_yes({"PENNELLO_ASSUME_YES": v}) for v in ("1", "yes", "TRUE", "", "0", "no")] == [
        True, True, True, False, False, False]


# --- downloads over the threshold ---------------------------------------------------------------------

@pytest.fixture
def office(home, mirror, publish):
    """Model "office" in the user catalog, its files on the HTTP mirror (15.0 KB to download)."""
    mirror.files.update(OFFICE)
    source = Source("mirror", base_url=mirror.url)
    Catalog(home).write_user("office", publish(make_manifest("office", OFFICE, source=source)))
    return mirror


def test_a_download_over_the_threshold_is_refused_without_a_terminal(home, office):
    refused = pennello(home, "install", "office", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert refused.returncode == 10 and refused.stdout == ""
    assert "error: Download 15.0 KB for office v1: not done" in refused.stderr
    assert "Run again with --yes" in refused.stderr
    assert "2 files, 15.0 KB in all, from " + office.url in refused.stderr
    assert office.requests == [], "nothing may be downloaded before the answer"
    assert not (home.store_dir / "models" / "office").exists()

    # Under the threshold (1 MB) nobody is asked, terminal or not.
    done = pennello(home, "install", "office", PENNELLO_INSTALLER_CONFIRM_OVER_MB="1")
    assert done.returncode == 0 and done.stdout == "office v1 installed (15.0 KB)\n", done.stderr
    assert {path for path, _ in office.requests} == set(OFFICE)


def test_yes_or_the_environment_agrees_in_advance(home, office):
    done = pennello(home, "install", "office", "--yes", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert done.returncode == 0 and done.stdout == "office v1 installed (15.0 KB)\n", done.stderr
    assert "Download" not in done.stderr
    assert (home.store_dir / "models" / "office").exists()

    home.config_file.write_text("[installer]\nconfirm_over_mb = 0\n")  # the config file, too
    assert load_config().installer.confirm_over_mb == 0
    office.files.update(EXTRA)
    source = Source("mirror", base_url=office.url)
    Catalog(home).write_user("office", publish_version(home, {**OFFICE, **EXTRA}, source))
    office.requests.clear()
    done = pennello(home, "install", "office", PENNELLO_ASSUME_YES="1")
    assert done.returncode == 0 and done.stdout == "office v2 installed (21.5 KB)\n", done.stderr
    assert [path for path, _ in office.requests] == ["unet/extra.bin"]  # the rest was in the store


def publish_version(home: Paths, files: dict[str, bytes], source: Source, version: int = 2) -> bytes:
    from pennello.installer.keys import load_private_key, sign_signed
    from pennello.installer.manifest import dump_envelope

    from _fixtures_installer import KEY_NAME

    signed = make_manifest("office", files, version=version, source=source).to_signed()
    return dump_envelope(signed, [sign_signed(signed, load_private_key(KEY_NAME, home))])


def test_on_a_terminal_the_question_shows_the_size_and_no_downloads_nothing(home, office):
    # Only what the store lacks counts: v1 is installed, v2 adds one 6.5 KB file.
    assert pennello(home, "install", "office", "--yes").returncode == 0
    office.files.update(EXTRA)
    Catalog(home).write_user("office", publish_version(home, {**OFFICE, **EXTRA},
                                                       Source("mirror", base_url=office.url)))
    office.requests.clear()

    status, shown = on_terminal(home, "install", "office", answer="n", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert status == 10, shown
    assert "1 file, 6.5 KB in all, from " + office.url in shown
    assert "confirm_over_mb = 0" in shown and "Download 6.5 KB for office v2? [y/N]" in shown
    assert "not done; nothing was changed" in shown and office.requests == []

    status, shown = on_terminal(home, "install", "office", answer="y", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert status == 0 and "office v2 installed (21.5 KB)" in shown, shown
    assert [path for path, _ in office.requests] == ["unet/extra.bin"]

    # Nothing left to download: no question, even with a threshold of 0.
    again = pennello(home, "install", "office", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert again.returncode == 0 and "Download" not in again.stderr


def test_files_on_this_machine_are_not_downloads(home):
    # The embedded model is copied from the package: never a question, whatever the threshold.
    done = pennello(home, "install", "pennello-tiny", PENNELLO_INSTALLER_CONFIRM_OVER_MB="0")
    assert done.returncode == 0 and "installed" in done.stdout, done.stderr


REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_locking_asks_with_the_sizes_the_source_gives_or_says_they_are_unknown(home, mirror, publish):
    from _fixtures_installer import KEY_NAME

    # A mirror: index.json lists the paths, and this server answers no HEAD, so no sizes.
    mirror.files.update({**OFFICE, "index.json": json.dumps(sorted(OFFICE)).encode()})
    unlocked = make_manifest("office", {}, source=Source("mirror", base_url=mirror.url), locked=False)
    Catalog(home).write_user("office", publish(unlocked))
    refused = pennello(home, "manifest", "lock", "office", "--key", KEY_NAME)
    assert refused.returncode == 10, refused.stderr
    assert "error: Download 2 files of unknown size to lock office v1: not done" in refused.stderr
    assert "does not say how big some are" in refused.stderr
    assert [path for path, _ in mirror.requests] == ["index.json"]  # listed, nothing fetched
    done = pennello(home, "manifest", "lock", "office", "--key", KEY_NAME, "--yes")
    assert done.returncode == 0 and "locked manifest written to" in done.stdout, done.stderr

    # The Hub (here: the mirror as HF_ENDPOINT) lists sizes with the files: known, over 0 MB.
    tree = [{"type": "file", "path": path, "size": len(data), "oid": "0" * 40} for path, data in OFFICE.items()]
    mirror.files[f"api/models/acme/office/tree/{REVISION}"] = json.dumps(tree).encode()
    for path, data in OFFICE.items():
        mirror.files[f"acme/office/resolve/{REVISION}/{path}"] = data
    hub = make_manifest("hubby", {}, source=Source("huggingface", repo="acme/office", revision=REVISION),
                        locked=False)
    Catalog(home).write_user("hubby", publish(hub))
    mirror.requests.clear()
    hub_env = {"HF_ENDPOINT": mirror.url, "HF_HUB_OFFLINE": "0", "PENNELLO_INSTALLER_CONFIRM_OVER_MB": "0"}
    refused = pennello(home, "manifest", "lock", "hubby", "--key", KEY_NAME, **hub_env)
    assert refused.returncode == 10, refused.stderr
    assert "error: Download 15.0 KB to lock hubby v1: not done" in refused.stderr
    assert "says 15.0 KB in all, over [installer] confirm_over_mb = 0" in refused.stderr
    assert not [path for path, _ in mirror.requests if "/resolve/" in path]
    hub_env["PENNELLO_INSTALLER_CONFIRM_OVER_MB"] = "1"  # under the threshold: no question
    done = pennello(home, "manifest", "lock", "hubby", "--key", KEY_NAME, **hub_env)
    assert done.returncode == 0 and "locked manifest written to" in done.stdout, done.stderr


# --- leaving no-network mode ---------------------------------------------------------------------------

def test_offline_off_explains_and_asks_and_on_does_not(home):
    refused = pennello(home, "offline", "off")
    assert refused.returncode == 10 and "Run again with --yes" in refused.stderr
    assert "model libraries (huggingface_hub, diffusers) may reach the internet" in refused.stderr
    assert load_config().offline.enabled is True and not home.config_file.exists()

    status, shown = on_terminal(home, "offline", "off", answer="n")
    assert status == 10 and "Turn no-network mode off? [y/N]" in shown and load_config().offline.enabled

    status, shown = on_terminal(home, "offline", "off", answer="y")
    assert status == 0 and "no-network mode is off" in shown, shown
    assert load_config().offline.enabled is False

    on = pennello(home, "offline", "on")  # back to safety needs no question, and no terminal
    assert on.returncode == 0 and "no-network mode is on" in on.stdout and load_config().offline.enabled

    done = pennello(home, "offline", "off", "--yes")
    assert done.returncode == 0 and load_config().offline.enabled is False


# --- no background updates --------------------------------------------------------------------------

# Downloading, locking (which downloads) and bundles; installing adds the code that writes models.
DOWNLOADING = ("pennello.installer.sources", "pennello.installer.lock", "pennello.installer.bundle",
               "pennello.installer.wheelhouse", "pennello.installer.ownwheel", "pennello.installer.gitpin")
FETCHING = (*DOWNLOADING, "pennello.installer.install")

SERVE_AND_REPORT = textwrap.dedent("""
    # Import every daemon module, serve, generate one picture, then list what got imported.
    import importlib, json, pkgutil, sys
    import requests
    import pennello.daemon
    for module in pkgutil.iter_modules(pennello.daemon.__path__):
        importlib.import_module(f"pennello.daemon.{module.name}")
    from pennello.config import Config
    from pennello.daemon import create_app, start_background_server
    from pennello.daemon.engine.engine import Engine
    from pennello.owner_token import read_owner_token
    from pennello.paths import get_paths

    paths = get_paths()
    engine = Engine(Config(), paths)
    engine.start()
    _, url, stop = start_background_server(create_app(Config(), engine, paths))
    owner = requests.Session()  # as the pennello CLI asks: with the owner token
    owner.headers["Authorization"] = "Bearer " + read_owner_token(paths)
    try:
        job = owner.post(url + "/api/generate", json={"prompt": "a kite", "steps": 1, "width": 64,
                         "height": 64, "wait": True}, timeout=300).json()
        models = owner.get(url + "/api/models", timeout=30).json()
        # An unknown OpenAI model's 404 lists the catalog's models: read here, never fetched.
        unknown = owner.post(url + "/v1/images/generations", json={"prompt": "x", "model": "no-such-model"},
                             timeout=60)
    finally:
        stop()
        engine.stop(cancel_running=True)
    print(json.dumps({"status": job.get("status"), "models": len(models.get("models", models)),
                      "unknown": [unknown.status_code, unknown.json()["error"]["message"]],
                      "modules": sorted(sys.modules)}))
""")


def test_the_daemon_has_no_code_that_fetches(home, tmp_path):
    """Nothing the daemon runs can download: the installer's fetching modules are never even
    imported while it serves and generates (so no timer, thread or route can call them)."""
    from pennello.config import Config
    from pennello.installer import ensure_embedded_default

    ensure_embedded_default(home, Config())  # what `pennello serve` does once, in the foreground
    script = tmp_path / "serve.py"
    script.write_text(SERVE_AND_REPORT)
    # -I: only the installed package is imported, never a `pennello` folder next to the script.
    result = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True, timeout=600,
                            env=_env(home, OMP_NUM_THREADS="1"), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "done" and report["models"] >= 1
    assert report["unknown"][0] == 404 and "pennello install NAME" in report["unknown"][1]
    imported = set(report["modules"])
    assert "pennello.installer.catalog" in imported  # what the 404's advice read
    assert "pennello.installer.store" in imported  # it does read the verified store
    assert not imported & set(FETCHING), sorted(imported & set(FETCHING))


SERVE_COMMAND = textwrap.dedent("""
    # `pennello serve ARGS`, which writes the names of every module it imported when it exits.
    import atexit, json, sys
    from pennello.cli import main

    report = sys.argv.pop(1)
    atexit.register(lambda: open(report, "w").write(json.dumps(sorted(sys.modules))))
    main()
""")


def test_pennello_serve_never_imports_code_that_downloads(home, tmp_path):
    """A real ``pennello serve`` on a fresh home installs the embedded default model (files
    shipped inside the package) and serves, yet never imports a module that can download."""
    import requests

    from pennello.config import Config
    from pennello.installer.store import Store

    report, log = tmp_path / "modules.json", tmp_path / "serve.log"
    # -I and a cwd outside the checkout: the installed package runs, not a folder that shadows it.
    process = subprocess.Popen([sys.executable, "-I", "-c", SERVE_COMMAND, str(report), "serve", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=str(tmp_path),
                               env=_env(home, OMP_NUM_THREADS="1"))
    try:
        line = process.stdout.readline()  # blocks until serving, or EOF if it died
        assert line.startswith("pennello is serving on "), f"{line!r}\n{log.read_text()[-3000:]}"
        url = line.split()[-1]
        assert requests.get(url + "/api/health", timeout=60).json()["ready"] is True
        # The owner's page embeds the catalog, and its models view lists what is installed.
        page = requests.get(url + "/", timeout=60)
        models = requests.get(url + "/api/models", timeout=60).json()["models"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    assert code == 0, log.read_text()[-3000:]
    imported = set(json.loads(report.read_text()))
    # It did install the default model, through the installer and the local-files fetcher.
    assert {"pennello.installer.install", "pennello.installer.fetchers"} <= imported
    assert Store(home).get(Config().engine.default_model).path.exists()
    catalog = re.search(r'<meta name="pennello-catalog" content="([^"]*)">', page.text)
    assert page.status_code == 200 and catalog, page.text[:500]
    listed = {entry["name"] for entry in json.loads(html.unescape(catalog.group(1)))}
    assert Config().engine.default_model in listed and len(listed) > 1  # the page's "available" models
    assert Config().engine.default_model in {model["name"] for model in models}
    assert "pennello.installer.catalog" in imported  # what the page's listing read
    assert not imported & set(DOWNLOADING), sorted(imported & set(DOWNLOADING))
