"""The AUTOMATIC1111-compatible API under ``/sdapi/v1``: :mod:`.generate` (txt2img, img2img, the
blueprint the others hang on), :mod:`.settings` (options per caller, progress, interrupt, skip),
:mod:`.lists` (samplers, schedulers, upscalers, styles, png-info), :mod:`.extras` (the Extras
upscaling) and :mod:`.lenient` (A1111's leniency with unknown fields and 0/1 flags)."""

from .generate import IGNORED_FIELDS, IMG2IMG_ALL, IMG2IMG_IGNORED_FIELDS, OFF_ONLY_FIELDS, TXT2IMG_FIELDS, bp

__all__ = ["IGNORED_FIELDS", "IMG2IMG_ALL", "IMG2IMG_IGNORED_FIELDS", "OFF_ONLY_FIELDS", "TXT2IMG_FIELDS", "bp"]
