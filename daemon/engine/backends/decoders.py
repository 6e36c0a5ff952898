"""Tiny decoders: TAESD-class VAEs that turn latents into pixels in a fraction of the full VAE's time.

On a CPU the full VAE decoder of SD-class models costs more than a 1-step denoise (measured in
``bench/bench_cpu.py``: two thirds of a 512² SD-Turbo picture). ``AutoencoderTiny`` decoders
(TAESD for SD 1/2, TAESDXL for SDXL, TAEF1 for FLUX.1; madebyollin's, MIT) are installed from the
signed catalog like any model, in the ``tiny-decoder`` family, and a request picks one with
``decoder: tiny``; left out, the CPU profile takes the tiny one for 1-4-step requests when it is
installed, since fine detail matters little next to a 5x faster picture (docs/performance.md).
The CPU profile's progress previews use it too, whatever decodes the final picture.

The tiny decoder is loaded once per model it serves (and converted to OpenVINO where that model
runs on it: at 512² it took 2.9 s in torch fp32 here, 0.69 s on OpenVINO) and swapped in for one
pipeline call:

    >>> with decoder_applied(loaded, request, store, paths.cache_dir):  # doctest: +SKIP
    ...     loaded.pipe(...)
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from pennello.errors import ModelNotFoundError, RequestError, StoreError

from ..families import ModelFamily, register_family

log = logging.getLogger(__name__)

FAMILY = "tiny-decoder"
# The tiny decoder trained for each family's latent space, by its catalog name.
TINY_DECODERS: dict[str, str] = {"sd": "taesd", "sdxl": "taesdxl", "flux": "taef1"}
DEFAULT_MAX_STEPS = 4  # the CPU profile's default covers distilled 1-4-step models (SD-Turbo, SDXL-Turbo)
# The full VAE the tiny decoders were distilled against (SD, SDXL and FLUX.1 share its widths): a
# model with a VAE of its own (the embedded one) has other latents, so it keeps its decoder.
STANDARD_VAE_WIDTHS = (128, 256, 512, 512)

register_family(ModelFamily(FAMILY, frozenset({"AutoencoderTiny"}), purpose="decode"))


def tiny_decoder_name(family: str) -> str:
    """The catalog name of ``family``'s tiny decoder.

    Raises:
        RequestError: the family has none (field ``decoder``).
    """
    try:
        return TINY_DECODERS[family]
    except KeyError:
        raise RequestError(f"decoder tiny is not available for {family} models; tiny decoders exist for "
                           f"{', '.join(sorted(TINY_DECODERS))} (use decoder: full)", field="decoder") from None


def check_tiny_decoder(family: str, lookup: Any) -> None:
    """Raises RequestError naming ``decoder`` when ``family`` has no tiny decoder or it is not installed."""
    name = tiny_decoder_name(family)
    try:
        lookup(name)
    except ModelNotFoundError:
        raise RequestError(f"decoder tiny needs the {name} model, which is not installed: pennello install "
                           f"{name}", field="decoder") from None


def uses_tiny(loaded: Any, request: Any, store: Any) -> bool:
    """Whether this call decodes with the tiny decoder: the request says, else the CPU profile does
    for requests of at most :data:`DEFAULT_MAX_STEPS` steps (:func:`tiny_fits`)."""
    if request.decoder is not None:
        return request.decoder == "tiny"
    return (request.steps or 0) <= DEFAULT_MAX_STEPS and tiny_fits(loaded, store)


def tiny_fits(loaded: Any, store: Any) -> bool:
    """Whether the CPU profile takes the tiny decoder for ``loaded`` by default: a model with the
    standard VAE, whose family's tiny decoder is installed."""
    if loaded.plan is None or loaded.plan.profile != "cpu":
        return False
    if tuple(getattr(loaded.pipe.vae.config, "block_out_channels", ())) != STANDARD_VAE_WIDTHS:
        return False
    try:
        store.get(TINY_DECODERS.get(loaded.family.name, ""))
    except ModelNotFoundError:
        return False
    return True


def preview_decoder(loaded: Any, store: Any, cache: Path) -> Any | None:
    """The decoder for progress previews of ``loaded``'s next call: the tiny one where
    :func:`tiny_fits` (on a CPU a full decode per polled step would cost more than the steps
    themselves, whatever decodes the final picture), else None: the pipeline's own VAE."""
    return _tiny_decoder(loaded, store, cache) if tiny_fits(loaded, store) else None


def _tiny_decoder(loaded: Any, store: Any, cache: Path) -> Any:
    """The loaded model's tiny decoder, loaded from the verified store on first use; on OpenVINO
    too where the model is (converted once, cached in ``cache`` as the model's own parts are)."""
    tiny = loaded.derived.get(FAMILY)
    if tiny is None:
        import diffusers

        installed = store.get(tiny_decoder_name(loaded.family.name))
        try:
            tiny = diffusers.AutoencoderTiny.from_pretrained(installed.path, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise StoreError(f"model files in {installed.path} do not load as AutoencoderTiny: {e}") from e
        tiny = tiny.to(loaded.pipe.device, loaded.pipe.dtype).eval()
        if loaded.plan is not None and loaded.plan.backend == "openvino":
            from . import openvino_backend

            try:
                openvino_backend.convert_decoder(tiny, installed.name, installed.digest, cache,
                                                 weights=loaded.plan.openvino_weights or "fp32")
            except Exception as e:  # noqa: BLE001 — any converter failure: torch decodes, slower
                log.warning("OpenVINO could not convert %s, torch decodes with it: %s: %s", installed.name,
                            type(e).__name__, e)
        loaded.derived[FAMILY] = tiny
    return tiny


@contextlib.contextmanager
def decoder_applied(loaded: Any, request: Any, store: Any, cache: Path) -> Iterator[str]:
    """The pipeline of ``loaded`` with the decoder ``request`` asks for, for one call; yields which.
    ``cache`` is where OpenVINO keeps converted models (``Paths.cache_dir``)."""
    if not uses_tiny(loaded, request, store):
        yield "full"
        return
    pipe = loaded.pipe
    full = pipe.vae
    pipe.vae = _tiny_decoder(loaded, store, cache)
    try:
        yield "tiny"
    finally:
        pipe.vae = full
