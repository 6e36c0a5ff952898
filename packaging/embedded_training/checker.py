"""The checker: what a 64x64 picture shows, read back from its pixels, and a pipeline's score.

The background is the colour of a ring just inside the edge; the main object is the largest
region that differs from it; its colour is the nearest palette colour, its shape the template
its outline overlaps best, its place the centre of its pixels. :func:`score` draws held-out
prompts with a pipeline and reports the fractions it got right; :func:`contact_sheet` shows
them with the checker's verdicts.

    >>> from embedded_training.scenes import Scene, render
    >>> scene = Scene("red", "circle", "blue", "small", "top left")
    >>> check(render(scene), scene) == (True, True)
    True
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from embedded_training.scenes import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, Scene, render

# The shipped sampling default (packaging/sign_catalog.py puts it in the manifest): classifier-free
# guidance, which needs a denoiser trained with some empty prompts (--uncond-fraction).
GUIDANCE = 2.0


def _templates(size: int = 20) -> dict[str, np.ndarray]:
    out = {}
    for shape in SHAPES:
        img = render(Scene("white", shape, "black", "large", "center")).astype(float)
        out[shape] = _normalised_mask(img.mean(-1) > 128, size)
    return out


def _normalised_mask(mask: np.ndarray, size: int = 20) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)) / 255.0


_TEMPLATES: dict[str, np.ndarray] | None = None


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Labels (1, 2, ...) of the 4-connected regions of ``mask`` and their sizes (a small flood
    fill; no scipy needed)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes: list[int] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        labels[y0, x0] = len(sizes) + 1
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = len(sizes) + 1
                    stack.append((ny, nx))
        sizes.append(size)
    return labels, sizes


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, sizes = _components(mask)
    return labels == 1 + int(np.argmax(sizes)) if sizes else mask


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=float)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(-1)))]


def _against_background(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The picture as floats, its background colour (the median of a ring 3 pixels in from the
    edge) and each pixel's distance from that colour."""
    img = np.asarray(image, dtype=float)[..., :3]
    k = 3
    ring = np.concatenate([img[k, k:-k], img[-k - 1, k:-k], img[k:-k, k], img[k:-k, -k - 1]])
    bg = np.median(ring, axis=0)
    return img, bg, np.sqrt(((img - bg) ** 2).sum(-1))


def _objects(dist: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The main object's pixels (the largest region that differs from the background; None if
    no region has 12 pixels) and how many regions of at least 12 pixels there are."""
    labels, sizes = _components(dist > 60)
    objects = [i + 1 for i, size in enumerate(sizes) if size >= 12]
    if not objects:
        return None, 0
    return labels == max(objects, key=lambda i: sizes[i - 1]), len(objects)


def read_layout(image: np.ndarray) -> tuple[tuple[float, float] | None, int]:
    """Where the main object's centre is (x, y as fractions of the side; None if there is no
    object) and how many separate objects (regions of at least 12 pixels) the picture shows."""
    main, count = _objects(_against_background(image)[2])
    if main is None:
        return None, 0
    ys, xs = np.nonzero(main)
    return ((xs.mean() + 0.5) / IMAGE_SIZE, (ys.mean() + 0.5) / IMAGE_SIZE), count


def read_scene(image: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) of the main object in a 64x64 RGB picture, or None where none is found.

    The background is the median colour of a ring 3 pixels in from the edge; the object is the
    largest region that differs from it; its colour is the palette colour nearest the median of
    its most distinct half; its outline is where the picture is half-way between background and
    object colour (so a soft edge reads as it would sharpened); its shape is the template
    (circle, square, triangle, star, each stretched to the object's bounding box) that overlaps
    that outline best.
    """
    global _TEMPLATES
    img, bg, dist = _against_background(image)
    mask, _ = _objects(dist)
    if mask is None:
        return None, None
    core = mask & (dist >= np.median(dist[mask]))
    obj = np.median(img[core], axis=0)
    colour = nearest_colour(obj)
    outline = _largest_component(dist > 0.5 * np.sqrt(((obj - bg) ** 2).sum()))
    if _TEMPLATES is None:
        _TEMPLATES = _templates()
    m = _normalised_mask(outline)
    scores = {s: (np.minimum(m, t).sum() / np.maximum(m, t).sum()) for s, t in _TEMPLATES.items()}
    return colour, max(scores, key=scores.get)


def check(image: np.ndarray, scene: Scene) -> tuple[bool, bool]:
    """(colour right, shape right) for a picture drawn for ``scene``."""
    colour, shape = read_scene(image)
    return colour == scene.colour, shape == scene.shape


def generate(pipe, scenes: list[Scene], steps: int = 4, seed: int = 0, batch: int = 16,
             guidance: float = GUIDANCE) -> list[np.ndarray]:
    """Draw each scene's prompt at 64x64; seeds ``seed``, ``seed + 1``, ... per picture."""
    images = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        out = pipe([s.prompt for s in chunk], num_inference_steps=steps, height=IMAGE_SIZE, width=IMAGE_SIZE,
                   guidance_scale=guidance, generator=gens).images
        images += [np.asarray(im) for im in out]
    return images


def _near(centre: tuple[float, float] | None, position: str) -> bool:
    return centre is not None and bool(max(abs(a - b) for a, b in zip(centre, POSITIONS[position])) <= 0.1)


def placed(image: np.ndarray, scene: Scene) -> bool:
    """Whether the main object's centre is within a tenth of the side (in x and in y) of the
    place asked for: nearer it than any other of the five places."""
    return _near(read_layout(image)[0], scene.position)


def score(pipe, scenes: list[Scene], steps: int = 4, seed: int = 0, guidance: float = GUIDANCE) -> dict[str, float]:
    """Fractions of ``scenes`` whose picture has the right colour, shape, and both; also of
    those with the object in the right place, and with exactly one object."""
    images = generate(pipe, scenes, steps, seed, guidance=guidance)
    results = [check(im, s) for im, s in zip(images, scenes)]
    layouts = [read_layout(im) for im in images]
    n = len(results)
    return {"colour": sum(c for c, _ in results) / n, "shape": sum(s for _, s in results) / n,
            "both": sum(c and s for c, s in results) / n, "n": n,
            "place": sum(_near(centre, s.position) for (centre, _), s in zip(layouts, scenes)) / n,
            "one_object": sum(count == 1 for _, count in layouts) / n}


def contact_sheet(pipe, scenes: list[Scene], path: Path, steps: int = 4, seed: int = 0, cols: int = 8,
                  guidance: float = GUIDANCE) -> None:
    """A grid: each held-out prompt's picture above its checker verdict (green tick / red cross bar)."""
    images = generate(pipe, scenes, steps, seed, guidance=guidance)
    rows = math.ceil(len(scenes) / cols)
    cell = IMAGE_SIZE + 6
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (im, s) in enumerate(zip(images, scenes)):
        x, y = (i % cols) * cell, (i // cols) * cell
        sheet.paste(Image.fromarray(im), (x, y))
        c, sh = check(im, s)
        draw.rectangle([x, y + IMAGE_SIZE + 1, x + IMAGE_SIZE // 2 - 1, y + IMAGE_SIZE + 4],
                       fill=(0, 160, 0) if c else (200, 0, 0))
        draw.rectangle([x + IMAGE_SIZE // 2, y + IMAGE_SIZE + 1, x + IMAGE_SIZE - 1, y + IMAGE_SIZE + 4],
                       fill=(0, 160, 0) if sh else (200, 0, 0))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST).save(path)
