"""The one-click installer, ``packaging/install.sh``, run for real in a fresh temporary HOME.

Installing torch and pennello's other dependencies from scratch takes minutes, so the tests
reuse the ones this test run already has, through a mechanism users have too:
``--system-site-packages``. The fresh HOME gets a user site-packages with a ``.pth`` file
pointing at a folder of links to this environment's packages (pennello, pip and setuptools
left out), and the installer builds its venv with ``--python <base interpreter>
--system-site-packages``, so pip finds them installed and keeps them ("torch … is already
installed; keeping it"). Everything else is the real thing: the venv, pennello built and
installed from the checkout (with ``--no-index``: its build requirement, setuptools, is a wheel
repacked from this environment's installed copy, so no test touches a package index), the
embedded model installed and verified, start at login, the menu entry, then a daemon from the
installed environment making a picture, and an uninstall that must leave only the pictures.

The air-gapped test runs the installer inside a network namespace with only loopback
(``ip netns``, so it needs root), from a bundle made by ``pennello bundle export`` whose
``wheels/`` holds pennello's wheel. A full ``--with-wheels`` bundle (torch included) is what
``bench/bench_install.py`` times.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from pennello.installer.backend_packages import nvidia_gpu
from pennello.installer.ownwheel import repack
from pennello.installer.wheelhouse import write_lock
from test_consent import run_on_terminal

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SH = ROOT / "packaging" / "install.sh"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
NOT_LINKED = ("pennello", "__editable__", "pip", "setuptools", "_distutils_hack", "pkg_resources",
              "distutils-precedence.pth", "__pycache__")
# Caches that tools other than pennello keep in HOME (pip's wheel cache, rustup's settings).
NOT_OURS = (".cache/pip", ".rustup", ".local/lib")
INSTALL_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory) -> Path:
    """A folder of links to this environment's installed packages, minus pennello and pip."""
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "torch").exists():
        pytest.skip(f"this environment ({site}) has no torch to reuse")
    farm = tmp_path_factory.mktemp("deps")
    for entry in site.iterdir():
        if not entry.name.startswith(NOT_LINKED) and not entry.name.endswith(".pth"):
            (farm / entry.name).symlink_to(entry)
    return farm


@pytest.fixture(scope="module")
def local_wheels(tmp_path_factory) -> Path:
    """A find-links folder holding a wheel of this environment's setuptools, repacked from its
    installed files (as bundles repack pennello), so builds and torch's ``setuptools>=77.0.3``
    need no package index."""
    folder = tmp_path_factory.mktemp("wheels")
    repack(importlib.metadata.distribution("setuptools"), folder)
    return folder


def make_user_home(root: Path, deps_dir: Path) -> Path:
    """A fresh HOME in ``root`` whose user site-packages points at :func:`deps_dir`."""
    home = root / "user"
    user_site = home / ".local" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    user_site.mkdir(parents=True)
    (user_site / "pennello-test-deps.pth").write_text(f"{deps_dir}\n")
    return home


@pytest.fixture
def user_home(tmp_path, deps_dir) -> Path:
    return make_user_home(tmp_path, deps_dir)


@dataclass(frozen=True)
class OneClick:
    home: Path
    venv: Path
    before: set[str]  # the files in home before the install
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def one_click(tmp_path_factory, deps_dir, local_wheels) -> OneClick:
    """The one-click install from this checkout with no terminal and neither --yes nor
    --autostart, made once: the air-gapped round trip exports from it, then the checkout test
    generates, repairs and uninstalls it (in that order, as the tests stand in this file)."""
    home = make_user_home(tmp_path_factory.mktemp("one-click"), deps_dir)
    before = files_under(home)
    result = install_sh(home, "--no-start", "--python", BASE_PYTHON, "--system-site-packages",
                        **offline_pip(local_wheels))
    return OneClick(home, home / ".local" / "share" / "pennello" / "venv", before, result)


def offline_pip(local_wheels: Path) -> dict[str, str]:
    return {"PENNELLO_PIP_ARGS": f"--no-index --find-links {local_wheels}"}


def user_env(home: Path, **extra: str) -> dict[str, str]:
    drop = ("PENNELLO_", "XDG_", "PYSTRAY_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "HOME": str(home), **extra}


def install_sh(home: Path, *args: str, prefix: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "bash", str(INSTALL_SH), *args], capture_output=True, text=True,
                          env=user_env(home, **env), stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S)


def files_under(home: Path) -> set[str]:
    found = set()
    for path in home.rglob("*"):
        relative = path.relative_to(home).as_posix()
        if (path.is_file() or path.is_symlink()) and not relative.startswith(NOT_OURS):
            found.add(relative)
    return found


GENERATE = textwrap.dedent("""
    # Start the installed daemon, make one picture through the HTTP API, stop the daemon.
    import json, re, signal, subprocess, sys, requests
    from pennello.owner_token import read_owner_token
    from pennello.paths import get_paths
    serve = subprocess.Popen([sys.argv[1], "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        url = re.match(r"pennello is serving on (http://\\S+)", line).group(1)
        owner = requests.Session()  # as the pennello CLI asks: with the owner token serve wrote
        owner.headers["Authorization"] = "Bearer " + read_owner_token(get_paths())
        job = owner.post(url + "/api/generate", json={"prompt": "a red kite", "seed": 7, "wait": True},
                         timeout=300).json()
        image = owner.get(url + job["images"][0]["url"], timeout=60)
        open(sys.argv[2], "wb").write(image.content)
        print(json.dumps({"status": job["status"], "type": image.headers["Content-Type"],
                          "health": requests.get(url + "/api/health", timeout=10).json()}))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=90)
""")


def generate_with(home: Path, venv: Path, out: Path, prefix: tuple[str, ...] = ()) -> dict:
    script = home.parent / "generate.py"
    script.write_text(GENERATE)
    result = subprocess.run([*prefix, str(venv / "bin" / "python"), str(script), str(venv / "bin" / "pennello"),
                             str(out)], capture_output=True, text=True, env=user_env(home), timeout=600, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_bad_arguments_and_sources_fail_with_what_to_do(tmp_path):
    home = tmp_path / "user"
    home.mkdir()
    assert install_sh(home, "--help").returncode == 0
    bogus = install_sh(home, "--bogus")
    assert bogus.returncode == 1 and "unknown option: --bogus" in bogus.stderr and "--help" in bogus.stderr
    missing = install_sh(home, "--from", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    (tmp_path / "bundle").mkdir()
    no_wheels = install_sh(home, "--from", str(tmp_path / "bundle"))
    assert no_wheels.returncode == 1 and "--with-wheels" in no_wheels.stderr
    no_python = install_sh(home, "--python", str(tmp_path / "python9"))
    assert no_python.returncode == 1 and "apt install python3 python3-venv" in no_python.stderr
    refuse = install_sh(home, "uninstall")  # no terminal to ask and no --yes: nothing removed
    assert refuse.returncode == 1 and "--yes" in refuse.stderr
    agreed = install_sh(home, "uninstall", PENNELLO_ASSUME_YES="1")  # as --yes, for scripts
    assert agreed.returncode == 0 and "Pennello is uninstalled." in agreed.stdout, agreed.stderr


def left_after_uninstall(home: Path, before: set[str]) -> set[str]:
    """Files an uninstall left in ``home`` that were not there before the install, less the menu
    index of desktop-file-utils (where installed): shared with other applications, it is
    refreshed so that it no longer lists pennello, not removed."""
    left = files_under(home) - before
    cache = home / ".local" / "share" / "applications" / "mimeinfo.cache"
    if cache.exists():
        assert "pennello" not in cache.read_text().lower(), cache.read_text()
        left.discard(cache.relative_to(home).as_posix())
    return left


def uv_wheel(folder: Path) -> tuple[Path, str]:
    """A wheel of the uv installed beside this Python (or on PATH), laid out as PyPI's: its binary
    in ``uv-VERSION.data/scripts/uv``; returns the wheel and what ``uv --version`` says."""
    uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if uv is None:
        pytest.skip("uv is not installed in this environment (pip install uv)")
    said = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    version = said.split()[1]
    tag = f"py3-none-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"
    wheel = folder / f"uv-{version}-{tag}.whl"
    info = f"uv-{version}.dist-info"
    members = {f"uv-{version}.data/scripts/uv": Path(uv).read_bytes(),
               f"{info}/METADATA": f"Metadata-Version: 2.1\nName: uv\nVersion: {version}\n".encode(),
               f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()}
    record = "".join(f"{name},sha256={_urlsafe_sha256(data)},{len(data)}\n" for name, data in members.items())
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():  # pip installs it as PyPI's: the binary executable
            entry = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o100755 << 16  # a regular file, executable
            archive.writestr(entry, data, zipfile.ZIP_DEFLATED)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel, said


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def path_without(program: str) -> str:
    """PATH less every folder holding ``program``: a machine where it is not installed."""
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / program).exists())


def test_a_bundle_installs_with_its_own_uv_only_when_its_lock_pins_it(tmp_path):
    home, bundle = tmp_path / "user", tmp_path / "bundle"
    home.mkdir()
    (bundle / "wheels").mkdir(parents=True)
    _, said = uv_wheel(bundle / "wheels")
    lock = write_lock(bundle)
    venv = home / ".local" / "share" / "pennello" / "venv"
    # This bundle has no torch wheel, so the installer stops at PyTorch, after choosing uv or pip.
    with_uv = install_sh(home, "--from", str(bundle), "--python", BASE_PYTHON, PATH=path_without("uv"))
    assert with_uv.returncode == 1 and "holds no torch wheel" in with_uv.stderr, with_uv.stdout + with_uv.stderr
    assert f"installing packages with {said}" in with_uv.stdout
    assert not (venv / "bin" / "pip").exists()  # uv needs no pip in the environment

    # A lock that does not pin this uv wheel: the wheel is not run, and pip installs instead.
    lock.write_text(lock.read_text().replace("--hash=sha256:", "--hash=sha256:0"))
    shutil.rmtree(home / ".local")
    with_pip = install_sh(home, "--from", str(bundle), "--python", BASE_PYTHON, PATH=path_without("uv"))
    assert with_pip.returncode == 1 and "holds no torch wheel" in with_pip.stderr, with_pip.stdout + with_pip.stderr
    assert "installing packages with uv" not in with_pip.stdout and (venv / "bin" / "pip").exists()
    assert "is not in" in (home / ".local" / "share" / "pennello" / "install.log").read_text()

    # PENNELLO_UV=0 asks for pip even where uv would do.
    write_lock(bundle)
    shutil.rmtree(home / ".local")
    asked = install_sh(home, "--from", str(bundle), "--python", BASE_PYTHON, PATH=path_without("uv"), PENNELLO_UV="0")
    assert asked.returncode == 1 and "installing packages with uv" not in asked.stdout
    assert (venv / "bin" / "pip").exists()


def test_a_one_click_install_fetches_uv_from_the_index_and_falls_back_to_pip_without(tmp_path):
    home, index = tmp_path / "user", tmp_path / "index"
    home.mkdir()
    index.mkdir()
    _, said = uv_wheel(index)
    venv = home / ".local" / "share" / "pennello" / "venv"
    # The index is a folder holding uv's wheel and no torch, so the installer stops at PyTorch,
    # after choosing uv or pip; pip's own configuration (a torch folder here) is left out.
    offline = {"PATH": path_without("uv"), "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "",
               "PENNELLO_PIP_ARGS": f"--no-index --find-links {index}"}
    with_uv = install_sh(home, "--python", BASE_PYTHON, **offline)
    assert with_uv.returncode == 1 and "installing torch failed" in with_uv.stderr, with_uv.stdout + with_uv.stderr
    assert f"installing packages with {said}" in with_uv.stdout and (venv / "bin" / "uv").is_file()
    again = install_sh(home, "--python", BASE_PYTHON, **offline)  # a re-run uses the uv it fetched
    assert f"installing packages with {said}" in again.stdout and "reusing" in again.stdout

    # An index without uv: pip installs, and says why.
    (index / next(p.name for p in index.iterdir())).unlink()
    shutil.rmtree(home / ".local")
    with_pip = install_sh(home, "--python", BASE_PYTHON, **offline)
    assert with_pip.returncode == 1 and "installing torch failed" in with_pip.stderr, with_pip.stdout + with_pip.stderr
    assert "uv could not be installed from the package index; installing with pip" in with_pip.stdout
    assert "installing packages with uv" not in with_pip.stdout and not (venv / "bin" / "uv").exists()


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with only loopback: nothing outside this machine can be reached."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) for a network namespace")
    name = f"pennello-install-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode:
        pytest.skip(f"cannot create a network namespace here: {created.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.mark.root
def test_air_gapped_install_from_a_bundle_inside_a_network_namespace(one_click, user_home, tmp_path, netns,
                                                                      dependency_wheels):
    # The round trip: the one-click install exports a --with-wheels bundle (pennello's wheel packed
    # back from its environment; the dependencies' from a local folder, as if downloaded)...
    assert one_click.result.returncode == 0, one_click.result.stdout[-3000:] + one_click.result.stderr[-3000:]
    bundle = tmp_path / "bundle"
    index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": " ".join(dependency_wheels)}
    for args in (["keys", "generate", "office"],
                 # without OpenVINO's 180 MB (test_backend_packages checks bundles ask for it)
                 ["bundle", "export", "pennello-tiny", "--out", str(bundle), "--with-wheels", "--no-cpu-backend",
                  "--key", "office"]):
        done = subprocess.run([str(one_click.venv / "bin" / "pennello"), *args], capture_output=True, text=True,
                              env=user_env(one_click.home, **index), cwd="/", timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "pennello==" in (bundle / "lock.txt").read_text()

    # ...which installs inside a namespace with only loopback with the bundle's own install.sh, as
    # README.txt says (a first install: no pennello here, the lock's sha256 from the exporter). It
    # hands over to the one-click installer the bundle carries: menu entry, command, tray; start
    # at login only once agreed to; every wheel checked against lock.txt.
    assert (bundle / "packaging" / "install.sh").read_bytes() == INSTALL_SH.read_bytes()
    prefix = ("ip", "netns", "exec", netns)
    offline = subprocess.run([*prefix, sys.executable, "-c",
                              "import socket; socket.create_connection(('pypi.org', 443), timeout=3)"],
                             capture_output=True, text=True)
    assert offline.returncode != 0, "the namespace must have no network"
    lock_sha256 = hashlib.sha256((bundle / "lock.txt").read_bytes()).hexdigest()
    result = subprocess.run([*prefix, "sh", str(bundle / "install.sh"), "--no-start", "--python", BASE_PYTHON,
                             "--system-site-packages"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            env=user_env(user_home, PATH=path_without("pennello"), PENNELLO_LOCK_SHA256=lock_sha256),
                            timeout=INSTALL_TIMEOUT_S)
    venv = user_home / ".local" / "share" / "pennello" / "venv"
    assert_installed_as_one_click(result, user_home, venv)
    assert "from the bundle" in result.stdout and "installed the bundle's models" in result.stdout
    log = (user_home / ".local" / "share" / "pennello" / "install.log").read_text()
    assert "--no-index" in log and "Processing" in log and "pennello-0.1.0-py3-none-any.whl" in log
    assert f"--require-hashes -r {bundle}/lock.txt" in log

    made = generate_with(user_home, venv, tmp_path / "picture.png", prefix=prefix)
    assert made["status"] == "done" and Image.open(tmp_path / "picture.png").size[0] > 0

    agreed = install_sh(user_home, "--from", str(bundle), "--autostart", "--no-start", "--python", BASE_PYTHON,
                        "--system-site-packages", prefix=prefix)
    assert agreed.returncode == 0, agreed.stdout[-3000:] + agreed.stderr[-3000:]
    assert "reusing" in agreed.stdout
    autostart = (user_home / ".config" / "autostart" / "pennello.desktop").read_text()
    assert f"Exec={venv}/bin/pennello tray" in autostart


def test_install_from_checkout_generate_repair_and_uninstall(one_click, tmp_path, local_wheels):
    user_home, venv, before, result = one_click.home, one_click.venv, one_click.before, one_click.result
    data = venv.parent
    offline_pip_args = offline_pip(local_wheels)
    autostart_file = user_home / ".config" / "autostart" / "pennello.desktop"
    # No terminal and neither --yes nor --autostart: installed, but not started at login.
    assert_installed_as_one_click(result, user_home, venv)
    assert "already installed; keeping it" in result.stdout
    # Where nvidia-smi lists no GPU (CI) the CPU backend is added: here already installed, so kept.
    assert ("a GPU draws here" if nvidia_gpu() else "no NVIDIA GPU found: adding the CPU backend (openvino>=") \
        in result.stdout
    assert (venv / "pyvenv.cfg").read_text().count("true") == 1
    link = user_home / ".local" / "bin" / "pennello"
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import pennello; print(pennello.__file__)"],
                               capture_output=True, text=True, env=user_env(user_home), cwd="/")
    assert installed.stdout.startswith(str(venv)), "pennello must run from the venv, not the checkout"

    picture = tmp_path / "picture.png"
    made = generate_with(user_home, venv, picture)
    assert made["status"] == "done" and made["type"] == "image/png" and made["health"]["ready"]
    assert Image.open(picture).size[0] > 0
    outputs = list((user_home / "Pictures" / "Pennello").rglob("*.png"))
    assert len(outputs) == 1

    # Re-running repairs: a damaged model file, a removed menu entry and command come back.
    blob = max((data / "store" / "blobs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    blob.chmod(0o644)
    blob.write_bytes(b"damaged")
    link.unlink()
    (user_home / ".local" / "share" / "applications" / "pennello.desktop").unlink()
    # This time on a terminal: the facts, then the question (default no), answered "y".
    status, shown = run_on_terminal(["bash", str(INSTALL_SH), "--no-start", "--python", BASE_PYTHON,
                                     "--system-site-packages"], user_env(user_home, **offline_pip_args), answer="y",
                                    timeout=INSTALL_TIMEOUT_S)
    assert status == 0, shown[-3000:]
    assert "reusing" in shown and "pennello-tiny installed and verified" in shown
    assert "The tray and the daemon would start each time you log in" in shown
    assert f"registered in {autostart_file}" in shown and "Start Pennello when you log in? [y/N]" in shown
    assert f"Exec={venv}/bin/pennello tray" in autostart_file.read_text()
    unit = user_home / ".config" / "systemd" / "user" / "pennello.service"
    if (ROOT / "packaging" / "systemd" / "pennello.service").exists():
        assert f"ExecStart={venv}/bin/pennello serve" in unit.read_text() and "IPAddressDeny=any" in unit.read_text()
    assert link.is_symlink() and (user_home / ".local" / "share" / "applications" / "pennello.desktop").exists()
    verify = subprocess.run([str(venv / "bin" / "pennello"), "verify"], capture_output=True, text=True,
                            env=user_env(user_home), cwd="/")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # --no-autostart declines without asking, even with --yes, and undoes the registration.
    declined = install_sh(user_home, "--yes", "--no-autostart", "--no-start", "--python", BASE_PYTHON,
                          "--system-site-packages", **offline_pip_args)
    assert declined.returncode == 0, declined.stdout[-3000:] + declined.stderr[-3000:]
    assert "Pennello will not start at login" in declined.stdout and not autostart_file.exists()

    removed = install_sh(user_home, "uninstall", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "Pennello is uninstalled." in removed.stdout and "kept" in removed.stdout
    left = left_after_uninstall(user_home, before)
    assert left == {p.relative_to(user_home).as_posix() for p in outputs}, f"left behind: {sorted(left)}"
    assert not [p for p in user_home.rglob("*") if p.name.lower() == "pennello" and "Pictures" not in p.parts]

    purged = install_sh(user_home, "uninstall", "--yes", "--purge")
    assert purged.returncode == 0 and left_after_uninstall(user_home, before) == set()


def assert_installed_as_one_click(result: subprocess.CompletedProcess, home: Path, venv: Path) -> None:
    """Every step of the one-click installer ran, with no consent to start at login asked for
    (no terminal, no flag), and it set up the menu entry and icon that start the tray, and the
    ``pennello`` command."""
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    for n, title in enumerate(["Python", "Virtual environment", "PyTorch", "Pennello", "Models", "Start at login",
                               "Menu entry and command", "Start"], start=1):
        assert f"[{n}/8] {title}" in out
    assert "pennello-tiny installed and verified" in out and "Pennello is installed." in out
    assert "not asked (no terminal), so Pennello will not start at login" in out
    assert "choose Start at login in the tray's menu, or run: bash install.sh --autostart" in out
    assert not (home / ".config" / "autostart" / "pennello.desktop").exists()
    assert (venv / "bin" / "pennello").exists()
    menu = (home / ".local" / "share" / "applications" / "pennello.desktop").read_text()
    assert "Name=Pennello" in menu and "Icon=pennello" in menu and f"Exec={venv}/bin/pennello tray" in menu
    icon = home / ".local" / "share" / "icons" / "hicolor" / "256x256" / "apps" / "pennello.png"
    assert Image.open(icon).size == (256, 256)
    link = home / ".local" / "bin" / "pennello"
    assert link.is_symlink() and Path(os.readlink(link)) == venv / "bin" / "pennello"
