"""``GET /api/offline``: whether no-network mode is on, what the daemon may reach, what it refused.

    $ curl -s localhost:8420/api/offline
    {"mode": "on", "lan": false, "allowed": ["loopback and this machine's own addresses", …],
     "refused": 1, "refused_by_destination": {"huggingface.co": 1},
     "attempts": [{"event": "socket.getaddrinfo", "destination": "huggingface.co", "stack": …}], …}

Only the owner may read it: the attempts carry stacks. ``/api/health`` shows everyone
the summary (mode, what is allowed, how many attempts were refused).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from ..context import current_config, current_guard
from ...net.offline import off_status

bp = Blueprint("offline", __name__, url_prefix="/api")


def _off() -> dict[str, Any]:
    if not current_config().offline.enabled:
        return off_status("offline.enabled is false (`pennello offline on` and a restart turn it on)")
    return off_status("this process does not enforce it (only `pennello serve` does)")


def offline_summary() -> dict[str, Any]:
    """For ``/api/health``: mode, what is allowed, how many attempts were refused."""
    guard = current_guard()
    return guard.summary() if guard is not None else _off()


@bp.get("/offline")
def offline_status() -> Any:
    guard = current_guard()
    return jsonify(guard.status() if guard is not None else _off())
