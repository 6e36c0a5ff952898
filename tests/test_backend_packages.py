"""The CPU backend's packages: which machines the one-click installers give them to, and bundles.

``python -m pennello.installer.backend_packages`` is what install.sh and install.ps1 run after
installing pennello; here it runs as a real process with a stand-in ``nvidia-smi`` (a shell
script printing what the real one prints) first on its PATH. tests/test_packaging.py runs the
whole one-click install, which takes that path on this GPU-less machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pennello.installer import backend_packages, bundle

ROOT = Path(__file__).resolve().parents[1]
CPU_EXTRA = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-8a7b0c3e-5f21-4d7e-9c1a-2b3c4d5e6f70)"
# What nvidia-smi says where the tools are installed but the driver is not loaded.
NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def wanted(tmp_path: Path, smi: tuple[str, int] | None, override: str | None = None) -> list[str]:
    """What the installers would add on a machine whose nvidia-smi prints ``smi`` (text, exit code)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:
        script = bin_dir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\necho '{smi[0]}'\nexit {smi[1]}\n")
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != backend_packages.OVERRIDE_ENV}
    env["PATH"] = str(bin_dir)
    if override is not None:
        env[backend_packages.OVERRIDE_ENV] = override
    done = subprocess.run([sys.executable, "-m", "pennello.installer.backend_packages"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()


def test_the_cpu_extra_is_read_from_the_installed_metadata():
    assert backend_packages.extra_requirements("cpu") == CPU_EXTRA
    assert backend_packages.extra_requirements("no-such-extra") == []


@pytest.mark.skipif(sys.platform == "darwin", reason="Apple silicon never gets the CPU backend")
def test_the_installers_add_the_cpu_backend_only_where_no_nvidia_gpu_is_listed(tmp_path):
    assert wanted(tmp_path, None) == CPU_EXTRA  # no NVIDIA tools at all
    assert wanted(tmp_path, (NO_DRIVER, 9)) == CPU_EXTRA  # tools, but no driver: torch cannot use it
    assert wanted(tmp_path, (H100, 0)) == []
    assert wanted(tmp_path, (H100, 0), override="1") == CPU_EXTRA
    assert wanted(tmp_path, None, override="0") == []
    with pytest.raises(subprocess.CalledProcessError) as refused:
        wanted(tmp_path, (H100, 0), override="yes")
    assert refused.value.stderr.strip() == ("error: PENNELLO_CPU_BACKEND must be 1 (add the CPU backend) or 0 (do "
                                            "not), or unset (add it where nvidia-smi lists no GPU), not 'yes'")
    assert refused.value.returncode == 1


def test_a_bundle_with_wheels_asks_pip_for_the_cpu_backend_too(tmp_path, monkeypatch):
    """The exporting machine cannot know the target's GPU, so bundles carry OpenVINO's wheels;
    pip itself is not run (it would need the package index)."""
    asked: list[list[str]] = []
    monkeypatch.setattr(bundle, "_pip", asked.append)
    monkeypatch.setattr(bundle, "own_wheel", lambda dest: None)
    bundle.download_wheels(tmp_path / "wheels", ("manylinux2014_x86_64",), "3.11")
    download = asked[0]
    assert download[:2] == ["download", "--dest"] and "--only-binary=:all:" in download
    assert set(CPU_EXTRA) <= set(download) and any(r.startswith("torch") for r in download)
    asked.clear()  # `pennello bundle export --with-wheels --no-cpu-backend` leaves it out
    bundle.download_wheels(tmp_path / "wheels", (), None, cpu_backend=False)
    assert not set(CPU_EXTRA) & set(asked[0]) and any(r.startswith("torch") for r in asked[0])
