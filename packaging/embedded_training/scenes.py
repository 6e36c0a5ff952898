"""The synthetic data set: one shape of one colour on a plain background, and its captions.

A scene is a colour, a shape (circle, square, triangle, star), a background colour, a size and
one of five positions, captioned the way a user would ask ("a small red circle on a blue
background, top left"). Some colour-shape pairs and a fixed share of the other
(colour, shape, background) triples are never drawn in training, so held-out prompts measure
whether the model combines what it learned rather than recalls it.

    >>> Scene("red", "circle", "blue", "small", "top left").prompt
    'a small red circle on a blue background, top left'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SEED = 20260101
IMAGE_SIZE = 64

# The palette: object and background colours (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
    "green": (40, 170, 70), "blue": (40, 80, 220), "purple": (140, 60, 190),
    "white": (240, 240, 240), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 11.0, "large": 19.0}  # circumradius-like half extent, pixels
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
# Colour-shape pairs never drawn in training (each colour and shape still appears otherwise).
HELD_OUT_PAIRS = (("red", "star"), ("blue", "triangle"), ("yellow", "square"), ("purple", "circle"))
HELD_OUT_TRIPLE_FRACTION = 0.12  # of the other (colour, shape, background) triples


@dataclass(frozen=True)
class Scene:
    """What one picture shows, and how it is asked for."""

    colour: str
    shape: str
    background: str
    size: str
    position: str

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background, {self.position}"

    def caption(self, rng: random.Random) -> str:
        """A training caption: the full prompt half the time, else one with parts left out."""
        if rng.random() < 0.5:
            return self.prompt
        size = f"{self.size} " if rng.random() < 0.5 else ""
        background = f" on a {self.background} background" if rng.random() < 0.5 else ""
        position = f", {self.position}" if rng.random() < 0.5 else ""
        return f"a {size}{self.colour} {self.shape}{background}{position}"


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * 0.15 + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [(cx + rr * math.cos(a), cy + rr * math.sin(a))
                for i in range(10)
                for a, rr in [(-math.pi / 2 + i * math.pi / 5, r if i % 2 == 0 else r * 0.42)]]
    raise ValueError(shape)


def render(scene: Scene, rng: random.Random | None = None, scale: int = 4, jitter: float = 1.0) -> np.ndarray:
    """The scene as a 64x64x3 uint8 array; ``rng`` jitters position (up to 3 pixels times
    ``jitter``) and size (up to 1.5 pixels times ``jitter``)."""
    jx = jy = js = 0.0
    if rng is not None:
        jx, jy, js = (jitter * rng.uniform(-3, 3), jitter * rng.uniform(-3, 3),
                      jitter * rng.uniform(-1.5, 1.5))
    s = IMAGE_SIZE * scale
    r = (SIZES[scene.size] + js) * scale
    fx, fy = POSITIONS[scene.position]
    cx, cy = (fx * IMAGE_SIZE + jx) * scale, (fy * IMAGE_SIZE + jy) * scale
    img = Image.new("RGB", (s, s), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    if scene.shape == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=COLOURS[scene.colour])
    else:
        draw.polygon(_shape_points(scene.shape, cx, cy, r), fill=COLOURS[scene.colour])
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))


def all_scenes() -> list[Scene]:
    return [Scene(c, sh, bg, sz, pos) for c in COLOURS for sh in SHAPES for bg in COLOURS if bg != c
            for sz in SIZES for pos in POSITIONS]


def held_out_triples(seed: int = SEED) -> set[tuple[str, str, str]]:
    """(colour, shape, background) triples never drawn in training, held-out pairs included."""
    triples = sorted({(s.colour, s.shape, s.background) for s in all_scenes()})
    held = {t for t in triples if (t[0], t[1]) in HELD_OUT_PAIRS}
    rest = [t for t in triples if t not in held]
    held |= set(random.Random(seed).sample(rest, round(len(rest) * HELD_OUT_TRIPLE_FRACTION)))
    return held


def split(seed: int = SEED) -> tuple[list[Scene], list[Scene]]:
    """Training scenes and held-out scenes (disjoint by colour-shape-background triple)."""
    held = held_out_triples(seed)
    train, test = [], []
    for s in all_scenes():
        (test if (s.colour, s.shape, s.background) in held else train).append(s)
    return train, test


def held_out_prompts(n: int = 96, seed: int = SEED) -> list[Scene]:
    """``n`` held-out scenes, a fixed sample; a third of them from never-seen colour-shape pairs."""
    _, test = split(seed)
    rng = random.Random(seed + 7)
    pairs = [s for s in test if (s.colour, s.shape) in HELD_OUT_PAIRS]
    others = [s for s in test if (s.colour, s.shape) not in HELD_OUT_PAIRS]
    k = n // 3
    return rng.sample(pairs, k) + rng.sample(others, n - k)
