"""A preview of the picture being drawn, for A1111's ``GET /sdapi/v1/progress`` ``current_image``.

The device thread only keeps a copy of the first picture's latents after each denoising step
(:meth:`Preview.keep`: one small tensor copy, no decoding), so a batch nobody watches pays
nothing more. A client that asks for the preview has those latents decoded on its request
thread by the decoder the runner named: the model's own VAE, or on a CPU its tiny decoder
(``backends.preview_decoder``); once per step however many clients poll (:meth:`Preview.png`);
a client polling faster than steps finish gets the same picture again.

Latents a VAE cannot decode as they are (FLUX packs them into a sequence), and a VAE offloaded to
the CPU by a small-GPU profile, give no preview: the progress answer then carries ``null``, as
A1111 does with live previews turned off.

    >>> Preview().png(visible=[]) is None  # nothing drawn yet
    True
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)


class Preview:
    """The latest latents of the call on the device; thread-safe."""

    def __init__(self) -> None:
        self._latest: tuple[str, Any, Any] | None = None  # (its job's id, decoder, first picture's latents)
        self._decoded: tuple[Any, str | None] = (None, None)  # (those latents, their PNG as base64)
        self._lock = threading.Lock()  # one decode at a time

    def keep(self, job_id: str, vae: Any, latents: Any) -> None:
        """After a denoising step (device thread): keep the first picture's latents, whose they are
        and the VAE to decode them with."""
        if getattr(latents, "ndim", 0) == 4:  # (batch, channels, h, w): what a VAE decodes
            self._latest = (job_id, vae, latents[:1].detach().clone())

    def clear(self) -> None:
        """The call ended: nothing to preview until the next one's first step."""
        self._latest = None
        self._decoded = (None, None)

    def png(self, visible: Collection[str]) -> str | None:
        """The picture so far as a base64 PNG, if its job is one of ``visible`` (a caller never sees
        another's picture); None before the first step or when it cannot be decoded."""
        latest = self._latest
        if latest is None or latest[0] not in visible:
            return None
        _, vae, latents = latest
        with self._lock:
            if self._decoded[0] is not latents:
                self._decoded = (latents, _decode(vae, latents))
            return self._decoded[1]


def _decode(vae: Any, latents: Any) -> str | None:
    import torch

    # An offloaded VAE (small-GPU profiles) moves its weights in hooks: not from a second thread.
    if vae is None or getattr(vae, "_hf_hook", None) is not None:
        return None
    try:
        with torch.inference_mode():
            scaled = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0)
            pixels = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    except (RuntimeError, ValueError) as e:  # e.g. latents of a shape this VAE does not take
        log.debug("no preview: %s", e)
        return None
    from PIL import Image

    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
