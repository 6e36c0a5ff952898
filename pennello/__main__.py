"""``python -m pennello`` is the same as the ``pennello`` command."""

from pennello.cli import main

main()
