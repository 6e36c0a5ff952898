"""Which of pennello's optional packages a machine wants: the CPU backend where there is no NVIDIA GPU.

Without CUDA the daemon runs SD-class models on OpenVINO (``daemon/engine/backends/``), several
times faster than torch on the same cores (docs/performance.md); OpenVINO is the ``cpu`` extra in
pyproject.toml, so the one-click installers ask this module what to add after pennello itself::

    python -m pennello.installer.backend_packages     # prints e.g. "openvino>=2026.4", or nothing

and air-gapped bundles (:func:`pennello.installer.bundle.download_wheels`) carry the extra's
wheels unless exported with ``--no-cpu-backend``, since the machine the bundle is for is not the
one exporting it.

A CUDA GPU is "found" when ``nvidia-smi -L`` lists one: the torch wheel installed first may be
a CPU build, so torch cannot be asked. ``PENNELLO_CPU_BACKEND=1`` or ``0`` decides instead (a
GPU whose driver is not installed yet, or a machine that should stay on torch).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

from packaging.requirements import Requirement

CPU_EXTRA = "cpu"
OVERRIDE_ENV = "PENNELLO_CPU_BACKEND"


def extra_requirements(extra: str) -> list[str]:
    """The requirements pennello's ``extra`` adds, as pip takes them (e.g. ``openvino>=2026.4``)."""
    found = []
    for line in importlib.metadata.requires("pennello") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            requirement.marker = None
            found.append(str(requirement))
    return found


def nvidia_gpu() -> bool:
    """Whether ``nvidia-smi -L`` lists a GPU (the driver is installed and sees one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and any(line.startswith("GPU ") for line in listed.stdout.splitlines())


def wants_cpu_backend() -> bool:
    """Whether this machine should get the CPU backend: no NVIDIA GPU and no Apple GPU, unless
    :data:`OVERRIDE_ENV` says.

    Raises:
        ValueError: :data:`OVERRIDE_ENV` is set to something else than 1 or 0.
    """
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ValueError(f"{OVERRIDE_ENV} must be 1 (add the CPU backend) or 0 (do not), or unset (add it "
                         f"where nvidia-smi lists no GPU), not {override!r}")
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return False  # Apple silicon draws on its GPU (the mps profile), never on OpenVINO
    return not nvidia_gpu()


def wanted_requirements() -> list[str]:
    """What to install after pennello on this machine (nothing where a GPU serves)."""
    return extra_requirements(CPU_EXTRA) if wants_cpu_backend() else []


if __name__ == "__main__":
    try:
        print("\n".join(wanted_requirements()))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
