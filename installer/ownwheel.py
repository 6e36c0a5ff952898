"""pennello's own wheel for a bundle, made from the pennello that runs here: never fetched.

pennello is not on a package index, so ``bundle export --with-wheels`` cannot download it as it
downloads the dependencies. Two cases cover every install:

* an editable install (a source checkout, ``pip install -e``): its ``direct_url.json`` (PEP 610)
  names the checkout, and ``pip wheel --no-deps`` builds the wheel from it, offline when the
  build backend is already installed;
* a wheel install (``pip install .``, the one-click installer, a bundle's own ``install.sh``):
  the installed files are packed back into a wheel from the distribution's ``RECORD``, each one
  checked against the sha256 recorded at install, so a file changed since then is refused
  rather than carried. Byte code, the console scripts pip wrote outside site-packages and the
  installer's own notes (``INSTALLER``, ``REQUESTED``, ``direct_url.json``) are left out, as a
  wheel has none; the archive's timestamps are fixed so the same install gives the same wheel.

This is simpler and sturdier than keeping a copy of the wheel at install time: it works for
installs made before this existed and by any installer that writes a ``RECORD`` (pip, uv).

    >>> own_wheel(Path("bundle/wheels"))  # doctest: +SKIP
    PosixPath('bundle/wheels/pennello-0.1.0-py3-none-any.whl')
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from pennello.errors import FetchError

_NOT_IN_A_WHEEL = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: reproducible archives


def own_wheel(dest: Path, name: str = "pennello") -> Path:
    """Write the wheel of the installed distribution ``name`` into ``dest``; returns its path.

    Raises:
        FetchError: not installed, the build failed, or an installed file no longer matches its
            ``RECORD``.
    """
    dist = installed_distribution(name)
    dest.mkdir(parents=True, exist_ok=True)
    source = editable_source(dist)
    return build_from_source(source, dest) if source is not None else repack(dist, dest)


def installed_distribution(name: str) -> importlib.metadata.Distribution:
    """What an installer put in place as ``name``. A checkout's ``*.egg-info`` (left by
    setuptools, and found first when the checkout is the current directory) describes no install.

    Raises:
        FetchError: ``name`` is not installed.
    """
    for dist in importlib.metadata.distributions(name=name):
        if dist.read_text("INSTALLER") is not None:  # pip and uv write it; setuptools' egg-info has none
            return dist
    raise FetchError(f"{name} is not installed in this environment ({sys.executable})")


def editable_source(dist: importlib.metadata.Distribution) -> Path | None:
    """The source tree of an editable install (PEP 610 ``direct_url.json``), else None."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if not info.get("dir_info", {}).get("editable") or not info.get("url", "").startswith("file:"):
        return None
    return Path(unquote(urlparse(info["url"]).path))


def build_from_source(source: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` of a checkout; without build isolation when setuptools is here
    (no index needed), else with it. The checkout is left as found: setuptools' ``build/`` and
    ``*.egg-info`` would otherwise stay, and an egg-info there shadows the installed metadata
    for every Python started in that directory."""
    before = set(dest.glob("*.whl"))
    leftovers = [source / "build", *source.glob("*.egg-info")]
    existed = {path for path in leftovers if path.exists()}
    offline = ["--no-build-isolation"] if _has_setuptools(77) else []
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "--wheel-dir", str(dest),
                             str(source)], capture_output=True, text=True)
    for path in {source / "build", *source.glob("*.egg-info")} - existed:
        shutil.rmtree(path, ignore_errors=True)
    if result.returncode:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-5:])
        raise FetchError(f"building pennello's wheel from {source} failed (exit {result.returncode}):\n{tail}")
    built = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob("pennello-*.whl"))
    return built[-1]


def repack(dist: importlib.metadata.Distribution, dest: Path) -> Path:
    """Pack an installed (non-editable) distribution back into a wheel, checking every file."""
    files = [f for f in dist.files or [] if _belongs_in_wheel(f)]
    if not files:
        raise FetchError(f"{dist.metadata['Name']} has no RECORD of its files; reinstall it with pip")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{_wheel_stem(dist)}.whl"
    record: list[str] = []
    with zipfile.ZipFile(target, "w") as archive:
        for entry in sorted(files, key=str):
            path = Path(dist.locate_file(entry))
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if entry.hash is not None and (entry.hash.mode, entry.hash.value) != ("sha256", digest):
                target.unlink()
                raise FetchError(f"{entry} of the installed {dist.metadata['Name']} changed since it was "
                                 f"installed; reinstall it before exporting")
            archive.writestr(_member(str(entry), path.stat().st_mode), data)
            record.append(f"{entry},sha256={digest},{len(data)}")
        dist_info = next(str(f).split("/")[0] for f in files if str(f).split("/")[0].endswith(".dist-info"))
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(_member(f"{dist_info}/RECORD", 0o644), "\n".join(record) + "\n")
    return target


def _member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED  # a ZipInfo alone would be stored uncompressed
    info.external_attr = (mode & 0o777) << 16  # executables stay executable once installed
    return info


def _belongs_in_wheel(entry: importlib.metadata.PackagePath) -> bool:
    parts = entry.parts
    if parts[0] == ".." or "__pycache__" in parts or entry.suffix == ".pyc":
        return False  # scripts pip wrote beside the environment, and byte code, are made at install
    return not (len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in _NOT_IN_A_WHEEL)


def _wheel_stem(dist: importlib.metadata.Distribution) -> str:
    """``name-version-pythons-abis-platforms`` from the METADATA name and version and WHEEL's tags."""
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")] or ["py3-none-any"]
    columns = zip(*(tag.split("-") for tag in tags))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return "-".join([name, dist.version, *(".".join(dict.fromkeys(column)) for column in columns)])


def _has_setuptools(major: int) -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= major
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
