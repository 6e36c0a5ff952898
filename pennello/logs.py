"""Logging setup: readable lines on stderr, and a rotating file in the log directory.

``PENNELLO_DEBUG=1`` (or ``--debug``) turns on debug lines, which include per-stage timings
(text encode, denoise, decode, PNG encode, HTTP) so performance claims can be checked.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _drop_torchvision_fallback(record: logging.LogRecord) -> bool:
    # Pipelines name CLIP image processors we never call (no safety checker); transformers then
    # warns at every start that torchvision is missing, which reads like a broken install.
    return "requires torchvision (not installed)" not in record.getMessage()


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
        file_handler = logging.handlers.RotatingFileHandler(
            log_dir / "pennello.log", maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    # Libraries that chat at INFO would drown our lines.
    for noisy in ("urllib3", "httpx", "huggingface_hub", "diffusers", "transformers", "waitress.queue"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("transformers.utils.import_utils").addFilter(_drop_torchvision_fallback)
    root._pennello_configured = True  # type: ignore[attr-defined]
