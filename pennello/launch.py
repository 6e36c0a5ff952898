"""Starting pennello's own processes (the daemon, the tray, the model worker) safely.

``python -m pennello…`` puts the current directory first on ``sys.path``, so a ``pennello/``
folder there (a source checkout next to a normal install) would shadow the installed package:
the child would import the wrong code or fail. ``-P`` (Python 3.11+) leaves the current
directory out:

    >>> python_command("-m", "pennello", "serve")[1:]
    ['-P', '-m', 'pennello', 'serve']
"""

from __future__ import annotations

import sys


def python_command(*args: str, python: str | None = None) -> list[str]:
    """A command line that runs ``python`` (this interpreter by default) with ``-P`` and ``args``."""
    return [python or sys.executable, "-P", *args]
