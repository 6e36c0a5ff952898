"""Write the example pictures of docs/tools.md with the embedded model (no network, CPU is fine).

    python packaging/make_doc_examples.py      # -> docs/examples/*.png

* ``batch-contact-sheet.png``: ``pennello batch "a red circle on a blue background" --styles 4
  -n 20 --seed 100`` (a subject the embedded model was trained on).
* ``enhance-before-after.png``: a washed-out, soft picture and what auto-enhance made of it, with
  the before/after measurements.
* ``edit-before-after.png``: a picture of the model, redrawn image-to-image at two strengths and
  inpainted in its right half (``pennello edit``), as edit jobs through the engine's queue.
* ``upscale-before-after.png``: a 64x64 picture, a detail of it, and the same detail upscaled
  2x, 4x and 8x (tiled Lanczos).

The embedded model is tiny (docs/embedded-model.md), so the pictures show what the tools do,
not what a general model draws; run this again when its weights change.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pennello.config import Config
from pennello.daemon.tools.style_batch import finish_style_batch, submit_style_batch
from pennello.daemon.tools.edit import EditRequest, run_edit
from pennello.daemon.engine.engine import Engine
from pennello.daemon.pictures.enhance import enhance
from pennello.daemon.engine.jobs import GenerateRequest
from pennello.daemon.tools.styles import builtin_styles, choose_styles
from pennello.daemon.tools.upscale import upscale_lanczos
from pennello.installer import ensure_embedded_default
from pennello.paths import get_paths

OUT = Path(__file__).resolve().parent.parent / "docs" / "examples"
SUBJECT = "a red circle on a blue background"  # what the embedded model knows (shapes, colours)
CELL = 192  # side of one picture on the sheets: big enough to see, small enough to ship


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    paths = get_paths(tempfile.mkdtemp(prefix="pennello-docs-")).ensure()
    ensure_embedded_default(paths, Config())
    engine = Engine(Config(), paths)
    engine.start()
    try:
        submitted = submit_style_batch(engine, SUBJECT, choose_styles(builtin_styles(), 4), n=20, seed=100)
        style_batch = finish_style_batch(engine, submitted)
        Image.open(style_batch.contact_sheet.path).save(OUT / "batch-contact-sheet.png", optimize=True)
        job = engine.submit(GenerateRequest(prompt="a yellow star on a green background", seed=3))
        job.wait()
        with Image.open(job.images[0].path) as image:
            small = image.convert("RGB")
        picture = small.resize((256, 256), Image.Resampling.BICUBIC)
        edit_sheet(engine, small)
    finally:
        engine.stop()
    upscale_sheet(small)
    font = ImageFont.load_default()
    rows = [_degrade(_scene()), _degrade(picture)]  # a drawn scene, and the model's own picture
    sheet = Image.new("RGB", (2 * 256 + 24, len(rows) * 312), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    for row, before in enumerate(rows):
        result = enhance(before)
        y = row * 312
        for x, image, label, metrics in ((8, before, "before", result.before),
                                         (272, result.image, "after", result.after)):
            sheet.paste(image, (x, y + 8))
            draw.text((x, y + 272), f"{label}: contrast spread {metrics['contrast_spread']:.2f}",
                      fill=(30, 30, 30), font=font)
            draw.text((x, y + 288), f"sharpness (Laplacian variance) {metrics['sharpness']:.0f}",
                      fill=(30, 30, 30), font=font)
    sheet.save(OUT / "enhance-before-after.png", optimize=True)
    print(f"wrote {OUT}/: batch-contact-sheet.png, enhance-before-after.png, edit-before-after.png, "
          f"upscale-before-after.png")


def _sheet(cells: list[tuple[Image.Image, str]], name: str) -> None:
    """One row of labelled pictures, each shown CELL pixels wide (nearest: pixels stay visible)."""
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (len(cells) * (CELL + 8) + 8, CELL + 40), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    for column, (image, label) in enumerate(cells):
        x = 8 + column * (CELL + 8)
        sheet.paste(image.resize((CELL, CELL), Image.Resampling.NEAREST), (x, 8))
        draw.text((x, CELL + 16), label, fill=(30, 30, 30), font=font)
    sheet.save(OUT / name, optimize=True)


def edit_sheet(engine: Engine, picture: Image.Image) -> None:
    """Before, image-to-image at strengths 0.4 and 0.8, and inpainting of the right half."""
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (picture.width // 2, 0, picture.width, picture.height))
    cells = [(picture, "before")]
    for strength, prompt in ((0.4, "a blue square on a yellow background"),
                             (0.8, "a blue square on a yellow background")):
        result = run_edit(engine, EditRequest(prompt=prompt, image=picture, strength=strength, seed=5, steps=20))
        cells.append((Image.open(result.images[0].path).convert("RGB"), f"img2img, strength {strength}"))
    result = run_edit(engine, EditRequest(prompt="a red triangle on a white background", image=picture,
                                          mask=mask, strength=1.0, seed=5, steps=20))
    cells.append((Image.open(result.images[0].path).convert("RGB"), "inpaint right half"))
    _sheet(cells, "edit-before-after.png")


def upscale_sheet(picture: Image.Image) -> None:
    """The picture, its 24x24-pixel detail as is (pixels enlarged), and the same detail of its
    2x, 4x and 8x upscales."""
    box = (picture.width // 2 - 24, picture.height // 2 - 24, picture.width // 2, picture.height // 2)
    cells = [(picture, f"before {picture.width}x{picture.height}"), (picture.crop(box), "detail, as is")]
    for scale in (2, 4, 8):
        big = upscale_lanczos(picture, scale, tile=16)
        cells.append((big.crop(tuple(side * scale for side in box)), f"{scale}x ({big.width}x{big.height})"))
    _sheet(cells, "upscale-before-after.png")


def _degrade(picture: Image.Image) -> Image.Image:
    """Washed out (squeezed into 80-180) and soft (blurred): what auto-enhance is for."""
    pixels = np.asarray(picture, dtype=np.float64)
    washed = 80 + (pixels - pixels.min()) / max(np.ptp(pixels), 1) * 100
    return Image.fromarray(washed.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))


def _scene() -> Image.Image:
    """A simple drawn landscape: sky, sun, hills, a house."""
    image = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(image)
    for y in range(256):
        draw.line((0, y, 255, y), fill=(90 + y // 3, 150 + y // 4, 230))
    draw.ellipse((180, 30, 230, 80), fill=(255, 220, 90))
    draw.polygon([(0, 180), (80, 120), (170, 175), (256, 130), (256, 256), (0, 256)], fill=(60, 140, 70))
    draw.rectangle((60, 150, 120, 200), fill=(200, 80, 60))
    draw.polygon([(52, 152), (90, 118), (128, 152)], fill=(110, 50, 40))
    draw.rectangle((82, 172, 98, 200), fill=(70, 40, 30))
    draw.rectangle((102, 160, 114, 172), fill=(240, 240, 200))
    return image


if __name__ == "__main__":
    main()
