"""Who may join the cluster: nodes paired with the front, running the front's pennello and models.

The Ray cluster token is a secret every node needs and nobody should copy by hand. The owner
runs ``pennello pair --node`` on the front, which shows a one-time code; the new box runs
``pennello node --join HEAD --front URL --pair CODE``, which sends the code, its pennello version
and the model versions it holds to the front (``POST /api/cluster/join``). The front checks
them (:func:`check_member`), trades the code for a *node* token (listed by ``pennello tokens
list``, revocable like a device's) and answers with the cluster token. The node keeps both,
0600 in its state directory, and asks the front again on every later join: once the owner
revoked its token, that join fails, and the node forgets the cluster token it had.

A node joined with a hand-copied token (``--token-file``) never knocks at that door, so the front
checks what every node publishes to Ray as well (its version label and model resources,
:func:`refusals`): it places no replica on a node of another pennello version, and names every
refused node in its log and in ``pennello ps``.

    >>> check_member({"version": "1.2", "models": ["pennello:tiny@1:ab"]},
    ...              {"version": "1.3", "models": []})
    Traceback (most recent call last):
    ...
    pennello.errors.ConflictError: this node runs pennello 1.3 and the front 1.2: install pennello 1.2 on the node (every node must run the front's version)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pennello.errors import AuthError, ConfigError, ConflictError, RequestError
from pennello.files import write_atomic
from pennello.paths import Paths

from .nodes import RESOURCE_PREFIX, VERSION_LABEL, model_resource, version_label
from .ray_env import TOKEN_FILE

CREDENTIAL_FILE = "cluster-pairing.json"  # state dir of a paired node: the front, its node token


def offer(store: Any) -> dict[str, Any]:
    """What a box tells about itself: its pennello version and one resource per installed model
    (:func:`.nodes.model_resource`: name, version and manifest digest)."""
    models = [model_resource(i.name, i.version, i.digest) for i in store.installed()]
    return {"version": version_label(), "models": sorted(models)}


def check_member(front: dict[str, Any], node: dict[str, Any]) -> None:
    """Refuse a node whose pennello version differs from the front's, or that holds another
    version or catalog entry (manifest digest) of a model the front has; models only one side
    has are fine (a node offers what it holds).

    Raises:
        RequestError: ``node["models"]`` is not a list of strings.
        ConflictError: naming both sides' versions.
    """
    models = node["models"]
    if not all(isinstance(model, str) for model in models):  # malformed, not a conflict
        raise RequestError("models must be a list of model resources (pennello:NAME@VERSION:DIGEST)",
                           field="models")
    if node["version"] != front["version"]:
        raise ConflictError(f"this node runs pennello {node['version']} and the front {front['version']}: "
                            f"install pennello {front['version']} on the node (every node must run the "
                            "front's version)", field="version")
    ours = {_name(model): model for model in front["models"]}
    for model in models:
        if _name(model) in ours and ours[_name(model)] != model:
            raise ConflictError(f"this node holds {model} and the front {ours[_name(model)]} (version and "
                                "catalog digest): install the front's version of the model on the node, "
                                "from the same catalog", field="models")


def published(node: dict[str, Any]) -> dict[str, Any]:
    """What a Ray node (an entry of ``ray.nodes()``) publishes about itself, in :func:`offer`'s
    shape; ``version`` is None on a node not started by ``pennello node``."""
    return {"version": (node.get("Labels") or {}).get(VERSION_LABEL),
            "models": sorted(r for r in node.get("Resources") or {} if r.startswith(RESOURCE_PREFIX))}


def refusals(front: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, str]:
    """The live ``nodes`` (``ray.nodes()``) that :func:`check_member` refuses against the
    ``front``'s :func:`offer`, by address, each with the reason."""
    refused = {}
    for node in nodes:
        if not node.get("Alive"):
            continue
        offered = published(node)
        try:
            if offered["version"] is None:
                raise ConflictError("this node publishes no pennello version: start it with `pennello node`")
            check_member(front, offered)
        except ConflictError as e:
            refused[node["NodeManagerAddress"]] = str(e)
    return refused


def _name(resource: str) -> str:
    return resource.partition("@")[0]


def join_through_front(paths: Paths, store: Any, name: str, front: str | None, code: str | None,
                       fingerprint: str | None) -> Path:
    """Get the cluster token from the front: with a pairing ``code`` the first time, with the
    node token kept from then on. Returns the token file (0600, ``state_dir/cluster-token``).

    Raises:
        ConfigError: no code and this node was never paired.
        AuthError: the front refused the code, or the node's token was revoked (the cluster
            token kept here is deleted then).
        ConflictError: another pennello version or model catalog than the front's.
        DaemonError: the front cannot be reached.
    """
    from pennello.client import Client

    kept = _credential(paths)
    if code is None and kept is None:
        raise ConfigError("this node is not paired with the cluster's front: run `pennello pair --node` "
                          "on the front, then here `pennello node --join HEAD --front URL --pair CODE` "
                          "(or give --token-file)")
    front = front or kept["front"]  # type: ignore[index]
    fingerprint = fingerprint or (kept or {}).get("fingerprint")
    # No token with a code: a node on the front's own machine must not send the owner's.
    client = Client(front, token="" if code else kept["token"], fingerprint=fingerprint)  # type: ignore[index]
    body = {**offer(store), "name": name, **({"code": code} if code else {})}
    try:
        answer = client.call("POST", "/api/cluster/join", json=body)
    except AuthError as e:
        if code is None:  # revoked: this node must not keep a way in
            (paths.state_dir / TOKEN_FILE).unlink(missing_ok=True)
        raise AuthError(f"the front at {front} refused this node: {e}") from None
    token_file = paths.state_dir / TOKEN_FILE
    write_atomic(token_file, (answer["cluster_token"] + "\n").encode(), mode=0o600)
    if answer.get("node_token"):
        credential = {"front": front, "id": answer["id"], "token": answer["node_token"], "fingerprint": fingerprint}
        write_atomic(paths.state_dir / CREDENTIAL_FILE, json.dumps(credential).encode(), mode=0o600)
    return token_file


def _credential(paths: Paths) -> dict[str, Any] | None:
    try:
        return json.loads((paths.state_dir / CREDENTIAL_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{paths.state_dir / CREDENTIAL_FILE} is unreadable ({e}); delete it and "
                          "pair this node again") from None
