"""Post-steps: what happens to every picture between the pipeline and the disk.

A post-step takes the engine, the picture and the request's options and returns the (possibly
changed) picture plus a note for the picture's record, or None when it had nothing to do. Steps
run in registration order; built-ins are registered exactly as an extension's would be:

    >>> def stamp(engine, image, options):
    ...     return image, {"checked": True} if options.get("stamp") else None
    >>> register_post_step("stamp", stamp)  # doctest: +SKIP

Built-ins: ``enhance`` (when the request asks for it, see :mod:`.enhance`) and ``copyright``
(when ``[copyright] reference_dir`` is set, see :mod:`.copyright`). A step's note is stored under
its name: ``record["enhance"]``, ``record["copyright"]``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from PIL import Image

log = logging.getLogger(__name__)

PostStep = Callable[[Any, Image.Image, dict[str, Any]], tuple[Image.Image, dict[str, Any] | None]]

_STEPS: dict[str, PostStep] = {}


def register_post_step(name: str, step: PostStep) -> PostStep:
    """Add (or replace) a step; returns it so this can be used at import time."""
    _STEPS[name] = step
    return step


def run_post_steps(engine: Any, image: Image.Image,
                   options: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """Apply every step; returns the final picture and ``{step name: note}`` for those that noted."""
    notes: dict[str, Any] = {}
    for name, step in list(_STEPS.items()):
        image, note = step(engine, image, options)
        if note is not None:
            notes[name] = note
    return image, notes


def _enhance_step(engine: Any, image: Image.Image, options: dict[str, Any]) -> tuple[Image.Image, Any]:
    if not options.get("enhance"):
        return image, None
    from ..pictures.enhance import enhance

    result = enhance(image)
    return result.image, result.metrics()


def _copyright_step(engine: Any, image: Image.Image, options: dict[str, Any]) -> tuple[Image.Image, Any]:
    if not engine.config.copyright.reference_dir:
        return image, None
    from ..pictures.copyright import check_image

    try:
        return image, check_image(engine, image)
    except Exception as e:  # a broken check must never cost the picture: flag that it was not checked
        log.exception("copyright check failed")
        return image, {"flagged": False, "matches": [], "error": f"the check failed: {e}"}


register_post_step("enhance", _enhance_step)
register_post_step("copyright", _copyright_step)
