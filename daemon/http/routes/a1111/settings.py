"""A1111's settings and control routes under ``/sdapi/v1``: ``options``, ``cmd-flags``, ``memory``,
``refresh-checkpoints``, ``interrupt`` and ``skip``.

A1111 has one set of options for the whole server; pennello keeps one per caller (the owner
``local``, or each paired device), so one device choosing a checkpoint never changes another's
pictures. ``POST /sdapi/v1/options`` with ``sd_model_checkpoint`` loads that model now and makes
it the caller's default for ``txt2img``; it is kept in ``<state dir>/a1111-options.json``. Other
options are accepted and echoed back by ``GET`` (Open WebUI posts back everything it read), but
change nothing else: pennello has no equivalent for them.

    $ curl -s localhost:8420/sdapi/v1/options | jq .sd_model_checkpoint
    "pennello-tiny [3f2a9c0d1e]"
    $ curl -s localhost:8420/sdapi/v1/options -H 'Content-Type: application/json' \\
        -d '{"sd_model_checkpoint": "pennello-tiny"}'
    null
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify

from pennello.errors import RequestError
from pennello.files import write_atomic

from ...context import current_config, current_engine, current_owner, owner_filter
from ...request import json_object
from ..native import visible_progress

bp = Blueprint("settings", __name__)

OPTIONS_FILE = "a1111-options.json"
MAX_OPTIONS = 256  # per caller, so the file stays small whatever a client posts
MAX_OPTIONS_BYTES = 64 * 1024
# What A1111 answers for options pennello has no equivalent of, so clients find the keys they read.
FIXED_OPTIONS: dict[str, Any] = {
    "samples_format": "png", "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1,
    "sd_checkpoints_limit": 1, "eta_noise_seed_delta": 0, "live_previews_enable": False,
    "show_progressbar": True, "enable_pnginfo": True, "save_images_add_number": True,
    "outdir_samples": ""}  # no forge_preset: SillyTavern takes a server that has one for Forge
_lock = threading.Lock()


def _file() -> Path:
    return current_engine().paths.state_dir / OPTIONS_FILE


def _all_saved() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_file().read_text("utf-8"))
    except (FileNotFoundError, ValueError):  # none yet, or unreadable: start over rather than fail
        return {}
    return data if isinstance(data, dict) else {}


def saved_options() -> dict[str, Any]:
    """The options the caller set, with ``sd_model_checkpoint`` as a model name."""
    return dict(_all_saved().get(current_owner(), {}))


def checkpoint_title(model: dict[str, Any]) -> str:
    """A model as A1111 names a checkpoint: ``name [first 10 hex digits of its sha256]``."""
    return f"{model['name']} [{model['digest'][:10]}]"


def model_of_title(title: Any, field: str) -> str:
    """The model a checkpoint ``title`` names (``name [hash]``, or a bare name)."""
    if not isinstance(title, str):
        raise RequestError(f"{field} must be a string", field=field)
    return title.split(" [", 1)[0].strip()


@bp.get("/options")
def get_options() -> Any:
    """The options A1111 clients read; ``sd_model_checkpoint`` is the caller's current model."""
    saved = saved_options()
    name = saved.get("sd_model_checkpoint") or current_config().engine.default_model
    model = next((m for m in current_engine().models() if m["name"] == name), None)
    computed = {"sd_model_checkpoint": checkpoint_title(model) if model else name,
                "sd_checkpoint_hash": model["digest"] if model else None}
    return jsonify({**FIXED_OPTIONS, **saved, **computed})


@bp.post("/options")
def set_options() -> Any:
    """Switch the caller's checkpoint (loading it now) and keep whatever else was sent."""
    body = json_object()
    if "sd_model_checkpoint" in body:
        name = model_of_title(body["sd_model_checkpoint"], "sd_model_checkpoint")
        current_engine().load(name)  # a 404 for a model that is not installed, before saving it
        body["sd_model_checkpoint"] = name
    with _lock:
        everyone = _all_saved()
        mine = {**everyone.get(current_owner(), {}), **body}
        mine.pop("sd_checkpoint_hash", None)
        if len(mine) > MAX_OPTIONS or len(json.dumps(mine)) > MAX_OPTIONS_BYTES:
            raise RequestError(f"at most {MAX_OPTIONS} options ({MAX_OPTIONS_BYTES} bytes) are kept per "
                               "caller", field=next(iter(body), None))
        everyone[current_owner()] = mine
        write_atomic(_file(), json.dumps(everyone, indent=1, sort_keys=True).encode("utf-8"), mode=0o600)
    return jsonify(None)


@bp.post("/refresh-checkpoints")
def refresh_checkpoints() -> Any:
    """Nothing to do: ``sd-models`` reads the verified store on every call."""
    return jsonify(None)


@bp.post("/interrupt")
def interrupt() -> Any:
    """Stop the caller's running job (A1111 has one job at a time; pennello stops the caller's)."""
    _cancel_running()
    return jsonify({})


@bp.post("/skip")
def skip() -> Any:
    """A1111 skips the picture being made; a pennello batch is one call, so the caller's job stops."""
    _cancel_running()
    return jsonify(None)


def _cancel_running() -> None:
    engine = current_engine()
    for job_id in visible_progress(engine)["jobs"]:  # only the caller's, unless it sees all
        engine.cancel(job_id, owner_filter())


@bp.get("/cmd-flags")
def cmd_flags() -> Any:
    """The few of A1111's command-line flags that mean something here."""
    server = current_config().server
    return jsonify({"api": True, "nowebui": False, "listen": server.lan, "port": server.port,
                    "no_download_sd_model": True, "skip_version_check": True, "ckpt": None,
                    "data_dir": None})


@bp.get("/memory")
def memory() -> Any:
    """System memory and, with a CUDA device, its memory, in A1111's shape (bytes)."""
    import torch

    cuda: dict[str, Any] = {"error": "no CUDA device"}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}
    return jsonify({"ram": _ram(), "cuda": cuda})


def _ram() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return {"error": "not known on this system"}
    return {"free": free, "used": total - free, "total": total}
