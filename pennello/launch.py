"""Starting pennello's own processes (the daemon, the tray, the model worker) safely.

``python -m pennello…`` puts the current directory first on ``sys.path``, so a ``pennello/``
folder there (a source checkout next to a normal install) would shadow the installed package:
the child would import the wrong code or fail. ``-P`` (Python 3.11+) leaves the current
directory out:

    >>> python_command("-m", "pennello", "serve")[1:]
    ['-P', '-m', 'pennello', 'serve']

A daemon started for someone (the tray, ``pennello generate``) runs detached from the starter's
terminal (:func:`detached`), so a Ctrl-C there does not reach it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def python_command(*args: str, python: str | None = None) -> list[str]:
    """A command line that runs ``python`` (this interpreter by default) with ``-P`` and ``args``."""
    return [python or sys.executable, "-P", *args]


def detached() -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that start a child in its own session (process group
    on Windows, without a console window): Ctrl-C and a closed terminal reach only the starter."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}
