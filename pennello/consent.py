"""Asking before pennello does something the user should agree to first.

Four things never happen without a yes: a download over ``[installer] confirm_over_mb``,
installing a model whose hashes can only be recorded on first fetch (its source cannot serve
the signed commit's git objects), leaving no-network mode, and registering start at login.
Each command that does one of them states the facts (how many bytes, what changes) and asks on
the terminal. Scripts answer in advance with the command's flag (``--yes``; ``--first-fetch``
for the second) or ``PENNELLO_ASSUME_YES=1``; with neither and no
terminal on stdin the command refuses with a message naming the flag: it never waits for an
answer that cannot come and never takes silence for a yes.

    >>> from pennello.consent import confirm
    >>> confirm("Download 2.1 GB for sd-turbo?", ["from https://huggingface.co"],
    ...         assume_yes=True)  # --yes given: nothing is asked
    >>> confirm("Turn no-network mode off?", environ={"PENNELLO_ASSUME_YES": "1"})

The tray asks the same questions in a dialog (:mod:`pennello.tray`), and the one-click
installers ask about start at login themselves (``packaging/install.sh``).
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence, TextIO

import click

from pennello.errors import ConsentError

ASSUME_YES_ENV = "PENNELLO_ASSUME_YES"
_TRUE = ("1", "true", "yes", "on")

# What leaving no-network mode allows: shown by `pennello offline off` and the tray's dialog.
NO_NETWORK_OFF_FACTS = (
    "The daemon may then connect anywhere: model libraries (huggingface_hub, diffusers) may "
    "reach the internet, and nothing refuses, counts or reports their connections.",
    "Your prompts and pictures still stay on this machine, and pennello never updates itself or "
    "models in the background. `pennello offline on` turns the mode back on.",
)


def assumed_yes(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``PENNELLO_ASSUME_YES`` answers every question with yes."""
    environ = os.environ if environ is None else environ
    return environ.get(ASSUME_YES_ENV, "").strip().lower() in _TRUE


def confirm(question: str, facts: Sequence[str] = (), *, assume_yes: bool = False, flag: str = "--yes",
            environ: Mapping[str, str] | None = None, stdin: TextIO | None = None) -> None:
    """Show ``facts`` and ask ``question`` (default: no); return only on a yes.

    Args:
        question: a yes/no question that names what will happen, e.g. "Download 2.1 GB?".
        facts: lines shown before it (sizes in human units, what changes, how to undo it).
        assume_yes: the command's ``--yes`` was given.
        flag: the command's yes flag, named in the refusal so scripts know what to add.
        environ: where to look for ``PENNELLO_ASSUME_YES`` (default: the process environment).
        stdin: the stream an answer would come from (default: ``sys.stdin``).

    Raises:
        ConsentError: the answer was no, or there is no terminal to ask on and no yes was given.
    """
    if assume_yes or assumed_yes(environ):
        return
    stdin = sys.stdin if stdin is None else stdin
    for line in facts:
        click.echo(f"  {line}", err=True)
    if stdin is None or not stdin.isatty():
        raise ConsentError(f"{question.rstrip('?')}: not done, because there is no terminal to ask on. "
                           f"Run again with {flag} (or set {ASSUME_YES_ENV}=1) to agree.")
    try:
        agreed = click.confirm(question, default=False, err=True)
    except click.Abort:  # Ctrl-C or end of input at the prompt
        agreed = False
    if not agreed:
        raise ConsentError(f"{question.rstrip('?')}: not done; nothing was changed.")
