"""Logging setup: readable lines on stderr, and a rotating file in the log directory.

``PENNELLO_DEBUG=1`` (or ``--debug``) turns on debug lines, which include per-stage timings
(text encode, denoise, decode, PNG encode, HTTP) so performance claims can be checked.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _drop_torchvision_fallback(record: logging.LogRecord) -> bool:
    # Pipelines name CLIP image processors we never call (no safety checker); transformers then
    # warns at every start that torchvision is missing, which reads like a broken install.
    return "requires torchvision (not installed)" not in record.getMessage()


class _LogFile(logging.handlers.RotatingFileHandler):
    """The log file, which a full disk must not turn into a traceback on every line."""

    disk_full = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.disk_full:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            # Say it once on stderr (the console handler still works) and stop writing the file.
            self.disk_full = True
            sys.stderr.write(f"warning: the disk is full; no longer writing {self.baseFilename}\n")
            return
        super().handleError(record)


def setup_logging(debug: bool = False, log_dir: Path | None = None) -> None:
    """Configure the root logger once; calling again only changes the level."""
    debug = debug or os.environ.get("PENNELLO_DEBUG", "") not in ("", "0")
    level = logging.DEBUG if debug else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    if getattr(root, "_pennello_configured", False):
        return
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(console)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFile(
            log_dir / "pennello.log", maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    # Libraries that chat at INFO would drown our lines.
    for noisy in ("urllib3", "httpx", "huggingface_hub", "diffusers", "transformers", "waitress.queue"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("transformers.utils.import_utils").addFilter(_drop_torchvision_fallback)
    root._pennello_configured = True  # type: ignore[attr-defined]
