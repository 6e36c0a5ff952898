"""Train ``pennello-tiny`` to draw simple scenes of coloured shapes from their description.

Everything is made here, with no download: a synthetic data set of one shape (circle, square,
triangle, star) of one colour on a plain background, at one of two sizes and five positions,
captioned the way a user would ask ("a small red circle on a blue background, top left"); a
held-out set of prompt combinations the model never sees in training; and a checker that reads
the colour and shape of the main object back from the pixels. The pipeline is the one
:func:`build_embedded_model.build_pipeline` makes (a diffusers ``StableDiffusionPipeline``);
training fills in its weights in stages:

1. the VAE, as a near-identity autoencoder: the first three latent channels are pinned to the
   image averaged over 4x4 pixels, so the latent space is a quarter-size picture and the
   decoder only has to upsample; then its decoder alone, on latents roughened the way a
   few-step denoiser gives them back, to draw crisp outlines from soft ones;
2. the UNet (v-prediction, loss weighted up where the object is and more on its outline) and
   the CLIP text encoder together, on those latents, some captions left empty so that
   classifier-free guidance works, with an exponential moving average of both.

The shipped weights came from a chain of such runs; docs/embedded-model.md lists the commands.

Every random draw is seeded. Run it under ``nice`` on a shared machine::

    nice -n 19 python packaging/train_embedded_model.py          # trains, checks, writes
    python packaging/sign_catalog.py                             # re-hashes and re-signs

The checker is importable (the tests and ``bench/bench_embedded.py`` use it)::

    >>> scene = Scene("red", "circle", "blue", "small", "top left")
    >>> check(render(scene), scene) == (True, True)
    True
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

log = logging.getLogger("train_embedded_model")

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20260101
IMAGE_SIZE = 64
VAE_SCALE = 4  # latents are the picture averaged over 4x4 pixels; build_embedded_model.VAE_SCALE

# The palette: object and background colours (RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
    "green": (40, 170, 70), "blue": (40, 80, 220), "purple": (140, 60, 190),
    "white": (240, 240, 240), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 11.0, "large": 19.0}  # circumradius-like half extent, pixels
# The shipped sampling default (packaging/sign_catalog.py puts it in the manifest): classifier-free
# guidance, which needs a denoiser trained with some empty prompts (--uncond-fraction).
GUIDANCE = 2.0
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
# Colour-shape pairs never drawn in training (each colour and shape still appears otherwise).
HELD_OUT_PAIRS = (("red", "star"), ("blue", "triangle"), ("yellow", "square"), ("purple", "circle"))
HELD_OUT_TRIPLE_FRACTION = 0.12  # of the other (colour, shape, background) triples


@dataclass(frozen=True)
class Scene:
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


# ---------------------------------------------------------------- drawing


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


# ---------------------------------------------------------------- the split


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


# ---------------------------------------------------------------- the checker


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


# ---------------------------------------------------------------- training


def _load_build_module():
    path = Path(__file__).resolve().parent / "build_embedded_model.py"
    spec = importlib.util.spec_from_file_location("build_embedded_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _as_vae_input(images: np.ndarray) -> torch.Tensor:
    """uint8 pictures (n, 64, 64, 3) as the VAE takes them: (n, 3, 64, 64) floats in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def make_dataset(scenes: list[Scene], n: int, seed: int,
                 jitter: float = 1.0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` jittered renders of scenes drawn at random (``jitter``: see :func:`render`).

    Returns:
        images in [-1, 1] (n, 3, 64, 64), captions, and object masks (n, 1, 64, 64): where the
        picture differs from its background colour.
    """
    rng = random.Random(seed)
    picks = [rng.choice(scenes) for _ in range(n)]
    images = np.stack([render(s, rng, jitter=jitter) for s in picks])
    backgrounds = np.array([COLOURS[s.background] for s in picks], dtype=float)[:, None, None, :]
    masks = np.abs(images.astype(float) - backgrounds).sum(-1) > 30
    return _as_vae_input(images), [s.caption(rng) for s in picks], torch.from_numpy(masks)[:, None].float()


def pinned_latents(x: torch.Tensor) -> torch.Tensor:
    """The latent the VAE is trained to produce: the picture averaged over 4x4 pixels, plus a zero channel.

    Fixing it in advance makes the latent space a quarter-size picture (easy for the denoiser)
    and lets the VAE and the denoiser train independently.
    """
    pooled = F.avg_pool2d(x, VAE_SCALE)
    return torch.cat([pooled, torch.zeros_like(pooled[:, :1])], dim=1)


def latent_scale(data: torch.Tensor) -> float:
    """The VAE's ``scaling_factor``: brings the pinned colour channels to unit variance."""
    return round(1.0 / F.avg_pool2d(data, VAE_SCALE).std().item(), 4)


def _warmup_cosine(opt: torch.optim.Optimizer, steps: int, warm: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warm`` steps, then a cosine decay to a tenth of the learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1))


def train_vae(vae, data: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> None:
    """Encoder regressed onto :func:`pinned_latents`; decoder trained to draw the picture back from it."""
    torch.manual_seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _warmup_cosine(opt, steps, max(1, steps // 20))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        target = pinned_latents(x)
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
        # Decode a slightly noisy latent so the decoder forgives the denoiser's small errors.
        z = target + 0.04 * torch.randn(target.shape, generator=g)
        recon = vae.decode(z).sample
        loss_rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss_lat = F.mse_loss(mean, target) + 0.01 * F.mse_loss(logvar, torch.full_like(logvar, -8.0))
        loss = loss_rec + loss_lat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("vae %5d/%d rec %.4f lat %.4f  %.0fs", step, steps, loss_rec.item(), loss_lat.item(),
                     time.time() - t0)
    vae.eval()


def outline_band(masks: torch.Tensor) -> torch.Tensor:
    """1 on a 2-pixel band either side of the object's outline (where a circle, square, triangle
    and star differ), 0 elsewhere; same shape as ``masks``."""
    return F.max_pool2d(masks, 5, 1, 2) + F.max_pool2d(-masks, 5, 1, 2)


def roughen(z: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    """``z`` the way a few-step denoiser gives it back: softened by a random share of a 3x3 blur, plus noise."""
    share = 0.5 * torch.rand(len(z), 1, 1, 1, generator=g)
    soft = F.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    return torch.lerp(z, soft, share) + noise * torch.randn(z.shape, generator=g)


def train_decoder(vae, data: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
                  edge_weight: float, noise: float, eval_fn=None, eval_every: int = 0) -> None:
    """Fine-tune only the decoder (the encoder already gives the pinned latents) to draw sharp
    outlines back from roughened latents; the loss is weighted up on the outline band."""
    torch.manual_seed(seed)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    vae.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = _warmup_cosine(opt, steps, max(1, steps // 20))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = data[idx]
        w = 1.0 + edge_weight * outline_band(masks[idx])
        recon = vae.decode(roughen(pinned_latents(x), g, noise)).sample
        loss = (w * (recon - x) ** 2).mean() + 0.5 * (w * (recon - x).abs()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("decoder %5d/%d loss %.4f  %.0fs", step, steps, loss.item(), time.time() - t0)
        if eval_fn is not None and eval_every and step and step % eval_every == 0:
            vae.eval()
            eval_fn(vae, step)
            vae.train()
    vae.eval()


@torch.no_grad()
def encode_latents(vae, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Encoder means (no sampling) for ``data``, unscaled."""
    return torch.cat([vae.quant_conv(vae.encoder(data[i:i + batch])).chunk(2, dim=1)[0]
                      for i in range(0, len(data), batch)])


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_denoiser(pipe, latents: torch.Tensor, scale: float, captions: list[str], weights: torch.Tensor,
                   steps: int, batch: int, lr: float, ema_decay: float, seed: int, sampled_fraction: float = 0.5,
                   eval_fn=None, eval_every: int = 0, ema_warmup: bool = True, text_lr_scale: float = 1.0,
                   uncond_fraction: float = 0.0):
    """UNet (v-prediction) and text encoder trained together; returns the EMA copies.

    ``uncond_fraction`` of the captions are replaced by the empty prompt, which is what the
    pipeline's classifier-free guidance feeds as its unconditional branch.
    """
    torch.manual_seed(seed)
    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler

    def tokens(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    ids, empty = tokens(captions), tokens([""])[0]
    alphas = scheduler.alphas_cumprod.float()
    n_train = scheduler.config.num_train_timesteps
    # The timesteps few-step sampling visits (4 and 8 trailing steps) get extra weight.
    sampled = torch.tensor(sorted({int(t) for k in (4, 8)
                                   for t in np.round(np.arange(n_train, 0, -n_train / k)) - 1}))
    unet.train(); text_encoder.train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW([{"params": list(unet.parameters())},
                             {"params": list(text_encoder.parameters()), "lr": lr * text_lr_scale}],
                            lr=lr, weight_decay=0.01)
    sched = _warmup_cosine(opt, steps, max(1, min(200, steps // 10)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=g)
        x0 = latents[idx] * scale
        t = torch.randint(n_train, (batch,), generator=g)
        pick = torch.rand(batch, generator=g) < sampled_fraction
        t[pick] = sampled[torch.randint(len(sampled), (int(pick.sum()),), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        xt = a * x0 + s * noise
        v = a * noise - s * x0
        batch_ids = ids[idx]
        if uncond_fraction:
            batch_ids[torch.rand(batch, generator=g) < uncond_fraction] = empty
        cond = text_encoder(batch_ids)[0]
        # Euler sampling feeds the UNet x_t (scaled back to unit variance), as trained here.
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        # The object is a tenth of the picture but all of what the prompt asks; weigh it up.
        loss = (weights[idx] * (pred - v) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # Warm-up: forget the random start quickly.
        decay = min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("denoise %5d/%d loss %.4f lr %.2e  %.0fs", step, steps, running,
                     sched.get_last_lr()[0], time.time() - t0)
        if eval_fn is not None and eval_every and step and step % eval_every == 0:
            eval_fn(ema_unet, ema_text, step)
    return ema_unet, ema_text


def finalize(pipe, held: list[Scene], baseline: dict, out: Path | None, sheet: Path | None,
             report: Path | None, train_seconds: float | None, guidance: float = GUIDANCE) -> dict:
    """Score on every held-out prompt, draw the contact sheet, and write the pipeline if it is better."""
    build = _load_build_module()
    result = score(pipe, held, guidance=guidance)
    log.info("trained model on %d held-out prompts: %s (untrained: %s)", len(held), result, baseline)
    if report:
        report.write_text(json.dumps({"trained": result, "untrained": baseline, "guidance": guidance,
                                      "train_seconds": train_seconds}, indent=2) + "\n")
    if sheet:
        contact_sheet(pipe, held[:48], sheet, guidance=guidance)
        log.info("wrote %s", sheet)
    if out is not None:
        if result["both"] <= baseline["both"]:
            raise SystemExit("the trained model is no better than the untrained one; not saving")
        build.save_pipeline(pipe, out)
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        log.info("wrote %s (%.2f MB)", out, total / 1e6)
    return result


def _finetune_decoder(args: argparse.Namespace, data: torch.Tensor, masks: torch.Tensor, held: list[Scene]) -> None:
    """The decoder stage: checkpoints (scored on the exact latents of held-out renders) and WORK/vae."""
    from diffusers import AutoencoderKL

    if args.vae_init is None:
        raise SystemExit("--stage decoder needs --vae-init (the VAE whose decoder it fine-tunes)")
    vae = AutoencoderKL.from_pretrained(args.vae_init, local_files_only=True)
    rng = random.Random(args.seed + 5)
    renders = np.stack([render(s, rng) for s in held])
    exact = pinned_latents(_as_vae_input(renders))

    def checkpoint(model, step: int) -> None:
        with torch.no_grad():
            out = ((model.decode(exact).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
        results = [check(im, s) for im, s in zip(out.permute(0, 2, 3, 1).numpy(), held)]
        log.info("step %d, held-out renders' exact latents: shape %.3f colour %.3f", step,
                 np.mean([sh for _, sh in results]), np.mean([c for c, _ in results]))
        model.save_pretrained(args.work / f"vae-step{step:05d}", safe_serialization=True)

    checkpoint(vae, 0)
    train_decoder(vae, data, masks, args.vae_steps, args.batch, args.vae_lr, args.seed + 3,
                  args.decoder_edge_weight, args.decoder_noise, checkpoint, args.eval_every)
    checkpoint(vae, args.vae_steps)
    vae.save_pretrained(args.work / "vae", safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    build = _load_build_module()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=build.DEFAULT_OUT, help="where the trained pipeline goes")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--stage", choices=("all", "vae", "denoiser", "decoder"), default="all",
                        help="train both (one after the other) or one; the denoiser stage uses --vae-from; "
                             "decoder fine-tunes the decoder of --vae-init")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-lr", type=float, default=3e-3)
    parser.add_argument("--vae-init", type=Path, default=None, help="continue training this VAE directory")
    parser.add_argument("--decoder-edge-weight", type=float, default=4.0,
                        help="decoder stage: extra loss weight on the 2-pixel band along the outline")
    parser.add_argument("--decoder-noise", type=float, default=0.04,
                        help="decoder stage: noise added to the (also softened) latents it learns from")
    parser.add_argument("--vae-from", type=Path, default=None, help="a trained VAE directory (default WORK/vae)")
    parser.add_argument("--steps", type=int, default=2500, help="denoiser training steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--object-weight", type=float, default=4.0,
                        help="extra loss weight on latent pixels covered by the object")
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="extra loss weight on latent pixels along the object's outline (2 pixels either side)")
    parser.add_argument("--text-lr-scale", type=float, default=1.0,
                        help="the text encoder's learning rate as a multiple of --lr")
    parser.add_argument("--uncond-fraction", type=float, default=0.1,
                        help="share of captions replaced by the empty prompt (lets guidance above 1.0 work)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help="guidance scale the checkpoints are scored at (1.0 for a denoiser trained without "
                             "--uncond-fraction)")
    parser.add_argument("--sampled-fraction", type=float, default=0.75,
                        help="share of training timesteps drawn from those 4/8-step sampling visits")
    parser.add_argument("--data", type=int, default=12000, help="training renders")
    parser.add_argument("--jitter", type=float, default=1.0,
                        help="scale of the renders' position and size jitter (1: up to 3 and 1.5 pixels)")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between checkpoints")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pennello-tiny-train"), help="checkpoints")
    parser.add_argument("--no-ema-warmup", action="store_true", help="EMA at --ema from the first step")
    parser.add_argument("--init", type=Path, default=None, help="denoiser stage: start from this saved pipeline")
    parser.add_argument("--finalize", type=Path, default=None, help="only score and ship this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs/embedded-model.md)")
    parser.add_argument("--sheet", type=Path, default=REPO_ROOT / "docs" / "embedded-model-contact-sheet.png")
    parser.add_argument("--report", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    untrained = build.build_pipeline(args.seed)
    untrained.set_progress_bar_config(disable=True)
    held = held_out_prompts(seed=args.seed)
    baseline = score(untrained, held[:48], guidance=args.guidance)
    log.info("untrained model on held-out prompts: %s", baseline)
    out = None if args.no_save else args.out
    if args.finalize:
        pipe = StableDiffusionPipeline.from_pretrained(args.finalize, local_files_only=True)
        if args.vae_from:
            pipe.vae = AutoencoderKL.from_pretrained(args.vae_from, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        finalize(pipe, held, baseline, out, args.sheet, args.report, None, args.guidance)
        return

    if build.VAE_SCALE != VAE_SCALE:
        raise SystemExit(f"VAE_SCALE {VAE_SCALE} here but {build.VAE_SCALE} in build_embedded_model.py")
    pipe = untrained
    train_scenes, _ = split(args.seed)
    data, captions, masks = make_dataset(train_scenes, args.data, args.seed, args.jitter)
    scale = latent_scale(data)
    log.info("data: %d renders of %d training scenes, %d held-out prompts; latent scale %.4f",
             len(data), len(train_scenes), len(held), scale)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "decoder":
        _finetune_decoder(args, data, masks, held)
        return
    if args.stage in ("vae", "all"):
        if args.vae_init:
            pipe.vae = AutoencoderKL.from_pretrained(args.vae_init, local_files_only=True)
        train_vae(pipe.vae, data, args.vae_steps, 16, args.vae_lr, args.seed + 1)
        pipe.vae.register_to_config(scaling_factor=scale)
        with torch.no_grad():
            rec = pipe.vae.decode(pinned_latents(data[:256])).sample
            enc = encode_latents(pipe.vae, data[:256])
        log.info("vae: reconstruction MSE %.4f, encoder error %.4f", F.mse_loss(rec, data[:256]).item(),
                 F.mse_loss(enc, pinned_latents(data[:256])).item())
        pipe.vae.save_pretrained(args.work / "vae", safe_serialization=True)
        if args.stage == "vae":
            return
    vae_dir = args.vae_from or args.work / "vae"
    if args.stage == "denoiser" and (vae_dir / "config.json").exists():
        # Train on the latent scale the pipeline will decode with (the VAE's, fixed when it was trained).
        scale = json.loads((vae_dir / "config.json").read_text())["scaling_factor"]
    if args.init:  # continue from a saved denoiser (its UNet and text encoder)
        init = StableDiffusionPipeline.from_pretrained(args.init, local_files_only=True)
        pipe.unet, pipe.text_encoder = init.unet.train(), init.text_encoder.train()
    live_unet, live_text = pipe.unet, pipe.text_encoder

    def checkpoint(ema_unet, ema_text, step):
        pipe.unet, pipe.text_encoder = ema_unet, ema_text
        pipe.save_pretrained(args.work / f"step{step:05d}", safe_serialization=True)
        if (vae_dir / "config.json").exists():
            trained_vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
            with_vae = StableDiffusionPipeline(**{**pipe.components, "vae": trained_vae})
            with_vae.set_progress_bar_config(disable=True)
            log.info("step %d held-out: %s", step, score(with_vae, held[:48], guidance=args.guidance))
        pipe.unet, pipe.text_encoder = live_unet, live_text

    weights = 1.0 + args.object_weight * F.avg_pool2d(masks, VAE_SCALE)
    if args.edge_weight:  # the band along the object's outline: where the shapes differ
        weights = weights + args.edge_weight * F.avg_pool2d(outline_band(masks), VAE_SCALE)
    ema_unet, ema_text = train_denoiser(pipe, pinned_latents(data), scale, captions, weights, args.steps,
                                        args.batch, args.lr, args.ema, args.seed + 2, args.sampled_fraction,
                                        checkpoint, args.eval_every, not args.no_ema_warmup,
                                        args.text_lr_scale, args.uncond_fraction)
    pipe.unet, pipe.text_encoder = ema_unet.eval(), ema_text.eval()
    pipe.vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    pipe.save_pretrained(args.work / "final", safe_serialization=True)
    finalize(pipe, held, baseline, out, args.sheet, args.report, round(time.time() - t_start), args.guidance)

if __name__ == "__main__":
    main()
