"""Raw optimum-intel, without pennello: the reference row of ``bench_cpu.py``.

optimum-intel cannot be installed next to pennello's diffusers (its huggingface-hub pin), so this
runs in a virtual environment of its own, with the same torch::

    python3 -m venv /tmp/ovraw
    echo torch==2.13.0 > /tmp/c.txt && /tmp/ovraw/bin/pip install -c /tmp/c.txt 'optimum-intel[openvino]' diffusers
    /tmp/ovraw/bin/pip uninstall -y torchvision  # built for another torch: transformers fails to import
    /tmp/ovraw/bin/python bench/cpu_child_optimum.py MODEL_DIR SIZE RUNS PICTURE

``MODEL_DIR`` is the random-weight pipeline ``bench_cpu.py`` saved. optimum-intel exports it to
OpenVINO (UNet, VAE decoder and text encoder; weights as its defaults choose for the size), reshapes
it to the static shape and draws as pennello's configurations do. Output as ``cpu_child.py``'s.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import sys  # noqa: E402 — imports are part of the cold start being measured

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _cpu_timing import measure  # noqa: E402
from optimum.intel import OVDiffusionPipeline  # noqa: E402


def main() -> None:
    model_dir, size, runs, picture = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pipe = OVDiffusionPipeline.from_pretrained(model_dir, export=True, compile=False)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
    # optimum sizes the UNet for classifier-free guidance (batch 2); these draw at guidance 0, batch 1
    shapes = {i: i.get_partial_shape() for i in pipe.unet.model.inputs}
    for shape in shapes.values():
        shape[0] = 1
    pipe.unet.model.reshape(shapes)
    pipe.compile()

    def draw(seed: int) -> np.ndarray:
        return pipe("a lighthouse at dusk", width=size, height=size, num_inference_steps=1, guidance_scale=0.0,
                    output_type="np", generator=torch.Generator().manual_seed(seed)).images

    measure(draw, runs, STARTED, picture)


if __name__ == "__main__":
    main()
