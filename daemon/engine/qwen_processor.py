"""Qwen2-VL's processor without its video half, so Qwen-Image-Edit loads without torchvision.

Qwen-Image-Edit's pipelines hand the prompt and the reference pictures to a ``Qwen2VLProcessor``:
an image processor, a tokenizer and a video processor. transformers 5 builds the video
processor (and the fast image processor) only on torchvision, and PyPI's torchvision does not
import beside a CPU build of torch from another index ("operator torchvision::nms does not
exist"). The pipelines never pass videos, so :class:`ImageOnlyQwen2VLProcessor` leaves the video
processor out, and ``AutoImageProcessor`` picks the PIL/numpy image processor where torchvision
is missing (the same resizing, patching and normalising, on the CPU). Where torchvision is
installed, the fast one is used as before.

The family registry passes the result to the pipeline's ``from_pretrained`` as ``processor=``,
read from the same verified model folder:

    >>> type(load_processor(model_dir / "processor").image_processor).__name__  # doctest: +SKIP
    'Qwen2VLImageProcessorPil'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers


class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with an image processor and a tokenizer only."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        # ProcessorMixin takes the list of sub-processors from this signature, so the video
        # processor is neither loaded, checked nor kept; the parent sets Qwen's token ids.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def load_processor(folder: Path) -> ImageOnlyQwen2VLProcessor:
    """The processor saved in ``folder`` (a model's ``processor/``), from local files only."""
    return ImageOnlyQwen2VLProcessor.from_pretrained(folder, local_files_only=True)
