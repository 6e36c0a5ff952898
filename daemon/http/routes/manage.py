"""Managing the daemon itself over HTTP: ``POST /api/shutdown`` (owner only), and the report
``GET /api/ps`` gives (:func:`machine_report`).

``pennello stop`` asks here first, so a daemon stops the same way whoever started it (a terminal,
the tray, systemd) and wherever the caller runs: the answer comes back at once, then the daemon
shuts down as on SIGTERM (jobs that have begun finish and are saved, queued ones are cancelled,
``daemon.json`` is removed). The signal goes to the pid the serving process published in
``daemon.json``: with isolation this route runs in the model worker, and it is the server
process, not the worker, that must stop (it then stops the worker in order).

    $ curl -s -X POST localhost:8420/api/shutdown
    {"stopping": true, "pid": 4242}
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import torch
from flask import Blueprint, jsonify

from pennello.errors import NotFoundError
from pennello.runtime import read_daemon_info

from ...engine.engine import Engine
from ..context import current_paths

log = logging.getLogger(__name__)

bp = Blueprint("manage", __name__, url_prefix="/api")


@bp.post("/shutdown")
def shutdown() -> Any:
    info = read_daemon_info(current_paths())
    if info is None or not isinstance(info.get("pid"), int):
        # An app served by a test or a benchmark has no serving process to stop: nothing to find,
        # a 4xx rather than a server error (the app itself is fine).
        raise NotFoundError("this app is not a running daemon (no daemon.json); stop its process instead")
    pid = info["pid"]
    log.info("shutdown asked over the API: signalling the daemon (pid %d)", pid)
    os.kill(pid, signal.SIGTERM)  # the serve loop sees it within 0.2 s, after this answer is sent
    return jsonify({"stopping": True, "pid": pid}), 202


def machine_report(engine: Engine) -> dict[str, Any]:
    """What ``GET /api/ps`` (and ``pennello ps``) shows: the loaded models with their memory and
    keep-alive left, the device and its backend, memory in use, and how busy the queue is."""
    health = engine.health()
    models = engine.ps()
    cuda = engine.device == "cuda"
    return {"models": models, "device": engine.device,
            "backend": {"torch": torch.__version__, "cuda": torch.version.cuda if cuda else None},
            "memory": {"weights_bytes": sum(m["param_bytes"] for m in models),
                       "cuda_allocated_bytes": torch.cuda.memory_allocated() if cuda else None,
                       "cuda_reserved_bytes": torch.cuda.memory_reserved() if cuda else None},
            "queue_depth": health["queue_depth"], "running": health["running"]}
