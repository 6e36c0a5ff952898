"""``POST /api/cluster/join``: a node of the owner's cluster gets the cluster token from the front.

A node pairs like a device, with a one-time code the owner makes on the front (``pennello pair
--node``), but its token may do one thing only: fetch the Ray cluster token here, again on every
join, so revoking it (``pennello tokens revoke ID``) makes that node's next join fail. A node
running another pennello version, or holding another version of a model than the front, is
refused with both versions named (:func:`pennello.daemon.cluster.membership.check_member`).

    $ curl -s https://192.168.1.20:8420/api/cluster/join -H 'Content-Type: application/json' \\
        -d '{"code": "K7M2QX9P", "name": "node 192.168.1.21", "version": "0.4.0", "models": []}'
    {"cluster_token": "…", "node_token": "…", "id": "3f9a1c2b", "name": "node 192.168.1.21"}
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from pennello.errors import AuthError, ForbiddenError, NotFoundError

from ...cluster.membership import check_member, offer
from ...cluster.ray_env import TOKEN_FILE, read_token
from ..context import current_engine, current_paths
from ..request import json_body
from .auth import current_caller, current_pairing

bp = Blueprint("cluster", __name__, url_prefix="/api/cluster")


@bp.post("/join")
def join() -> Any:
    """The cluster token, for a node with a pairing code or its node token (no other token)."""
    body = json_body({"code": str, "name": str, "version": str, "models": list},
                     required=("name", "version", "models"))
    token_file = current_paths().state_dir / TOKEN_FILE
    if not token_file.is_file():
        raise NotFoundError("this pennello holds no cluster token, so no node can join through it: run "
                            "`pennello node --head` on this box first (docs/cluster.md)")
    read_token(token_file)  # a damaged token file is the owner's to fix, not the node's
    check_member(offer(current_engine().store), body)  # before the code is used up
    caller = current_caller()
    if "code" in body:
        node_token, record = current_pairing().redeem(body["code"], body["name"],
                                                      client=request.remote_addr or "?", scope="node")
        return jsonify({"cluster_token": token_file.read_text().strip(), "node_token": node_token,
                        "id": record.id, "name": record.name}), 201
    if caller.scope == "device":
        raise ForbiddenError("a device's token cannot join the cluster; pair the node with "
                             "`pennello pair --node` on the front")
    if caller.scope == "anonymous":
        raise AuthError("this node's pairing was revoked or is unknown on the front: run `pennello pair "
                        "--node` there, then `pennello node --join HEAD --front URL --pair CODE`"
                        if caller.bad_token else "a node joins with the code `pennello pair --node` shows "
                        "on the front (--pair CODE)", field="code")
    device = caller.device  # None for the owner on this machine
    return jsonify({"cluster_token": token_file.read_text().strip(), "node_token": None,
                    "id": device.id if device else None, "name": device.name if device else body["name"]})
