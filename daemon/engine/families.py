"""Model families: how a manifest's ``pipeline.family`` is loaded and which sizes it accepts.

A family names the diffusers pipeline classes it allows (a manifest cannot make the daemon
instantiate an arbitrary class), its size limits, the attribute holding its denoiser (used for
per-stage timing), the dtype it prefers on a GPU and the call arguments a manifest has no field
for (FLUX.1-schnell's 256-token T5 prompts). Its ``purpose`` says what its own pipeline
is for: text-to-image (SD-class: these also edit, through derived img2img/inpaint pipelines),
editing pictures by instruction (Qwen-Image-Edit, with how many reference pictures each class
takes) or upscaling; a request for anything else is a 400 that names the right route. Built-ins
are registered exactly the way an extension would register its own:

    >>> from pennello.daemon.engine.families import ModelFamily, register_family, get_family
    >>> _ = register_family(ModelFamily("sd-example", frozenset({"StableDiffusionPipeline"}),
    ...                                 min_size=64, max_size=1024))
    >>> get_family("sd-example").check_size(512, 768)
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pennello.errors import ModelNotFoundError, RequestError, StoreError

log = logging.getLogger(__name__)

GpuDtype = Literal["float16", "bfloat16"]
# What a family's own pipeline does: draws from text, edits given pictures, or enlarges one.
Purpose = Literal["generate", "edit", "upscale", "decode"]
# The route that serves each purpose, for errors that send a client to the right one.
PURPOSE_ROUTES: dict[str, str] = {"generate": "POST /api/generate (or /v1/images/generations)",
                                  "edit": "POST /api/edit (or /v1/images/edits)",
                                  "upscale": "POST /api/upscale with method=ai",
                                  "decode": "the decoder field of POST /api/generate (decoder: tiny)"}


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model, e.g. SD-class or FLUX-class."""

    name: str
    classes: frozenset[str]  # diffusers pipeline classes a manifest of this family may name
    min_size: int = 64
    max_size: int = 2048
    multiple: int = 8  # width and height must be multiples of this (the VAE's downscale factor)
    denoiser: str = "unet"  # pipeline attribute of the denoising network
    gpu_dtype: GpuDtype = "float16"
    # diffusers classes built from a loaded pipeline's components (no weights reloaded) for
    # image-to-image and inpainting; None: the family cannot edit pictures.
    img2img: str | None = None
    inpaint: str | None = None
    purpose: Purpose = "generate"
    # For "edit" families the loaded pipeline itself edits (prompt + reference pictures); how many
    # pictures each class takes (classes not listed take one).
    max_images: tuple[tuple[str, int], ...] = ()
    # Our request fields as the pipeline's call names them where they differ (e.g. Qwen's
    # classifier-free guidance is ``true_cfg_scale``; its ``guidance_scale`` is for distilled models).
    call_names: tuple[tuple[str, str], ...] = ()
    # Keyword arguments every pipeline call of this family gets, beyond the request's fields; a
    # manifest's pipeline.defaults may set its own value for each (see ``call_extras_for``).
    call_extras: tuple[tuple[str, Any], ...] = ()
    # Python packages the pipeline needs beyond diffusers and transformers (checked before loading,
    # so a missing one is a clear error rather than a deep import failure).
    requires: tuple[str, ...] = ()
    # Components the pipeline's own from_pretrained cannot build here, built by the family from
    # the same verified folder and passed to it by name: (component, loader of its sub-folder).
    components: tuple[tuple[str, Callable[[Path], Any]], ...] = ()
    # Used where neither the request nor the manifest's pipeline.defaults say otherwise.
    defaults: tuple[tuple[str, Any], ...] = (("width", 512), ("height", 512), ("steps", 30),
                                             ("guidance", 7.0))

    def check_size(self, width: int, height: int) -> None:
        """Raises:
            RequestError: naming ``width`` or ``height`` when outside the family's limits.
        """
        for name, value in (("width", width), ("height", height)):
            if not self.min_size <= value <= self.max_size or value % self.multiple:
                raise RequestError(
                    f"{name} {value} is not allowed for {self.name} models: use a multiple of "
                    f"{self.multiple} from {self.min_size} to {self.max_size}", field=name)

    def images_allowed(self, cls_name: str) -> int:
        """How many input pictures one edit with pipeline class ``cls_name`` may take."""
        return dict(self.max_images).get(cls_name, 1)

    def call_name(self, field: str) -> str:
        """The pipeline call's keyword for our request field ``field``."""
        return dict(self.call_names).get(field, field)

    def call_extras_for(self, manifest_defaults: dict[str, Any]) -> dict[str, Any]:
        """The fixed call arguments for one model: the family's, where its manifest says nothing else."""
        return {name: manifest_defaults.get(name, value) for name, value in self.call_extras}

    def load(self, cls_name: str, path: Path, device: str, dtype: Any) -> Any:
        """Load a pipeline from a verified model directory, never from the network.

        Raises:
            StoreError: the class is not allowed for this family, or the files do not load.
        """
        if cls_name not in self.classes:
            raise StoreError(f"pipeline class {cls_name!r} is not allowed for family {self.name!r}; "
                             f"allowed: {', '.join(sorted(self.classes))}")
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            raise StoreError(f"{cls_name} needs {', '.join(missing)}, which is not installed; install "
                             f"it into pennello's environment (pip install {' '.join(missing)}, the build "
                             f"matching your torch)")
        import diffusers
        import transformers

        # Loading bars would interleave with the daemon's log lines; the log says how long it took.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise StoreError(f"this diffusers ({diffusers.__version__}) has no {cls_name}; upgrade it")
        try:
            built = {name: load(path / name) for name, load in self.components}
            pipe = cls.from_pretrained(path, local_files_only=True, dtype=dtype, **built)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise StoreError(f"model files in {path} do not load as {cls_name}: {e}") from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add (or replace) a family; returns it so this can be used at import time."""
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """Raises:
        ModelNotFoundError: no family of that name is registered (the model cannot be served).
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ModelNotFoundError(f"model family {name!r} is not supported by this daemon; "
                                 f"known: {', '.join(sorted(_FAMILIES))}") from None


def families() -> list[str]:
    return sorted(_FAMILIES)


register_family(ModelFamily(
    "sd", frozenset({"StableDiffusionPipeline"}), min_size=64, max_size=1024,
    img2img="StableDiffusionImg2ImgPipeline", inpaint="StableDiffusionInpaintPipeline"))
register_family(ModelFamily(
    "sdxl", frozenset({"StableDiffusionXLPipeline"}), min_size=256, max_size=2048,
    defaults=(("width", 1024), ("height", 1024), ("steps", 30), ("guidance", 6.0)),
    img2img="StableDiffusionXLImg2ImgPipeline", inpaint="StableDiffusionXLInpaintPipeline"))
# FLUX.1-schnell, the catalog's FLUX, was distilled with T5 prompts of 256 tokens (diffusers'
# FluxPipeline pads to 512, dev's length); a FLUX.1-dev manifest sets "max_sequence_length": 512.
register_family(ModelFamily(
    "flux", frozenset({"FluxPipeline"}), min_size=256, max_size=2048, multiple=16,
    denoiser="transformer", gpu_dtype="bfloat16",
    defaults=(("width", 1024), ("height", 1024), ("steps", 28), ("guidance", 3.5)),
    call_extras=(("max_sequence_length", 256),),
    img2img="FluxImg2ImgPipeline", inpaint="FluxInpaintPipeline"))
def _qwen_processor(folder: Path) -> Any:
    # Only here: transformers loads when a Qwen model does, not when the registry does.
    from pennello.daemon.engine.qwen_processor import load_processor

    return load_processor(folder)


# Instruction editing (Qwen-Image-Edit): the pipeline takes the picture(s) and the prompt and
# decides the size itself from the last picture (about 1 megapixel). The Plus class (the 2509
# model and later) takes a list; Qwen recommends 1 to 3 reference pictures.
register_family(ModelFamily(
    "qwen-image-edit", frozenset({"QwenImageEditPipeline", "QwenImageEditPlusPipeline"}),
    min_size=256, max_size=2048, multiple=16, denoiser="transformer", gpu_dtype="bfloat16",
    defaults=(("width", 1024), ("height", 1024), ("steps", 40), ("guidance", 4.0)),
    purpose="edit", max_images=(("QwenImageEditPlusPipeline", 3),),
    call_names=(("guidance", "true_cfg_scale"),),
    # transformers 5 builds Qwen2VLProcessor's video half only with torchvision; edits need none.
    components=(("processor", _qwen_processor),)))
# The AI upscaler slot (daemon/tools/upscale.py): installed from the signed catalog, never generates.
register_family(ModelFamily(
    "sd-upscale", frozenset({"StableDiffusionUpscalePipeline"}), min_size=16, max_size=2048,
    purpose="upscale", defaults=(("width", 128), ("height", 128), ("steps", 20), ("guidance", 0.0))))
