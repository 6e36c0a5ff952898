"""One configuration of ``bench_cpu.py``, in a process of its own (so cold start and RSS are its own).

    python bench/cpu_child.py CONFIG ARCH SIZE RUNS CACHE PICTURE [--shrunk]

``CONFIG`` is options joined by ``+``: ``threads-1`` (one thread instead of every core), ``bf16``
(torch autocast), ``channels-last``, ``compile`` (``torch.compile`` of the UNet), ``tiny`` (the
TAESD-architecture decoder), ``openvino`` (pennello's backend), ``int8`` (that backend with 8-bit
weights); ``diffusers-fp32`` is none of them. The seed-0 picture is saved to ``PICTURE`` (.npy) so
the parent can compare it with fp32 torch's; the last line of stdout is the result as JSON.
``--shrunk`` builds the architecture with its tiny widths (``bench_cpu.py --shrunk``).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import contextlib  # noqa: E402 — imports are part of the cold start being measured
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _cpu_timing import measure  # noqa: E402
from archs import ARCHS, build_pipeline  # noqa: E402


def prepared(parts: set[str], arch: str, cache: Path, shrunk: bool) -> Any:
    """The random-weight pipeline of ``arch`` (tiny widths when ``shrunk``) with the options in
    ``parts`` applied."""
    if "threads-1" in parts:
        torch.set_num_threads(1)
    pipe = build_pipeline(ARCHS[arch], tiny=shrunk)
    on_openvino = "openvino" in parts or "int8" in parts
    weights = "int8" if "int8" in parts else "fp32"
    variant = f"{'-shrunk' if shrunk else ''}-random-{weights}"  # own caches: never the full widths' models
    if on_openvino:
        from pennello.daemon.engine.backends import openvino_backend

        openvino_backend.convert(pipe, f"{arch}{variant}", "random-weights", cache, weights=weights)
    if "tiny" in parts:
        torch.manual_seed(1)  # the same random decoder in every configuration, to compare pictures
        pipe.vae = diffusers.AutoencoderTiny().eval()
        if on_openvino:  # as the daemon does: a model on OpenVINO decodes with its tiny decoder there too
            openvino_backend.convert_decoder(pipe.vae, f"taesd{variant}", "random-weights", cache, weights=weights)
    if on_openvino and "threads-1" in parts:  # before the first call compiles: OpenVINO's own thread pools
        for module in (pipe.unet, pipe.vae.decoder):
            module._core.set_property("CPU", {"INFERENCE_NUM_THREADS": 1})
    if "channels-last" in parts:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if "compile" in parts:
        pipe.unet.forward = torch.compile(pipe.unet.forward)
    return pipe


def main() -> None:
    config, arch, size, runs, cache, picture = sys.argv[1:7]
    options = sys.argv[7:]
    batch = next((int(o.split("=", 1)[1]) for o in options if o.startswith("--batch=")), 1)
    parts = set(config.split("+"))
    pipe = prepared(parts, arch, Path(cache), shrunk="--shrunk" in options)
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if "bf16" in parts else contextlib.nullcontext

    def draw(seed: int) -> np.ndarray:
        with torch.inference_mode(), autocast():
            return pipe("a lighthouse at dusk", width=int(size), height=int(size), num_inference_steps=1,
                        guidance_scale=0.0, num_images_per_prompt=batch, output_type="np",
                        generator=torch.Generator().manual_seed(seed)).images

    measure(draw, int(runs), STARTED, picture)


if __name__ == "__main__":
    main()
