"""An AUTOMATIC1111-compatible API under ``/sdapi/v1``, for the many tools written against it.

    $ curl -s localhost:8420/sdapi/v1/txt2img -H 'Content-Type: application/json' \\
        -d '{"prompt": "a red kite", "steps": 8, "width": 64, "height": 64, "seed": -1, "batch_size": 2}'
    {"images": ["iVBORw0KGgo…", "iVBORw0KGgo…"], "parameters": {…}, "info": "{\\"seed\\": 1234, \\"all_seeds\\": […], …}"}

``txt2img`` makes ``batch_size * n_iter`` PNG pictures. ``seed`` -1 (or absent) picks a random
first seed; picture *i* uses seed + *i*, as in A1111. Fields left out take the model's defaults
(not A1111's 512x512/50 steps, which suit other models). The model is the default one unless
``override_settings.sd_model_checkpoint`` names another (a title from ``/sdapi/v1/sd-models``), or
the caller chose one with ``POST /sdapi/v1/options`` (:mod:`.settings`). ``sampler_name``
and ``scheduler`` pick a diffusers scheduler (:mod:`...engine.samplers`; old combined names such
as "DPM++ 2M Karras" too). As in A1111, fields it does not know are ignored (and logged once per
client: :mod:`.lenient`), and so are A1111 fields pennello has no equivalent for (face
restoration, tiling, subseeds, ``alwayson_scripts``…); ones that would change the result in ways
it cannot honour (``script_name``; ``enable_hr`` for img2img) are refused with a 400 naming the
field. txt2img's ``enable_hr`` is A1111's hires fix, done by :mod:`....tools.hires`. As in A1111,
pictures are kept in the gallery only with ``save_images`` true (its API's default is false);
the others are removed once the answer holds them.
The catalogue routes (samplers, upscalers, styles…) are :mod:`.lists`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import Blueprint, jsonify

from pennello import __version__
from pennello.errors import NotFoundError, PennelloError, RequestError

from ...context import current_engine, current_owner
from ...waiting import hold_while_waiting
from ....engine.jobs import GenerateRequest, Job, OutputImage
from ....engine.params import dialect_names, dialect_types, random_seed
from ....engine.outputs import a1111_parameters, extra_parameters
from ....engine.samplers import schedule_name, split_legacy
from ....tools.edit import DEFAULT_STRENGTH
from ....tools.hires import HiresFix, run_hires
from .extras import bp as extras_bp
from .lists import bp as lists_bp
from .lenient import a1111_body, note_once
from .settings import bp as settings_bp, checkpoint_title, model_of_title, saved_options
from ..native import visible_progress

bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")


class InterruptedJobError(PennelloError):
    """The caller's txt2img job was cancelled while it waited (409, as pennello's own API answers)."""

    http_status = 409
    kind = "cancelled"


bp.register_blueprint(settings_bp)
bp.register_blueprint(lists_bp)
bp.register_blueprint(extras_bp)

# A1111's hires fix (txt2img only): :mod:`....tools.hires`.
HIRES_FIELDS: dict[str, Any] = {
    "enable_hr": bool, "hr_scale": float, "hr_upscaler": str, "hr_second_pass_steps": int,
    "hr_resize_x": int, "hr_resize_y": int, "hr_sampler_name": str, "hr_scheduler": str,
    "hr_prompt": str, "hr_negative_prompt": str, "denoising_strength": float}
# name -> JSON type; the ones pennello uses: A1111's names for our parameters, then its own.
TXT2IMG_FIELDS: dict[str, Any] = {
    **dialect_types("a1111"), "n_iter": int, "override_settings": dict, "send_images": bool,
    "save_images": bool, **HIRES_FIELDS}
# A1111 fields without a pennello equivalent: accepted so A1111 clients work, then ignored.
IGNORED_FIELDS: dict[str, Any] = {
    "sampler_index": str, "styles": list, "subseed": int,
    "subseed_strength": float, "seed_resize_from_h": int, "seed_resize_from_w": int,
    "seed_enable_extras": bool, "restore_faces": bool, "tiling": bool, "do_not_save_samples": bool,
    "do_not_save_grid": bool, "eta": float, "s_min_uncond": float,
    "s_churn": float, "s_tmax": float, "s_tmin": float, "s_noise": float,
    "override_settings_restore_afterwards": bool, "refiner_checkpoint": str,
    "refiner_switch_at": float, "disable_extra_networks": bool, "comments": dict,
    "firstphase_width": int, "firstphase_height": int, "hr_checkpoint_name": str, "force_task_id": str,
    "infotext": str, "script_args": list, "alwayson_scripts": dict,
}
# Accepted only at their "off" value: anything else would be silently not done.
OFF_ONLY_FIELDS: dict[str, tuple[Any, Any]] = {"script_name": (str, None)}
_ALL_FIELDS = {**TXT2IMG_FIELDS, **IGNORED_FIELDS, **{k: t for k, (t, _) in OFF_ONLY_FIELDS.items()}}


# img2img: the txt2img fields plus these; A1111's inpainting fine-tuning knobs are accepted, ignored.
IMG2IMG_FIELDS: dict[str, Any] = {
    "init_images": list, "denoising_strength": float, "mask": str, "inpainting_mask_invert": int,
    "include_init_images": bool}
IMG2IMG_OFF_ONLY: dict[str, tuple[Any, Any]] = {**OFF_ONLY_FIELDS, "enable_hr": (bool, False)}
IMG2IMG_IGNORED_FIELDS: dict[str, Any] = {
    "resize_mode": int, "image_cfg_scale": float, "mask_blur": int, "mask_blur_x": int, "mask_blur_y": int,
    "inpainting_fill": int, "inpaint_full_res": bool, "inpaint_full_res_padding": int,
    "initial_noise_multiplier": float, "latent_mask": str, "mask_round": bool}
IMG2IMG_ALL = {**{k: t for k, t in _ALL_FIELDS.items() if k not in HIRES_FIELDS}, **IMG2IMG_IGNORED_FIELDS,
               **IMG2IMG_FIELDS, **{k: t for k, (t, _) in IMG2IMG_OFF_ONLY.items()}}


@bp.post("/img2img")
def img2img() -> Any:
    """A1111's img2img: the first of ``init_images`` redrawn at ``denoising_strength`` (default
    0.75), inpainted where ``mask`` is white (black with ``inpainting_mask_invert`` 1). More than
    one init image goes to models that take reference pictures (qwen-image-edit); SD-class
    models refuse them with 400."""
    from PIL import ImageOps

    from ....tools.edit import EditRequest, run_edit
    from ....pictures.uploads import decode_base64_upload

    body = _checked_body(IMG2IMG_ALL, IMG2IMG_OFF_ONLY, required=("init_images",))
    engine = current_engine()
    limits = engine.config.images
    init_images = body["init_images"]
    if not init_images:
        raise RequestError("send at least one init image", field="init_images")
    pictures = [decode_base64_upload(text, limits, "init_images") for text in init_images]
    origin: dict[str, Any] = {"from_upload": _b64_digest(init_images[0])}
    mask = None
    # Checked with or without a mask, so a wrong value is never silently ignored.
    if body.get("inpainting_mask_invert", 0) not in (0, 1):
        raise RequestError("inpainting_mask_invert must be 0 or 1", field="inpainting_mask_invert")
    if "mask" in body:
        mask = decode_base64_upload(body["mask"], limits, "mask").convert("L")
        if body.get("inpainting_mask_invert"):
            mask = ImageOps.invert(mask)
        origin["mask"] = _b64_digest(body["mask"])
    hold_while_waiting()
    with a1111_fields():
        result = run_edit(engine, EditRequest(
            **a1111_params(body), image=pictures[0], references=tuple(pictures[1:]), mask=mask,
            strength=body.get("denoising_strength", DEFAULT_STRENGTH), owner=current_owner(), origin=origin))
    images = _encoded(result.images, body)
    r = result.request
    records = [engine.outputs.read_record(image.id) for image in result.images]
    info = {"prompt": r.prompt, "all_prompts": [r.prompt] * r.n, "negative_prompt": r.negative_prompt,
            "seed": result.seeds[0], "all_seeds": result.seeds, "width": r.width, "height": r.height,
            "sampler_name": r.sampler, "scheduler": r.scheduler,
            "cfg_scale": r.guidance, "steps": r.steps, "denoising_strength": result.strength,
            "sd_model_name": r.model, "is_using_inpainting_conditioning": False,
            "extra_generation_params": extra_parameters(records[0]) if records else {},
            "infotexts": [a1111_parameters(record) for record in records],
            "version": f"pennello {__version__}"}
    _unless_saved(result.images, body)
    parameters = {key: value for key, value in body.items() if key not in ("init_images", "mask")}
    return jsonify({"images": images,
                    "parameters": {"seed": result.seeds[0], "steps": r.steps, "cfg_scale": r.guidance,
                                   "width": r.width, "height": r.height, **parameters},
                    "info": json.dumps(info)})


@contextmanager
def a1111_fields() -> Iterator[None]:
    """Requests checked inside name the field as A1111 clients know it (``cfg_scale``, not guidance)."""
    try:
        yield
    except RequestError as e:
        e.field = {**dialect_names("a1111"), "strength": "denoising_strength",
                   "image": "init_images"}.get(e.field or "", e.field)
        raise


def _encoded(images: list[OutputImage], body: dict[str, Any]) -> list[str]:
    """The pictures as base64, as A1111 answers them (none with ``send_images`` false)."""
    if not body.get("send_images", True):
        return []
    return [base64.b64encode(image.path.read_bytes()).decode("ascii") for image in images]


def _unless_saved(images: list[OutputImage], body: dict[str, Any]) -> None:
    """A1111 keeps a picture only with ``save_images`` true (its API's default is false): the
    others leave the gallery once the answer holds them."""
    if not body.get("save_images", False):
        for image in images:
            with contextlib.suppress(NotFoundError):  # already gone is what was asked
                current_engine().outputs.delete(image.id)


def _b64_digest(text: str) -> str:
    """sha256 of a (validated) base64 picture's bytes, for the result's record."""
    from ....pictures.uploads import digest

    return digest(base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text))


@bp.post("/txt2img")
def txt2img() -> Any:
    """A1111's txt2img; with ``enable_hr``, its hires fix (:mod:`....tools.hires`)."""
    body = _checked_body(_ALL_FIELDS, OFF_ONLY_FIELDS)
    engine = current_engine()
    request = GenerateRequest(**a1111_params(body), owner=current_owner())
    fix = _hires_fix(body) if body.get("enable_hr") else None
    with a1111_fields():
        if fix is not None:  # refused before the first pass, not after it
            fix.second_request(engine, engine.resolve(request))
        hold_while_waiting()
        job = engine.submit(request)
    _wait(job)
    images = list(job.images)
    if fix is not None:
        try:
            with a1111_fields():
                images = run_hires(engine, job, fix)
        finally:
            _unless_saved(list(job.images), {})  # the first pass is never kept, as in A1111 by default
    answer = {"images": _encoded(images, body), "parameters": {**_resolved(job, body), **body},
              "info": json.dumps(_info(job, body, images, fix))}
    _unless_saved(images, body)
    return jsonify(answer)


def _wait(job: Job) -> None:
    """Wait for the txt2img job; one that did not finish is an error for the client."""
    job.wait()
    if job.status == "cancelled":
        raise InterruptedJobError("txt2img was interrupted (POST /sdapi/v1/interrupt, or the job was "
                                  "cancelled) before any picture was finished")
    if job.status != "done":
        raise PennelloError(f"txt2img {job.status}: {job.error or 'no pictures were made'}")


def _hires_fix(body: dict[str, Any]) -> HiresFix:
    """The hires fix a txt2img body asks for, with A1111's defaults where it does not say."""
    hr = _sampler({name[3:]: body[name] for name in ("hr_sampler_name", "hr_scheduler") if name in body})
    return HiresFix(upscaler=body.get("hr_upscaler", "Latent"), scale=body.get("hr_scale", 2.0),
                    resize_x=body.get("hr_resize_x", 0), resize_y=body.get("hr_resize_y", 0),
                    steps=body.get("hr_second_pass_steps", 0),
                    strength=body.get("denoising_strength", DEFAULT_STRENGTH),
                    prompt=body.get("hr_prompt", ""), negative_prompt=body.get("hr_negative_prompt", ""),
                    sampler=hr["sampler"], scheduler=hr["scheduler"])


def _checked_body(fields: dict[str, Any], off_only: dict[str, tuple[Any, Any]],
                  required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A txt2img or img2img body, leniently parsed; features pennello cannot honour refused."""
    body = a1111_body(fields, required)
    for name, (_, off) in off_only.items():
        if body.get(name, off) not in (off, None):
            raise RequestError(f"{name} is not supported by pennello; leave it out", field=name)
    if body.get("alwayson_scripts"):
        note_once("alwayson_scripts", f"scripts {', '.join(map(str, body['alwayson_scripts']))} are not "
                                      "run by pennello; ignored")
    return body


def a1111_params(body: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters of a txt2img or img2img body, in pennello's names: its own
    names for them, plus what A1111 spells differently (a random first seed is -1; pictures
    are ``batch_size * n_iter``; the model is a checkpoint title; pictures are PNG)."""
    params = {name: body[alias] for name, alias in dialect_names("a1111").items() if alias in body}
    params["n"] = _positive(body, "batch_size") * _positive(body, "n_iter")
    seed = body.get("seed", -1)
    params["seed"] = random_seed() if seed == -1 else seed
    return {**params, **_sampler(body), "prompt": body.get("prompt", ""), "format": "png",
            "model": _checkpoint(body.get("override_settings", {}))}


def _sampler(body: dict[str, Any]) -> dict[str, Any]:
    """``sampler_name`` and ``scheduler`` as pennello's names for them, whatever the case or
    alias; an unknown name is passed on for the parameter check to refuse, naming the known ones."""
    sampler, schedule = split_legacy(body["sampler_name"]) if "sampler_name" in body else (None, None)
    if "scheduler" in body:
        schedule = schedule_name(body["scheduler"]) or body["scheduler"]
    return {"sampler": sampler, "scheduler": schedule}


def _positive(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 1)
    if value < 1:
        raise RequestError(f"{name} must be at least 1", field=name)
    return value


def _checkpoint(override_settings: dict[str, Any]) -> str | None:
    """The model named by ``sd_model_checkpoint`` (a title ``name [hash]`` or a bare name), else
    the one the caller chose with ``POST /sdapi/v1/options``, else None: the default."""
    title = override_settings.get("sd_model_checkpoint")
    if title is None:
        return saved_options().get("sd_model_checkpoint")
    return model_of_title(title, "override_settings")


def _resolved(job: Job, body: dict[str, Any]) -> dict[str, Any]:
    r = job.request
    return {"prompt": r.prompt, "negative_prompt": r.negative_prompt, "seed": job.seeds[0],
            "steps": r.steps, "cfg_scale": r.guidance, "width": r.width, "height": r.height,
            "batch_size": body.get("batch_size", 1), "n_iter": body.get("n_iter", 1),
            "sampler_name": r.sampler, "scheduler": r.scheduler}


def _info(job: Job, body: dict[str, Any], images: list[OutputImage], fix: HiresFix | None) -> dict[str, Any]:
    """What A1111 puts in ``info`` (``Processed.js()``), for the fields pennello has; the size is
    the first pass's, and the hires fix is in ``extra_generation_params``, as A1111 has them."""
    r, engine = job.request, current_engine()
    digest = next((m["digest"] for m in engine.models() if m["name"] == r.model), "")
    started = datetime.fromtimestamp(job.started or job.created)
    records = [engine.outputs.read_record(image.id) for image in images]
    return {
        "prompt": r.prompt, "all_prompts": [r.prompt] * r.n,
        "negative_prompt": r.negative_prompt, "all_negative_prompts": [r.negative_prompt] * r.n,
        "seed": job.seeds[0], "all_seeds": list(job.seeds), "subseed": -1, "all_subseeds": [-1] * r.n,
        "subseed_strength": 0, "width": r.width, "height": r.height,
        "sampler_name": r.sampler, "scheduler": r.scheduler, "cfg_scale": r.guidance, "steps": r.steps,
        "batch_size": body.get("batch_size", 1), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": r.model, "sd_model_hash": digest[:10], "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": fix.strength if fix else None,
        "extra_generation_params": extra_parameters(records[0]) if records else {},
        "index_of_first_image": 0, "infotexts": [a1111_parameters(record) for record in records],
        "styles": body.get("styles") or [], "job_timestamp": f"{started:%Y%m%d%H%M%S}",
        "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": f"pennello {__version__}",
    }


@bp.get("/sd-models")
def sd_models() -> Any:
    return jsonify([{"title": checkpoint_title(m), "model_name": m["name"],
                     "hash": m["digest"][:10], "sha256": m["digest"], "filename": m["name"],
                     "config": None} for m in current_engine().models()])


@bp.get("/progress")
def progress() -> Any:
    """A1111's progress shape for the batch on the device; ``current_image`` is a PNG of the
    picture so far (:mod:`....engine.preview`) when it is the caller's, null when nothing runs or
    with ``skip_current_image`` true (other values count as false, as before: never a 4xx)."""
    from flask import request

    engine = current_engine()
    now = visible_progress(engine)  # a device sees only its own jobs in it
    running = now["state"] == "running"
    started = _started(engine, now["jobs"])
    state = {"skipped": False, "interrupted": False, "stopping_generation": False,
             "job": "txt2img" if running else "", "job_count": 1 if running else 0,
             "job_timestamp": f"{started:%Y%m%d%H%M%S}" if started else "0", "job_no": 0,
             "sampling_step": now["step"], "sampling_steps": now["total"]}
    return jsonify({"progress": now["fraction"], "eta_relative": now["eta_s"], "state": state,
                    "current_image": engine.runner.preview.png(now["jobs"]) if running and request.args.get(
                        "skip_current_image", "").lower() not in ("true", "1", "yes", "on") else None,
                    "textinfo": f"{now['queue_depth']} queued" if running else None})


def _started(engine: Any, job_ids: list[str]) -> datetime | None:
    job = engine.get_job(job_ids[0]) if job_ids else None
    return datetime.fromtimestamp(job.started) if job and job.started else None
